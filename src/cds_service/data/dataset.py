"""The training dataset on disk: flat numpy arrays plus JSON, loaded in one `np.load`.

Layout of a dataset directory (format version 1):

    manifest.json   counts, vocab sizes, label lists, generators, seed, split sizes, read warnings
    vocab.json      code tokens (index = id; 0 [PAD], 1 [UNK], 2 [CLS]), train counts, displays
    value_bins.json per observation token: quantile edges of its numeric values (train split)
    notes.model     SentencePiece model trained on training-split notes
    arrays.npz      the arrays below, CSR style (`*_offsets[i]:*_offsets[i+1]` is row i)

    patient_*   one row per patient: event/note offsets, birth time (s, NaN unknown), sex id, split
                (0 train, 1 validation, 2 test)
    event_*     time (s since epoch), token id, kind (EventKind), value (NaN when none), visit
                (per-patient encounter index, -1 none); events sorted by time within a patient
    note_*      time, visit, and SentencePiece ids of the note's first pieces (`note_piece_offsets`)
    sample_*    one row per (patient, encounter with history): patient row, cutoff time (= encounter
                start: inputs are the patient's events and notes strictly before it), encounter class
                id, label ids for diagnoses and medications, and the encounter's known diagnosis tokens
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cds_service.core.errors import DatasetError

FORMAT_VERSION = 1
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]")
SEX_IDS = {"unknown": 0, "female": 1, "male": 2, "other": 3}
SPLITS = ("train", "validation", "test")

IntArray = npt.NDArray[np.int64]


@dataclass
class Dataset:
    path: Path
    manifest: dict[str, Any]
    vocab: list[str]
    arrays: dict[str, npt.NDArray[Any]]
    value_bins: dict[str, list[float]] = field(default_factory=dict)

    @property
    def diagnosis_labels(self) -> list[str]:
        return [str(x["token"]) for x in self.manifest["labels"]["diagnosis"]]

    @property
    def medication_labels(self) -> list[str]:
        return [str(x["token"]) for x in self.manifest["labels"]["medication"]]

    @cached_property
    def token_bins(self) -> list[list[float] | None]:
        """Quantile edges of numeric values per token id (None for tokens without values)."""
        return [self.value_bins.get(t) for t in self.vocab]

    @cached_property
    def event_value_bins(self) -> npt.NDArray[np.int64]:
        """Per event: 0 without a value, else 1 + the quantile bin of its value among its code's values."""
        tokens, values = self.arrays["event_token"], self.arrays["event_value"]
        out = np.zeros(len(tokens), dtype=np.int64)
        order = np.argsort(tokens, kind="stable")
        bounds = np.flatnonzero(np.diff(tokens[order])) + 1
        for group in np.split(order, bounds):
            edges = self.token_bins[int(tokens[group[0]])] if len(group) else None
            if edges is not None:
                vals = values[group]
                has = ~np.isnan(vals)
                out[group[has]] = 1 + np.searchsorted(np.asarray(edges), vals[has], side="right")
        return out

    def rows(self, prefix: str, i: int) -> npt.NDArray[Any]:
        """Row i of a CSR-stored array, e.g. rows("sample_dx", i) -> label ids of sample i."""
        offsets = self.arrays[f"{prefix}_offsets"]
        row: npt.NDArray[Any] = self.arrays[prefix][offsets[i] : offsets[i + 1]]
        return row

    def sample_split(self) -> npt.NDArray[Any]:
        split: npt.NDArray[Any] = self.arrays["patient_split"][self.arrays["sample_patient"]]
        return split

    def label_matrix(self, head: str) -> npt.NDArray[np.float32]:
        """Dense 0/1 matrix (samples x labels) for head "dx" or "med"."""
        n_labels = len(self.diagnosis_labels if head == "dx" else self.medication_labels)
        offsets = self.arrays[f"sample_{head}_offsets"]
        n = len(offsets) - 1
        matrix = np.zeros((n, n_labels), dtype=np.float32)
        rows = np.repeat(np.arange(n), np.diff(offsets))
        matrix[rows, self.arrays[f"sample_{head}"]] = 1.0
        return matrix


def save_dataset(
    path: Path,
    manifest: dict[str, Any],
    vocab: dict[str, Any],
    value_bins: dict[str, list[float]],
    arrays: dict[str, npt.NDArray[Any]],
) -> None:
    path.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path / "arrays.npz", **arrays)  # type: ignore[arg-type]
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "value_bins.json").write_text(json.dumps(value_bins))
    (path / "manifest.json").write_text(json.dumps({"format_version": FORMAT_VERSION, **manifest}, indent=2))


def load_dataset(path: Path) -> Dataset:
    missing = [n for n in ("manifest.json", "vocab.json", "arrays.npz") if not (path / n).is_file()]
    if missing:
        raise DatasetError(f"{path} is not a dataset: missing {', '.join(missing)}")
    manifest = json.loads((path / "manifest.json").read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DatasetError(f"{path}: dataset format {manifest.get('format_version')}, expected {FORMAT_VERSION}")
    vocab = json.loads((path / "vocab.json").read_text())
    bins_path = path / "value_bins.json"
    bins = json.loads(bins_path.read_text()) if bins_path.is_file() else {}
    with np.load(path / "arrays.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    return Dataset(path, manifest, list(vocab["tokens"]), arrays, bins)
