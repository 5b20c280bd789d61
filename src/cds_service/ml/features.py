"""The one featuriser: a patient's history before a cutoff to model inputs, for training and serving alike.

Both entry points reduce to `History` (flat per-event arrays and note pieces, all strictly before the
cutoff) and then to `encode`, so what the model saw in training is exactly what it sees at the bedside.

Sequence layout: [CLS], then coded events oldest to newest (most recent kept when truncating; repeated
labs collapsed to the latest value per code and visit), then the most recent prior notes' pieces.
Embedding ids per position: `input_ids` (codes / note pieces), `value_ids` (value-bin tokens, same table),
`token_type_ids` (EventKind), `age_ids` (years), `time_ids` (log-bucketed days before the cutoff) and
`visit_ids` (visits counted back from the most recent).
"""

from __future__ import annotations

import bisect
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from cds_service.data.dataset import SEX_IDS, Dataset
from cds_service.timeline.events import EventKind

Encoded = dict[str, npt.NDArray[Any]]  # one sample's model inputs, by input name

log = logging.getLogger(__name__)

N_VALUE_BINS = 5
MAX_AGE = 120
N_TIME_BUCKETS = 32
MAX_VISITS = 63
SECONDS_PER_DAY = 86400.0
SECONDS_PER_YEAR = 365.25 * SECONDS_PER_DAY


@dataclass(frozen=True)
class TokenSpace:
    """One embedding table: [codes][value bins][note pieces], with offsets for each block."""

    n_codes: int
    n_note_pieces: int

    @property
    def value_offset(self) -> int:
        return self.n_codes

    @property
    def note_offset(self) -> int:
        return self.n_codes + N_VALUE_BINS

    @property
    def size(self) -> int:
        return self.note_offset + max(self.n_note_pieces, 1)


@dataclass
class History:
    """A patient's inputs strictly before `cutoff`; `source` indexes back to the events (for evidence)."""

    cutoff: float
    birth_time: float | None
    event_time: npt.NDArray[np.float64]
    event_token: npt.NDArray[np.int64]
    event_kind: npt.NDArray[np.int64]
    event_value_bin: npt.NDArray[np.int64]  # 0 none, 1..N_VALUE_BINS
    event_visit: npt.NDArray[np.int64]
    note_time: npt.NDArray[np.float64]
    note_pieces: list[npt.NDArray[np.int64]]
    sex: str = "unknown"  # administrative gender, for the wide branch
    encounter_class: str | None = None  # the encounter being scored, when known (v3 ActCode)


def value_bin(value: float, edges: list[float] | None) -> int:
    if edges is None or value != value:  # NaN: no value
        return 0
    return 1 + bisect.bisect_right(edges, value)  # == np.searchsorted(edges, value, "right"), without array setup


