"""`cds-service recalibrate`: refit a trained model's calibration on a dataset's validation split.

The weights stay; the residual scale, temperatures and thresholds (`training.calibrate`) are fitted again.
On the training dataset with the model's own options this reproduces what `train` fitted at its end (the
same seeded validation samples); on a site's own dataset it is local recalibration before go-live.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from cds_service.data.dataset import Dataset
from cds_service.ml.artifacts import Predictor
from cds_service.ml.batch import encode_dataset
from cds_service.training.calibration import calibrate
from cds_service.training.options import TrainOptions, training_samples

log = logging.getLogger(__name__)


def recalibrate(model_dir: Path, ds: Dataset, max_val_samples: int | None = None) -> dict[str, Any]:
    training = json.loads((model_dir / "training.json").read_text())
    known_options = TrainOptions.__dataclass_fields__
    opts = TrainOptions(**{k: v for k, v in training.get("options", {}).items() if k in known_options})
    if max_val_samples is not None:
        opts.max_val_samples = max_val_samples
    _, _, _, val_idx = training_samples(ds, opts)
    predictor = Predictor(model_dir)
    if ds.manifest["labels"] != predictor.labels:
        raise ValueError(f"{ds.path}: its labels differ from the model's; recalibration needs the same label set")
    encoded, known = encode_dataset(predictor, ds, val_idx)
    y_dx, y_med = ds.label_matrix("dx")[val_idx], ds.label_matrix("med")[val_idx]
    calibration = calibrate(predictor.model, encoded, known, y_dx, y_med)
    calibration["fitted_on"] = ds.path.name
    (model_dir / "calibration.json").write_text(json.dumps(calibration, indent=2))
    log.info("recalibrated %s on %d validation samples of %s", model_dir, len(val_idx), ds.path)
    return calibration
