"""Transfer: a model trained on one generator's cohort scored on another generator's test split.

Both generators write RxNorm, SNOMED, LOINC and ICD-10, but not the same codes: clinosim orders ingredient-
level RxNorm concepts ("Atorvastatin (Lipitor)", 83367) where Synthea writes clinical drugs ("atorvastatin 20
MG Oral Tablet"), codes diagnoses in ICD-10 where Synthea uses SNOMED, and has its own vocabulary, so the
other cohort's records are read the way serving reads a foreign EHR's:

- **codes**: each dataset token is mapped onto the model's vocabulary by its token string, and where that
  fails through the model's concept fallback (`ml.concepts`: a medication to the training product with the
  same ingredients, any other code to a training code of its family with the same normalised display), the
  fallback the live featuriser applies to every event; the event kind it is asked with is the kind the
  dataset records the token under (what the live event carries), its family's where the token never occurs;
- **values**: observation values are binned with the model's own value bins for the event's token string
  (`value_bin(e.value, bins.get(e.token))`, as `ml.live` does), not with the other cohort's quantiles;
- **notes**: piece ids of another SentencePiece model mean nothing to this one, so a cohort tokenised by
  another note model is scored without note pieces (as `ml.batch` does; the note text is not in a dataset);
- **time and the guard**: each record is read at the model's canonical cutoff (`scoring_gap_days` after its
  last input) and measured by the familiarity guard at the real one, as serving does.

Medication labels are compared by ingredient set (`safety.interactions.ingredients_of`): the model's score
for a set is the highest of its labels with that set, the target is whether any of the other cohort's labels
with that set was ordered, and only sets present in both label lists are evaluated. The same grouping is
applied to the model's own test split, so the two sit side by side, and a logistic regression fitted on the
other cohort's own training split (the baselines' features and fit) is the local reference.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from cds_service.data.dataset import SPLITS, Dataset
from cds_service.data.note_tokenizer import NOTE_MODEL_FILE
from cds_service.evaluation.baselines import FeatureSpace, bag_of_codes, make_baseline
from cds_service.evaluation.metrics import ece, macro_auprc, micro_auroc, recall_at_k
from cds_service.ml.concepts import ConceptMap, normalised
from cds_service.ml.familiarity import CHECKS, FamiliarityGuard, RecordMeasures, canonical_cutoff
from cds_service.ml.features import encode, history_from_dataset, known_dx_matrix, pad_batch
from cds_service.safety.interactions import ingredients_of
from cds_service.timeline.events import EventKind

if TYPE_CHECKING:  # torch and transformers load only when something is scored (the tests of the rest stay light)
    from cds_service.ml.artifacts import Predictor

log = logging.getLogger(__name__)

UNK_ID = 1
NO_GUARD = "no-guard"  # a model without a guard abstains on every record (serving fails closed)
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]
Ingredients = frozenset[str]


# --- codes --------------------------------------------------------------------------------------------------


def family_kind(token: str) -> EventKind:
    """The kind a token's family implies when nothing else says: RxNorm is a medication; anything else takes
    the concept fallback's display branch (any non-medication kind does)."""
    return EventKind.MEDICATION if token.startswith("RXNORM/") else EventKind.CONDITION


def token_kinds(ds: Dataset) -> list[EventKind]:
    """Per dataset token, the event kind the dataset records it under most often (a text-only medication,
    `TEXT/ibuprofen`, is a medication event), its family's kind for tokens that never occur as an event."""
    n_kinds = max(EventKind) + 1
    tokens, kinds = ds.arrays["event_token"].astype(np.int64), ds.arrays["event_kind"].astype(np.int64)
    counts = np.bincount(tokens * n_kinds + kinds, minlength=len(ds.vocab) * n_kinds).reshape(-1, n_kinds)
    return [
        EventKind(int(counts[i].argmax())) if counts[i].any() else family_kind(token)
        for i, token in enumerate(ds.vocab)
    ]


def vocab_displays(ds: Dataset) -> list[str]:
    """The displays of a dataset's tokens (`vocab.json`), "" where it has none."""
    vocab = json.loads((ds.path / "vocab.json").read_text())
    displays = [str(d or "") for d in vocab.get("display", [])]
    return displays + [""] * (len(ds.vocab) - len(displays))


