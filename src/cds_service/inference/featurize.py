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
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from cds_service.timeline.events import EventKind

N_VALUE_BINS = 5
MAX_AGE = 120
N_TIME_BUCKETS = 32
MAX_VISITS = 63
SECONDS_PER_DAY = 86400.0
SECONDS_PER_YEAR = 365.25 * SECONDS_PER_DAY
FEATURE_NAMES = ("input_ids", "value_ids", "token_type_ids", "age_ids", "time_ids", "visit_ids", "attention_mask")


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


def encode(h: History, space: TokenSpace, cfg: EncodeConfig) -> tuple[dict[str, npt.NDArray[np.int64]], list[int]]:
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
    features = {
        "input_ids": input_ids,
        "value_ids": value_ids.astype(np.int64),
        "token_type_ids": kinds.astype(np.int64),
        "age_ids": age_ids.astype(np.int64),
        "time_ids": time_bucket(h.cutoff - times),
        "visit_ids": visit_ids.astype(np.int64),
        "attention_mask": np.ones(len(times), dtype=np.int64),
    }
    return features, [-1, *keep.tolist(), *note_src]


def pad_batch(items: list[dict[str, npt.NDArray[np.int64]]]) -> dict[str, npt.NDArray[np.int64]]:
    length = max(len(x["input_ids"]) for x in items)
    out = {name: np.zeros((len(items), length), dtype=np.int64) for name in FEATURE_NAMES}
    for row, item in enumerate(items):
        for name in FEATURE_NAMES:
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
    )