def time_bucket(seconds_before: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    days = np.maximum(seconds_before, 0.0) / SECONDS_PER_DAY
    buckets: npt.NDArray[np.int64] = np.minimum(np.floor(np.log2(days + 1.0) * 2.0), N_TIME_BUCKETS - 1).astype(
        np.int64
    )
    return buckets


def collapse_repeated_labs(h: History, start: int = 0) -> npt.NDArray[np.bool_]:
    """Keep-mask over events[start:]: for observations, only the latest event per (visit, token)."""
    kinds = h.event_kind[start:]
    keep = kinds != EventKind.OBSERVATION
    obs = np.flatnonzero(~keep)[::-1]  # newest first, so np.unique's first index is the latest event
    if len(obs):
        keys = (h.event_visit[start:][obs] + 1) * (1 << 32) + h.event_token[start:][obs]
        _, first = np.unique(keys, return_index=True)
        keep[obs[first]] = True
    mask: npt.NDArray[np.bool_] = keep
    return mask


@dataclass(frozen=True)
class EncodeConfig:
    max_len: int = 512
    note_tokens: int = 64  # budget for note pieces within max_len
    max_notes: int = 2
    # Caps that training and serving must share; saved in the model's config.json (older models lack them
    # and get these defaults, the values they were trained with).
    max_known_dx: int = 8  # known diagnoses of the encounter given to the medication head
    max_note_pieces: int = 128  # SentencePiece pieces kept per note (the dataset's BuildOptions.max_note_pieces)
    wide: bool = False  # also emit the bag-of-codes features of the wide branch
    encounter_classes: tuple[str, ...] = ()  # one-hot columns of the wide branch


@dataclass(frozen=True)
class WideSpace:
    """Columns of the wide branch: log1p code counts over all history, the same over the last 365 days,
    age in decades, sex and encounter class one-hot (the logistic-regression baseline's features)."""

    n_codes: int
    encounter_classes: tuple[str, ...]

    @property
    def age_column(self) -> int:
        return 2 * self.n_codes

    @property
    def size(self) -> int:
        return 2 * self.n_codes + 1 + len(SEX_COLUMNS) + len(self.encounter_classes)


SEX_COLUMNS = tuple(sorted(SEX_IDS, key=SEX_IDS.__getitem__))  # column order = the dataset's sex ids


def wide_event_contributions(
    h: History, wide: WideSpace, column_logits: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """Per history event, its share of the wide branch's logit: each code column's contribution
    (weight x value, `column_logits` indexed by column) split evenly over the events it counts."""
    tokens = h.event_token
    recent = h.event_time >= h.cutoff - SECONDS_PER_YEAR
    n_all = np.bincount(tokens, minlength=wide.n_codes)
    n_recent = np.bincount(tokens[recent], minlength=wide.n_codes)
    share_all = column_logits[: wide.n_codes] / np.maximum(n_all, 1)
    share_recent = column_logits[wide.n_codes : 2 * wide.n_codes] / np.maximum(n_recent, 1)
    out: npt.NDArray[np.float32] = (share_all[tokens] + np.where(recent, share_recent[tokens], 0.0)).astype(np.float32)
    return out


def wide_features(
    h: History, wide: WideSpace, drop_events: npt.NDArray[np.int64] | None = None
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Sparse (column ids, values) of one history; `drop_events` are left out (deletion checks).

    Column 0 is [PAD]'s count, never present, so 0 pads a batch (EmbeddingBag padding_idx)."""
    tokens = h.event_token
    recent = h.event_time >= h.cutoff - SECONDS_PER_YEAR
    if drop_events is not None:
        keep = np.ones(len(tokens), dtype=bool)
        keep[drop_events] = False
        tokens, recent = tokens[keep], recent[keep]
    ids_all, n_all = np.unique(tokens, return_counts=True)
    ids_recent, n_recent = np.unique(tokens[recent], return_counts=True)
    extra_ids = [wide.age_column]
    extra_values = [0.0 if h.birth_time is None else (h.cutoff - h.birth_time) / SECONDS_PER_YEAR / 10]
    sex = SEX_COLUMNS.index(h.sex) if h.sex in SEX_COLUMNS else 0
    extra_ids.append(wide.age_column + 1 + sex)
    extra_values.append(1.0)
    if h.encounter_class in wide.encounter_classes:
        extra_ids.append(wide.age_column + 1 + len(SEX_COLUMNS) + wide.encounter_classes.index(h.encounter_class))
        extra_values.append(1.0)
    ids = np.concatenate([ids_all, ids_recent + wide.n_codes, extra_ids]).astype(np.int64)
    values = np.concatenate([np.log1p(n_all), np.log1p(n_recent), extra_values]).astype(np.float32)
    return ids, values


def encode(h: History, space: TokenSpace, cfg: EncodeConfig) -> tuple[dict[str, npt.NDArray[Any]], list[int]]:
    """Model inputs of one history (unpadded) and, per position, the index of its event (-1 CLS, -2-k note k)."""
    start = max(0, len(h.event_time) - 8 * cfg.max_len)  # older events cannot fit after collapsing
    keep = start + np.flatnonzero(collapse_repeated_labs(h, start))
    notes = list(range(max(0, len(h.note_pieces) - cfg.max_notes), len(h.note_pieces)))
    note_ids: list[int] = []
    note_src: list[int] = []
    note_times: list[float] = []
    for k in notes:
        pieces = h.note_pieces[k][: max(cfg.note_tokens - len(note_ids), 0)]
        note_ids.extend(int(p) + space.note_offset for p in pieces)
        note_src.extend([-2 - k] * len(pieces))
        note_times.extend([float(h.note_time[k])] * len(pieces))
    room = cfg.max_len - 1 - len(note_ids)
    keep = keep[-room:] if room > 0 else keep[:0]

    times = np.concatenate([[h.cutoff], h.event_time[keep], np.asarray(note_times, dtype=np.float64)])
    input_ids = np.concatenate([[2], h.event_token[keep], note_ids]).astype(np.int64)  # 2 = [CLS]
    values = h.event_value_bin[keep]
    value_ids = np.concatenate([[0], np.where(values > 0, values - 1 + space.value_offset, 0), [0] * len(note_ids)])
    kinds = np.concatenate([[0], h.event_kind[keep], [int(EventKind.NOTE)] * len(note_ids)])
    visits = h.event_visit[keep]
    latest = int(visits.max()) if len(visits) else 0
    visit_back = np.where(visits >= 0, np.minimum(latest - visits + 1, MAX_VISITS), 0)
    visit_ids = np.concatenate([[0], visit_back, [0] * len(note_ids)])
    if h.birth_time is None:
        age_ids = np.zeros(len(times), dtype=np.int64)
    else:
        age_ids = np.clip((times - h.birth_time) / SECONDS_PER_YEAR, 0, MAX_AGE).astype(np.int64) + 1
    features: dict[str, npt.NDArray[Any]] = {
        "input_ids": input_ids,
        "value_ids": value_ids.astype(np.int64),
        "token_type_ids": kinds.astype(np.int64),
        "age_ids": age_ids.astype(np.int64),
        "time_ids": time_bucket(h.cutoff - times),
        "visit_ids": visit_ids.astype(np.int64),
        "attention_mask": np.ones(len(times), dtype=np.int64),
    }
    if cfg.wide:
        features["wide_ids"], features["wide_values"] = wide_features(
            h, WideSpace(space.n_codes, tuple(cfg.encounter_classes))
        )
    return features, [-1, *keep.tolist(), *note_src]


def pad_batch(items: list[dict[str, npt.NDArray[Any]]]) -> dict[str, npt.NDArray[Any]]:
    """Zero-padded (batch, longest) arrays per feature; sequence and wide features pad independently."""
    out = {}
    for name in items[0]:
        length = max(len(x[name]) for x in items)
        out[name] = np.zeros((len(items), length), dtype=items[0][name].dtype)
        for row, item in enumerate(items):
            out[name][row, : len(item[name])] = item[name]
    return out


def history_from_dataset(ds: Any, sample: int) -> History:
    """History of dataset sample `sample`: the patient's rows strictly before the sample's cutoff."""
    a = ds.arrays
    p = int(a["sample_patient"][sample])
    cutoff = float(a["sample_time"][sample])
    e0, e1 = int(a["patient_events_offsets"][p]), int(a["patient_events_offsets"][p + 1])
    n_before = int(np.searchsorted(a["event_time"][e0:e1], cutoff, side="left"))
    sl = slice(e0, e0 + n_before)
    n0, n1 = int(a["patient_notes_offsets"][p]), int(a["patient_notes_offsets"][p + 1])
    note_rows = [k for k in range(n0, n1) if a["note_time"][k] < cutoff]
    birth = float(a["patient_birth"][p])
    tokens = a["event_token"][sl].astype(np.int64)
    piece_offsets = a["note_pieces_offsets"]
    sex_ids = {v: k for k, v in SEX_IDS.items()}
    classes = ds.manifest.get("encounter_classes", [])
    sample_class = int(a["sample_class"][sample]) if "sample_class" in a else -1
    return History(
        cutoff=cutoff,
        birth_time=None if math.isnan(birth) else birth,
        event_time=a["event_time"][sl],
        event_token=tokens,
        event_kind=a["event_kind"][sl].astype(np.int64),
        event_value_bin=ds.event_value_bins[sl],
        event_visit=a["event_visit"][sl].astype(np.int64),
        note_time=a["note_time"][note_rows],
        note_pieces=[a["note_pieces"][piece_offsets[k] : piece_offsets[k + 1]].astype(np.int64) for k in note_rows],
        sex=sex_ids.get(int(a["patient_sex"][p]), "unknown") if "patient_sex" in a else "unknown",
        encounter_class=classes[sample_class] if 0 <= sample_class < len(classes) else None,
    )


def encode_samples(ds: Dataset, samples: npt.NDArray[Any], cfg: EncodeConfig) -> list[Encoded]:
    space = TokenSpace(len(ds.vocab), int(ds.manifest.get("note_vocab_size", 0)))
    return [encode(history_from_dataset(ds, int(i)), space, cfg)[0] for i in samples]


def wide_rows(
    ds: Dataset, samples: npt.NDArray[Any], wide: WideSpace, code_map: npt.NDArray[np.int64] | None = None
) -> list[Encoded]:
    """Wide-branch features per sample; `code_map` maps the dataset's code ids onto a model's."""
    out: list[Encoded] = []
    for i in samples:
        h = history_from_dataset(ds, int(i))
        if code_map is not None:
            h.event_token = code_map[h.event_token]
        ids, values = wide_features(h, wide)
        out.append({"wide_ids": ids, "wide_values": values})
    return out


def known_dx_matrix(ds: Dataset, samples: npt.NDArray[Any], width: int) -> npt.NDArray[np.int64]:
    out = np.zeros((len(samples), width), dtype=np.int64)
    for row, i in enumerate(samples):
        ids = ds.rows("sample_known_dx", int(i))[:width]
        out[row, : len(ids)] = ids
    return out