def concept_code_map(
    model_vocab: Sequence[str],
    concepts: ConceptMap | None,
    tokens: Sequence[str],
    displays: Sequence[str],
    kinds: Sequence[EventKind],
) -> IntArray:
    """Another vocabulary's token ids mapped onto the model's: by token string, else by the concept fallback
    (as `ml.live.LiveFeaturizer.event_token_id` does for a live event), else [UNK] (id 1)."""
    index = {t: i for i, t in enumerate(model_vocab)}
    out = np.full(len(tokens), UNK_ID, dtype=np.int64)
    for i, (token, display, kind) in enumerate(zip(tokens, displays, kinds, strict=True)):
        found = index.get(token)
        if found is None and concepts is not None and "/" in token:
            found = concepts.fallback(token, display, kind)
        if found is not None:
            out[i] = found
    return out


def split_events(ds: Dataset, split: str) -> IntArray:
    """Token ids of every event of the split's patients."""
    a = ds.arrays
    in_split = np.repeat(a["patient_split"] == SPLITS.index(split), np.diff(a["patient_events_offsets"]))
    tokens: IntArray = a["event_token"][in_split].astype(np.int64)
    return tokens


def unknown_shares(ds: Dataset, split: str, maps: dict[str, IntArray]) -> dict[str, Any]:
    """Share of the split's events whose code maps to [UNK], per map, overall and per token family."""
    tokens = split_events(ds, split)
    families = np.asarray([t.split("/", 1)[0] for t in ds.vocab])[tokens]
    out: dict[str, Any] = {"events": len(tokens)}
    for name, code_map in maps.items():
        out[name] = _share(code_map[tokens] == UNK_ID)
    by_family: dict[str, dict[str, float]] = {}
    for family, n in Counter(families.tolist()).most_common():
        rows = families == family
        by_family[family] = {"event_share": round(n / max(len(tokens), 1), 4)}
        by_family[family].update({name: _share(code_map[tokens[rows]] == UNK_ID) for name, code_map in maps.items()})
    out["by_family"] = by_family
    return out


def _share(mask: npt.NDArray[np.bool_]) -> float:
    return round(float(mask.mean()), 4) if len(mask) else float("nan")


def served_value_bins(ds: Dataset, value_bins: dict[str, list[float]]) -> IntArray:
    """Per dataset event: the bin of its value under the model's bins for the event's token string (0 for no
    value, a non-observation or a token the model has no bins for), as the live featuriser bins a value."""
    a = ds.arrays
    tokens, values = a["event_token"].astype(np.int64), a["event_value"]
    out = np.zeros(len(tokens), dtype=np.int64)
    has = (a["event_kind"] == int(EventKind.OBSERVATION)) & ~np.isnan(values)
    for token_id in np.unique(tokens[has]):
        edges = value_bins.get(ds.vocab[int(token_id)])
        if edges is None:
            continue
        rows = has & (tokens == token_id)
        out[rows] = 1 + np.searchsorted(np.asarray(edges, dtype=np.float64), values[rows], side="right")
    return out


# --- scoring as served ----------------------------------------------------------------------------------------


@dataclass
class Served:
    """What the model made of some dataset samples, read as serving reads a record."""

    samples: IntArray
    diagnosis: FloatArray  # calibrated probabilities (samples x the model's labels)
    medication: FloatArray
    failed: list[list[str]]  # per sample, the guard checks it fails (empty: the guard lets it through)
    unknown_share: npt.NDArray[np.float64]  # per sample, the guard's unknown-code measure
    distance: npt.NDArray[np.float64]  # per sample, the Mahalanobis distance of its representation
    notes_used: bool

    @property
    def familiar(self) -> npt.NDArray[np.bool_]:
        return np.asarray([not f for f in self.failed], dtype=bool)


def draw(samples: IntArray, n: int, seed: int) -> IntArray:
    """A seeded subsample of `n` (all when fewer), in dataset order."""
    if len(samples) <= n:
        return samples
    drawn: IntArray = np.sort(np.random.default_rng(seed).choice(samples, size=n, replace=False))
    return drawn


def split_samples(ds: Dataset, split: str) -> IntArray:
    return np.flatnonzero(ds.sample_split() == SPLITS.index(split)).astype(np.int64)


def score_as_served(
    predictor: Predictor,
    ds: Dataset,
    samples: IntArray,
    code_map: IntArray,
    guard: FamiliarityGuard | None,
    use_notes: bool = True,
    batch_size: int = 128,
) -> Served:
    """Calibrated probabilities, guard verdicts and guard measures of dataset samples mapped through
    `code_map` (dataset ids to the model's), each record read at the guard's canonical cutoff."""
    import torch

    from cds_service.ml.artifacts import file_digest
    from cds_service.ml.tensors import to_tensors

    model, device = predictor.model, predictor.device
    model.eval()
    same_notes = file_digest(ds.path / NOTE_MODEL_FILE) == file_digest(predictor.model_dir / NOTE_MODEL_FILE)
    notes_used = use_notes and same_notes
    cfg = predictor.encode_config
    cfg = replace(cfg, note_tokens=cfg.note_tokens if notes_used else 0)
    bins = served_value_bins(ds, predictor.featurizer.value_bins)
    offsets, patients = ds.arrays["patient_events_offsets"], ds.arrays["sample_patient"]
    known_ids = known_dx_matrix(ds, samples, cfg.max_known_dx)
    known = code_map[known_ids] * (known_ids > 0)
    dx, med, failed, unknown, distance = [], [], [], [], []
    for start in range(0, len(samples), batch_size):
        rows = samples[start : start + batch_size]
        encoded, measures = [], []
        for s in rows:
            h = history_from_dataset(ds, int(s))
            e0 = int(offsets[int(patients[int(s)])])
            h.event_token = code_map[h.event_token]
            h.event_value_bin = bins[e0 : e0 + len(h.event_time)]
            measures.append(RecordMeasures.of(h))  # at the real scoring time, before the canonical cutoff
            read = canonical_cutoff(h, guard.scoring_gap_days) if guard is not None else h
            encoded.append(encode(read, predictor.space, cfg)[0])
        with torch.no_grad():
            out = model(
                to_tensors(pad_batch(encoded), device), torch.from_numpy(known[start : start + len(rows)]).to(device)
            )
        dx.append(predictor.calibrate("diagnosis", out.dx_logits.float()).cpu().numpy())
        med.append(predictor.calibrate("medication", out.med_logits.float()).cpu().numpy())
        pooled = out.pooled.float().cpu().numpy() if out.pooled is not None else [None] * len(rows)
        for m, p in zip(measures, pooled, strict=True):
            unknown.append(m.unknown_share)
            if guard is None:
                failed.append([NO_GUARD])
                distance.append(math.nan)
                continue
            verdict = guard.check(m, p)
            failed.append(verdict.failed)
            distance.append(verdict.measures["distance"])
    n_dx, n_med = predictor.model_config.n_diagnoses, predictor.model_config.n_medications
    return Served(
        samples=samples,
        diagnosis=np.concatenate(dx) if dx else np.zeros((0, n_dx), np.float32),
        medication=np.concatenate(med) if med else np.zeros((0, n_med), np.float32),
        failed=failed,
        unknown_share=np.asarray(unknown, dtype=np.float64),
        distance=np.asarray(distance, dtype=np.float64),
        notes_used=notes_used,
    )


def abstention(served: Served, guard: FamiliarityGuard | None) -> dict[str, Any]:
    """Share of the samples the guard abstains on, and per check the share failing it (a sample can fail
    several) and failing it alone."""
    n = len(served.failed)
    checks = (*CHECKS, NO_GUARD) if guard is None else CHECKS
    failing = {c: round(sum(c in f for f in served.failed) / max(n, 1), 4) for c in checks}
    alone = {c: round(sum(f == [c] for f in served.failed) / max(n, 1), 4) for c in checks}
    out: dict[str, Any] = {
        "samples": n,
        "abstain_rate": round(float(1 - served.familiar.mean()), 4) if n else float("nan"),
        "failing": failing,
        "failing_alone": alone,
        "unknown_share_median": _quantile(served.unknown_share, 0.5),
        "unknown_share_p90": _quantile(served.unknown_share, 0.9),
        "distance_median": _quantile(served.distance, 0.5),
        "distance_p90": _quantile(served.distance, 0.9),
    }
    if guard is not None:
        out["limits"] = {
            "max_unknown_share": guard.max_unknown_share,
            "max_gap_days": guard.max_gap_days,
            "age_years": [guard.min_age_years, guard.max_age_years],
            "max_events": guard.max_events,
            "max_distance": guard.max_distance,
            "scoring_gap_days": guard.scoring_gap_days,
        }
    return out


def _quantile(x: npt.NDArray[np.float64], q: float) -> float:
    x = x[np.isfinite(x)]
    return round(float(np.quantile(x, q)), 4) if len(x) else float("nan")


# --- labels by ingredient -------------------------------------------------------------------------------------


def label_ingredients(labels: Sequence[dict[str, Any]]) -> list[Ingredients]:
    """Each medication label's ingredient set (by display, and RxNorm code when it has one); empty when the
    drug knowledge layer resolves none."""
    out = []
    for label in labels:
        token = str(label["token"])
        rxcui = token.removeprefix("RXNORM/") if token.startswith("RXNORM/") else None
        out.append(ingredients_of(str(label.get("display", "")), rxcui))
    return out


@dataclass(frozen=True)
class IngredientGroups:
    """The ingredient sets both label lists have, and per set the label columns of each list."""

    keys: list[Ingredients]
    model_columns: list[list[int]]
    target_columns: list[list[int]]

    @property
    def names(self) -> list[str]:
        return [" + ".join(sorted(k)) for k in self.keys]


def group_labels(model_sets: Sequence[Ingredients], target_sets: Sequence[Ingredients]) -> IngredientGroups:
    shared = sorted({s for s in model_sets if s} & {s for s in target_sets if s}, key=sorted)
    return IngredientGroups(
        keys=shared,
        model_columns=[[j for j, s in enumerate(model_sets) if s == key] for key in shared],
        target_columns=[[j for j, s in enumerate(target_sets) if s == key] for key in shared],
    )


def group_max(matrix: npt.NDArray[Any], columns: Sequence[Sequence[int]]) -> FloatArray:
    """Per group of columns, the row-wise maximum (a score: the best product of the set; a target: any of
    them ordered)."""
    if not columns:
        return np.zeros((len(matrix), 0), dtype=np.float32)
    return np.stack([matrix[:, list(cols)].max(axis=1) for cols in columns], axis=1).astype(np.float32)


# --- figures --------------------------------------------------------------------------------------------------


def figures(y: npt.NDArray[Any], s: npt.NDArray[Any]) -> dict[str, Any]:
    """Ranking and calibration figures of scores `s` against 0/1 targets `y` (samples x groups)."""
    out: dict[str, Any] = {
        "samples": len(y),
        "samples_with_positive": int((y.sum(1) > 0).sum()) if len(y) else 0,
        "groups_with_positive": int((y.sum(0) > 0).sum()) if len(y) else 0,
    }
    empty = len(y) == 0 or y.shape[1] == 0
    for k in (1, 3, 5):
        out[f"recall@{k}"] = float("nan") if empty else recall_at_k(y, s, k)
    out["macro_auprc"] = float("nan") if empty else macro_auprc(y, s)
    out["micro_auroc"] = float("nan") if empty else micro_auroc(y, s)
    out["ece"] = float("nan") if empty else ece(y, s)
    return out


def figures_by_guard(y: npt.NDArray[Any], s: npt.NDArray[Any], familiar: npt.NDArray[np.bool_]) -> dict[str, Any]:
    return {"all": figures(y, s), "guard_passed": figures(y[familiar], s[familiar])}


def in_history(ds: Dataset, samples: IntArray, keys: Sequence[Ingredients]) -> npt.NDArray[np.bool_]:
    """(samples x keys): whether the patient's history before the sample already holds a medication event with
    exactly that ingredient set (a repeat order, when the sample's target has it too)."""
    kinds = token_kinds(ds)
    displays = vocab_displays(ds)
    column = np.full(len(ds.vocab), -1, dtype=np.int64)
    for i, (token, display, kind) in enumerate(zip(ds.vocab, displays, kinds, strict=True)):
        if kind is EventKind.MEDICATION and "/" in token:
            rxcui = token.removeprefix("RXNORM/") if token.startswith("RXNORM/") else None
            found = ingredients_of(display, rxcui)
            if found in keys:
                column[i] = list(keys).index(found)
    out = np.zeros((len(samples), len(keys)), dtype=bool)
    for row, s in enumerate(samples):
        cols = column[history_from_dataset(ds, int(s)).event_token]
        out[row, cols[cols >= 0]] = True
    return out


def repeat_orders(y: npt.NDArray[Any], held: npt.NDArray[np.bool_]) -> dict[str, Any]:
    """How the targets relate to the history: the share of positive (sample, set) pairs whose set the patient
    already had, and the order rate of a set already in the history versus not."""
    pos = y > 0
    return {
        "positives": int(pos.sum()),
        "positives_already_in_history": round(float((pos & held).sum() / max(pos.sum(), 1)), 4),
        "order_rate_when_in_history": round(float((pos & held).sum() / max(held.sum(), 1)), 4),
        "order_rate_when_not_in_history": round(float((pos & ~held).sum() / max((~held).sum(), 1)), 4),
    }


def per_group_auprc(y: npt.NDArray[Any], s: npt.NDArray[Any], names: Sequence[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for j, name in enumerate(names):
        n_pos = int(y[:, j].sum())
        ap = macro_auprc(y[:, [j]], s[:, [j]]) if 0 < n_pos < len(y) else float("nan")
        out[name] = {"positives": n_pos, "auprc": ap}
    return out


def local_logistic_regression(
    ds: Dataset, target_columns: Sequence[Sequence[int]], test: IntArray, max_train: int, seed: int
) -> tuple[FloatArray, dict[str, Any]]:
    """The baselines' logistic regression (bag of codes, C = 0.5) fitted on a seeded draw of the dataset's own
    training split with ingredient-set targets, and its probabilities on `test`."""
    started = time.monotonic()
    train = draw(split_samples(ds, "train"), max_train, seed)
    space = FeatureSpace.from_dataset(ds)
    y_train = group_max(ds.label_matrix("med")[train], target_columns)
    model = make_baseline("logistic_regression", seed).fit(bag_of_codes(ds, train, space), y_train)
    probabilities = model.predict_proba(bag_of_codes(ds, test, space))
    info = {"train_samples": len(train), "features": space.width, "seconds": round(time.monotonic() - started, 1)}
    return probabilities, info


# --- the report -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransferOptions:
    model: Path
    train_data: Path
    transfer_data: Path
    max_samples: int = 3000
    seed: int = 13
    lr_max_train: int = 5000
    skip_lr: bool = False


def _json_safe(x: Any) -> Any:
    if isinstance(x, float):
        return round(x, 4) if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return _json_safe(float(x))
    return x


def ingredient_audit(labels: Sequence[dict[str, Any]], sets: Sequence[Ingredients]) -> dict[str, Any]:
    """Labels whose ingredients resolve to nothing, and RxNorm-coded labels whose code adds ingredients their
    display does not name (a code that is not the drug the display says)."""
    unresolved = [str(x["display"]) for x, s in zip(labels, sets, strict=True) if not s]
    disagree = []
    for label, s in zip(labels, sets, strict=True):
        by_display = ingredients_of(str(label.get("display", "")))
        if str(label["token"]).startswith("RXNORM/") and by_display and s != by_display:
            disagree.append(
                {
                    "token": label["token"],
                    "display": label["display"],
                    "ingredients": sorted(s),
                    "by_display": sorted(by_display),
                }
            )
    return {"unresolved": unresolved, "code_display_disagreements": disagree}


def transfer_report(
    opts: TransferOptions, ds_train: Dataset, ds_transfer: Dataset, predictor: Predictor
) -> dict[str, Any]:
    started = time.monotonic()
    timings: dict[str, float] = {}
    guard = predictor.guard
    concepts = predictor.featurizer.concepts

    def lap(name: str, since: float) -> float:
        now = time.monotonic()
        timings[name] = round(now - since, 1)
        return now

    # 1. codes
    t = time.monotonic()
    displays = vocab_displays(ds_transfer)
    plain = predictor.code_map(ds_transfer.vocab)
    kinds = token_kinds(ds_transfer)
    fallback = concept_code_map(predictor.vocab, concepts, ds_transfer.vocab, displays, kinds)
    by_family = concept_code_map(
        predictor.vocab, concepts, ds_transfer.vocab, displays, [family_kind(x) for x in ds_transfer.vocab]
    )
    own = concept_code_map(predictor.vocab, concepts, ds_train.vocab, vocab_displays(ds_train), token_kinds(ds_train))
    unknown = {
        "transfer": unknown_shares(
            ds_transfer, "test", {"plain_map": plain, "fallback_map": fallback, "fallback_map_family_kinds": by_family}
        ),
        "in_distribution": unknown_shares(
            ds_train, "test", {"plain_map": predictor.code_map(ds_train.vocab), "fallback_map": own}
        ),
        "distinct_tokens": {
            "transfer_vocab": len(ds_transfer.vocab) - 3,
            "known_by_token": int(sum(1 for i in range(3, len(plain)) if plain[i] != UNK_ID)),
            "known_with_fallback": int(sum(1 for i in range(3, len(fallback)) if fallback[i] != UNK_ID)),
        },
    }
    t = lap("code_maps", t)

    # 2. scoring
    test_transfer = draw(split_samples(ds_transfer, "test"), opts.max_samples, opts.seed)
    test_own = draw(split_samples(ds_train, "test"), opts.max_samples, opts.seed)
    served = score_as_served(predictor, ds_transfer, test_transfer, fallback, guard)
    served_plain = score_as_served(predictor, ds_transfer, test_transfer, plain, guard)
    t = lap("score_transfer", t)
    served_own = score_as_served(predictor, ds_train, test_own, own, guard)
    served_own_no_notes = score_as_served(predictor, ds_train, test_own, own, guard, use_notes=False)
    t = lap("score_in_distribution", t)
    guard_report = {
        "transfer": abstention(served, guard),
        "transfer_plain_map": abstention(served_plain, guard),
        "in_distribution": abstention(served_own, guard),
        "in_distribution_without_notes": abstention(served_own_no_notes, guard),
    }

    # 3. medications by ingredient
    model_sets = label_ingredients(predictor.labels["medication"])
    transfer_labels = ds_transfer.manifest["labels"]["medication"]
    transfer_sets = label_ingredients(transfer_labels)
    groups = group_labels(model_sets, transfer_sets)
    own_groups = group_labels(model_sets, label_ingredients(ds_train.manifest["labels"]["medication"]))
    y_transfer = group_max(ds_transfer.label_matrix("med")[test_transfer], groups.target_columns)
    y_own_all = ds_train.label_matrix("med")[test_own]
    y_own = group_max(
        y_own_all, [own_groups.target_columns[own_groups.keys.index(k)] for k in groups.keys if k in own_groups.keys]
    )
    shared_in_own = [k for k in groups.keys if k in own_groups.keys]
    own_model_cols = [own_groups.model_columns[own_groups.keys.index(k)] for k in shared_in_own]
    s_transfer = group_max(served.medication, groups.model_columns)
    medication: dict[str, Any] = {
        "ingredient_sets": {
            "model": len({s for s in model_sets if s}),
            "transfer": len({s for s in transfer_sets if s}),
            "shared": groups.names,
            "transfer_only": sorted(" + ".join(sorted(s)) for s in {s for s in transfer_sets if s} - set(groups.keys)),
            "transfer_labels_in_shared_sets": sum(len(c) for c in groups.target_columns),
            "transfer_labels": len(transfer_labels),
            "model_labels_in_shared_sets": sum(len(c) for c in groups.model_columns),
            "model_labels": len(model_sets),
            "transfer_label_audit": ingredient_audit(transfer_labels, transfer_sets),
        },
        "transfer": figures_by_guard(y_transfer, s_transfer, served.familiar),
        "transfer_plain_map": figures_by_guard(
            y_transfer, group_max(served_plain.medication, groups.model_columns), served_plain.familiar
        ),
        "in_distribution_shared_sets": figures_by_guard(
            y_own, group_max(served_own.medication, own_model_cols), served_own.familiar
        ),
        "in_distribution_shared_sets_without_notes": figures_by_guard(
            y_own, group_max(served_own_no_notes.medication, own_model_cols), served_own_no_notes.familiar
        ),
        "in_distribution_all_sets": figures_by_guard(
            group_max(y_own_all, own_groups.target_columns),
            group_max(served_own.medication, own_groups.model_columns),
            served_own.familiar,
        ),
    }
    per_set_own = per_group_auprc(
        y_own, group_max(served_own.medication, own_model_cols), [" + ".join(sorted(k)) for k in shared_in_own]
    )
    per_set = per_group_auprc(y_transfer, s_transfer, groups.names)
    medication["per_set_auprc"] = {
        name: {"transfer": v, "in_distribution": per_set_own.get(name)} for name, v in per_set.items()
    }
    medication["repeat_orders"] = {
        "transfer": repeat_orders(y_transfer, in_history(ds_transfer, test_transfer, groups.keys)),
        "in_distribution_shared_sets": repeat_orders(y_own, in_history(ds_train, test_own, shared_in_own)),
    }
    if opts.skip_lr:
        medication["local_logistic_regression"] = {"skipped": "--skip-lr"}
    else:
        p_lr, info = local_logistic_regression(
            ds_transfer, groups.target_columns, test_transfer, opts.lr_max_train, opts.seed
        )
        medication["local_logistic_regression"] = {**info, **figures_by_guard(y_transfer, p_lr, served.familiar)}
    t = lap("medication_figures", t)

    # 4. diagnoses
    model_dx = [str(x["token"]) for x in predictor.labels["diagnosis"]]
    transfer_dx = ds_transfer.diagnosis_labels
    shared_dx = [tok for tok in transfer_dx if tok in model_dx]
    model_dx_display = {normalised(str(x.get("display", ""))) for x in predictor.labels["diagnosis"]}
    shared_display = [
        str(x["display"])
        for x in ds_transfer.manifest["labels"]["diagnosis"]
        if normalised(str(x.get("display", ""))) in model_dx_display
    ]
    diagnosis: dict[str, Any] = {
        "model_labels": len(model_dx),
        "transfer_labels": len(transfer_dx),
        "transfer_label_families": dict(Counter(tok.split("/", 1)[0] for tok in transfer_dx)),
        "shared_tokens": shared_dx,
        "shared_normalised_displays": shared_display,
    }
    if len(shared_dx) >= 5:
        y_dx = ds_transfer.label_matrix("dx")[test_transfer][:, [transfer_dx.index(x) for x in shared_dx]]
        s_dx = served.diagnosis[:, [model_dx.index(x) for x in shared_dx]]
        diagnosis["transfer"] = figures_by_guard(y_dx, s_dx, served.familiar)
    else:
        diagnosis["verdict"] = (
            f"the diagnosis head does not transfer: {len(shared_dx)} of the {len(transfer_dx)} transfer labels "
            f"share a token with the model's {len(model_dx)} (fewer than 5), so nothing is scored"
        )
    lap("diagnosis", t)

    report = {
        "model": predictor.version,
        "options": {
            "model": opts.model,
            "train_data": opts.train_data,
            "transfer_data": opts.transfer_data,
            "max_samples": opts.max_samples,
            "seed": opts.seed,
            "lr_max_train": opts.lr_max_train,
            "skip_lr": opts.skip_lr,
            "device": str(predictor.device),
        },
        "samples": {
            "transfer_test_split": len(split_samples(ds_transfer, "test")),
            "transfer_scored": len(test_transfer),
            "in_distribution_test_split": len(split_samples(ds_train, "test")),
            "in_distribution_scored": len(test_own),
        },
        "notes_used": {"transfer": served.notes_used, "in_distribution": served_own.notes_used},
        "unknown_tokens": unknown,
        "guard": guard_report,
        "medication_by_ingredient": medication,
        "diagnosis": diagnosis,
        "seconds": {**timings, "total": round(time.monotonic() - started, 1)},
    }
    safe: dict[str, Any] = _json_safe(report)
    return safe


# --- markdown -------------------------------------------------------------------------------------------------


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def _row(*cells: Any) -> str:
    return "| " + " | ".join(_fmt(c) for c in cells) + " |"


def render_markdown(report: dict[str, Any]) -> str:
    opts, med, guard, unknown = (
        report["options"],
        report["medication_by_ingredient"],
        report["guard"],
        report["unknown_tokens"],
    )
    lines = [
        f"# Transfer: {report['model']} on {Path(opts['transfer_data']).name}",
        "",
        f"The model trained on `{opts['train_data']}` scored on the test split of `{opts['transfer_data']}` "
        f"({report['samples']['transfer_scored']} of {report['samples']['transfer_test_split']} samples, seed "
        f"{opts['seed']}) beside its own test split ({report['samples']['in_distribution_scored']} of "
        f"{report['samples']['in_distribution_test_split']}). Records are read as serving reads them (concept "
        "fallback for unknown codes, the model's value bins, the canonical cutoff, the familiarity guard); "
        f"notes used: transfer {report['notes_used']['transfer']}, in distribution "
        f"{report['notes_used']['in_distribution']}. Written by `scripts/transfer_report.py` in "
        f"{report['seconds']['total']:.0f} s.",
        "",
        "## Unknown codes (share of test-split events mapped to [UNK])",
        "",
        "| cohort | events | plain map | fallback map |",
        "|---|---|---|---|",
        _row("transfer", *(unknown["transfer"][k] for k in ("events", "plain_map", "fallback_map"))),
        _row("in distribution", *(unknown["in_distribution"][k] for k in ("events", "plain_map", "fallback_map"))),
        "",
        "Transfer, by token family (share of events; unknown share plain / fallback):",
        "",
        "| family | events | plain | fallback |",
        "|---|---|---|---|",
    ]
    for family, row in unknown["transfer"]["by_family"].items():
        lines.append(
            f"| {family} | {_fmt(row['event_share'])} | {_fmt(row['plain_map'])} | {_fmt(row['fallback_map'])} |"
        )
    checks = list(guard["transfer"]["failing"])
    lines += [
        "",
        "## Familiarity guard (share of scored samples)",
        "",
        "| cohort | abstains | " + " | ".join(checks) + " |",
        "|---|---|" + "---|" * len(checks),
    ]
    for name, row in guard.items():
        cells = " | ".join(f"{_fmt(row['failing'][c])} ({_fmt(row['failing_alone'][c])} alone)" for c in checks)
        lines.append(f"| {name.replace('_', ' ')} | {_fmt(row['abstain_rate'])} | {cells} |")
    sets = med["ingredient_sets"]
    lines += [
        "",
        "## Medications by ingredient set",
        "",
        f"{len(sets['shared'])} ingredient sets in both label lists ({sets['transfer_labels_in_shared_sets']} of "
        f"{sets['transfer_labels']} transfer labels, {sets['model_labels_in_shared_sets']} of {sets['model_labels']} "
        "model labels); the model's score for a set is its best product's. In distribution: the same sets on the "
        "model's own test split (and all of its own sets).",
        "",
        "| system | samples | recall@1 | recall@3 | recall@5 | macro-AUPRC | micro-AUROC | ECE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = [
        ("transfer", "model on transfer (fallback map)"),
        ("transfer_plain_map", "model on transfer (plain map)"),
        ("local_logistic_regression", "LR fitted on transfer's own train split"),
        ("in_distribution_shared_sets", "model in distribution, shared sets"),
        ("in_distribution_shared_sets_without_notes", "model in distribution, shared sets, no notes"),
        ("in_distribution_all_sets", "model in distribution, all its sets"),
    ]
    for key, label in rows:
        if key not in med or "all" not in med[key]:
            continue
        for subset in ("all", "guard_passed"):
            f = med[key][subset]
            names = ("samples", "recall@1", "recall@3", "recall@5", "macro_auprc", "micro_auroc", "ece")
            lines.append(_row(f"{label}, {subset.replace('_', ' ')}", *(f[k] for k in names)))
    rep = med["repeat_orders"]
    lines += [
        "",
        "What the targets are (shared sets): of the sets ordered, the share the patient already had, and the "
        "order rate of a set already in the history versus not:",
        "",
        "| cohort | positives | already in history | order rate, in history | order rate, not in history |",
        "|---|---|---|---|---|",
    ]
    for name, r in rep.items():
        keys = ("positives", "positives_already_in_history", "order_rate_when_in_history")
        lines.append(_row(name.replace("_", " "), *(r[k] for k in keys), r["order_rate_when_not_in_history"]))
    lr = med.get("local_logistic_regression", {})
    if "train_samples" in lr:
        lines += ["", f"LR: {lr['train_samples']} training samples, {lr['features']} features, {lr['seconds']:.0f} s."]
    elif lr:
        lines += ["", f"LR skipped: {lr.get('skipped')}."]
    audit = sets["transfer_label_audit"]
    if audit["unresolved"] or audit["code_display_disagreements"]:
        lines += ["", "Transfer labels left out: " + ", ".join(f"{x} (no ingredient)" for x in audit["unresolved"])]
        for d in audit["code_display_disagreements"]:
            lines.append(
                f"- {d['display']} ({d['token']}): code and display resolve to {', '.join(d['ingredients'])}; "
                f"the display alone to {', '.join(d['by_display'])}"
            )
    if sets["transfer_only"]:
        lines += ["", "Transfer ingredient sets the model has no label for: " + ", ".join(sets["transfer_only"]) + "."]
    dx = report["diagnosis"]
    lines += [
        "",
        "## Diagnoses",
        "",
        f"Model labels {dx['model_labels']}, transfer labels {dx['transfer_labels']} "
        f"({', '.join(f'{k} {v}' for k, v in dx['transfer_label_families'].items())}); shared tokens: "
        f"{len(dx['shared_tokens'])}; shared normalised displays: {len(dx['shared_normalised_displays'])}"
        + (f" ({', '.join(dx['shared_normalised_displays'])})" if dx["shared_normalised_displays"] else "")
        + ".",
        "",
    ]
    if "verdict" in dx:
        lines.append(dx["verdict"][0].upper() + dx["verdict"][1:] + ".")
    else:
        for subset in ("all", "guard_passed"):
            f = dx["transfer"][subset]
            lines.append(
                f"- {subset}: recall@5 {_fmt(f['recall@5'])}, macro-AUPRC {_fmt(f['macro_auprc'])}, "
                f"micro-AUROC {_fmt(f['micro_auroc'])}, ECE {_fmt(f['ece'])} ({f['samples']} samples)"
            )
    return "\n".join(lines) + "\n"
