"""`cds-service data build`: FHIR directories to a training dataset (see `dataset.py` for the format)."""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from cds_service.data.dataset import SEX_IDS, SPECIAL_TOKENS, SPLITS, save_dataset
from cds_service.data.labels import encounter_labels
from cds_service.data.note_tokenizer import NOTE_MODEL_FILE, NoteTokenizer, train_note_tokenizer
from cds_service.fhir.reader import ReadReport
from cds_service.timeline.builder import build_timelines
from cds_service.timeline.events import EventKind, PatientTimeline

log = logging.getLogger(__name__)

SPLIT_FRACTIONS = (0.70, 0.15, 0.15)
N_VALUE_BINS = 5


@dataclass
class BuildOptions:
    seed: int = 13
    min_token_count: int = 2  # code tokens seen fewer times in training become [UNK]
    min_label_count: int = 20  # labels need this many positive training samples
    note_vocab_size: int = 4000
    max_note_pieces: int = 128
    generator: str = "unknown"


def patient_split(patient_id: str, seed: int) -> int:
    """0 train, 1 validation, 2 test: a hash of the id, so a patient keeps its split across rebuilds."""
    digest = hashlib.sha256(f"{seed}:{patient_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return 0 if u < SPLIT_FRACTIONS[0] else 1 if u < SPLIT_FRACTIONS[0] + SPLIT_FRACTIONS[1] else 2


_COLUMNS = (
    "patient_events",
    "patient_notes",
    "patient_birth",
    "patient_sex",
    "patient_split",
    "event_time",
    "event_token",
    "event_kind",
    "event_value",
    "event_visit",
    "note_time",
    "note_visit",
    "sample_patient",
    "sample_time",
    "sample_class",
)


@dataclass
class _Collected:
    """Everything gathered in the single pass over patients, before vocabularies are fixed."""

    token_ids: dict[str, int] = field(default_factory=dict)  # provisional ids, all splits
    displays: dict[str, str] = field(default_factory=dict)
    train_counts: Counter[str] = field(default_factory=Counter)
    values: dict[str, list[float]] = field(default_factory=dict)
    columns: dict[str, list[Any]] = field(default_factory=lambda: {k: [] for k in _COLUMNS})
    notes: list[str] = field(default_factory=list)
    note_split: list[int] = field(default_factory=list)
    sample_dx: list[tuple[str, ...]] = field(default_factory=list)
    sample_med: list[tuple[str, ...]] = field(default_factory=list)
    sample_known: list[tuple[str, ...]] = field(default_factory=list)
    classes: dict[str, int] = field(default_factory=dict)

    def tid(self, token: str, display: str) -> int:
        found = self.token_ids.get(token)
        if found is None:
            found = self.token_ids[token] = len(self.token_ids)
            self.displays[token] = display
        return found


def _collect_patient(c: _Collected, timeline: PatientTimeline, split: int) -> None:
    cols = c.columns
    row = len(cols["patient_split"])
    visits = {eid: i for i, eid in enumerate(sorted(timeline.encounters, key=lambda k: timeline.encounters[k].start))}
    cols["patient_events"].append(len(timeline.events))
    cols["patient_notes"].append(len(timeline.notes))
    cols["patient_birth"].append(np.nan if timeline.birth_time is None else timeline.birth_time)
    cols["patient_sex"].append(SEX_IDS.get(timeline.sex, 0))
    cols["patient_split"].append(split)
    for e in timeline.events:
        cols["event_time"].append(e.time)
        cols["event_token"].append(c.tid(e.token, e.display))
        cols["event_kind"].append(int(e.kind))
        cols["event_value"].append(np.nan if e.value is None else e.value)
        cols["event_visit"].append(visits.get(e.encounter or "", -1))
        if split == 0:
            c.train_counts[e.token] += 1
            if e.value is not None and e.kind is EventKind.OBSERVATION:
                c.values.setdefault(e.token, []).append(e.value)
    for n in timeline.notes:
        cols["note_time"].append(n.time)
        cols["note_visit"].append(visits.get(n.encounter or "", -1))
        c.notes.append(n.text)
        c.note_split.append(split)
    for lab in encounter_labels(timeline):
        cols["sample_patient"].append(row)
        cols["sample_time"].append(lab.start)
        cols["sample_class"].append(c.classes.setdefault(lab.class_code, len(c.classes)))
        c.sample_dx.append(lab.diagnoses)
        c.sample_med.append(lab.medications)
        c.sample_known.append(lab.known_diagnoses)


def _offsets(lengths: list[int]) -> npt.NDArray[np.int64]:
    return np.concatenate([[0], np.cumsum(np.asarray(lengths, dtype=np.int64))]).astype(np.int64)


def _csr(rows: list[list[int]]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    flat = [x for row in rows for x in row]
    return _offsets([len(r) for r in rows]), np.asarray(flat, dtype=np.int32)


def _label_list(
    c: _Collected, per_sample: list[tuple[str, ...]], train_mask: list[bool], min_count: int
) -> list[dict[str, Any]]:
    counts: Counter[str] = Counter(
        t for labels, is_train in zip(per_sample, train_mask, strict=True) if is_train for t in labels
    )
    kept = sorted((t for t, n in counts.items() if n >= min_count), key=lambda t: (-counts[t], t))
    return [{"token": t, "display": c.displays.get(t, t), "train_count": counts[t]} for t in kept]


def _tokenize_notes(c: _Collected, out: Path, options: BuildOptions) -> list[list[int]]:
    """Train SentencePiece on training-split notes only, then encode every note's first pieces."""
    train_notes = [n for n, s in zip(c.notes, c.note_split, strict=True) if s == 0 and n.strip()]
    out.mkdir(parents=True, exist_ok=True)
    if not train_notes:
        log.warning("no training-split notes: the dataset has no note tokenizer and no note pieces")
        return [[] for _ in c.notes]
    with tempfile.TemporaryDirectory() as tmp:
        model_path = train_note_tokenizer(train_notes, Path(tmp), options.note_vocab_size)
        (out / model_path.name).write_bytes(model_path.read_bytes())
    tokenizer = NoteTokenizer(out / model_path.name)
    return [tokenizer.encode(text, options.max_note_pieces) for text in c.notes]


def _note_vocab_size(out: Path) -> int:
    path = out / NOTE_MODEL_FILE
    return NoteTokenizer(path).vocab_size if path.is_file() else 0


def build_dataset(fhir_dirs: list[Path], out: Path, options: BuildOptions) -> dict[str, Any]:
    report = ReadReport()
    c = _Collected()
    for timeline in tqdm(build_timelines(fhir_dirs, report), desc="patients", unit=" patients"):
        if not timeline.events:
            continue
        _collect_patient(c, timeline, patient_split(timeline.patient_id, options.seed))
    if not c.columns["patient_split"]:
        raise ValueError(f"no patients with events found in {', '.join(map(str, fhir_dirs))} ({report.summary()})")

    # Vocabulary from the training split only, so validation/test tokens unseen in training are [UNK].
    vocab_tokens = list(SPECIAL_TOKENS) + sorted(
        (t for t, n in c.train_counts.items() if n >= options.min_token_count), key=lambda t: (-c.train_counts[t], t)
    )
    final = {t: i for i, t in enumerate(vocab_tokens)}
    remap = np.full(len(c.token_ids), SPECIAL_TOKENS.index("[UNK]"), dtype=np.int32)
    for token, provisional in c.token_ids.items():
        if token in final:
            remap[provisional] = final[token]
    value_bins = {
        t: [float(x) for x in np.unique(np.quantile(np.asarray(v), np.linspace(0, 1, N_VALUE_BINS + 1)[1:-1]))]
        for t, v in c.values.items()
        if t in final and len(v) >= N_VALUE_BINS
    }

    sample_split = [c.columns["patient_split"][p] for p in c.columns["sample_patient"]]
    train_mask = [s == 0 for s in sample_split]
    dx_labels = _label_list(c, c.sample_dx, train_mask, options.min_label_count)
    med_labels = _label_list(c, c.sample_med, train_mask, options.min_label_count)
    dx_index = {x["token"]: i for i, x in enumerate(dx_labels)}
    med_index = {x["token"]: i for i, x in enumerate(med_labels)}

    note_pieces = _tokenize_notes(c, out, options)

    cols = c.columns
    arrays: dict[str, npt.NDArray[Any]] = {
        "patient_events_offsets": _offsets(cols["patient_events"]),
        "patient_notes_offsets": _offsets(cols["patient_notes"]),
        "patient_birth": np.asarray(cols["patient_birth"], dtype=np.float64),
        "patient_sex": np.asarray(cols["patient_sex"], dtype=np.int8),
        "patient_split": np.asarray(cols["patient_split"], dtype=np.int8),
        "event_time": np.asarray(cols["event_time"], dtype=np.float64),
        "event_token": remap[np.asarray(cols["event_token"], dtype=np.int64)],
        "event_kind": np.asarray(cols["event_kind"], dtype=np.int8),
        "event_value": np.asarray(cols["event_value"], dtype=np.float32),
        "event_visit": np.asarray(cols["event_visit"], dtype=np.int32),
        "note_time": np.asarray(cols["note_time"], dtype=np.float64),
        "note_visit": np.asarray(cols["note_visit"], dtype=np.int32),
        "sample_patient": np.asarray(cols["sample_patient"], dtype=np.int32),
        "sample_time": np.asarray(cols["sample_time"], dtype=np.float64),
        "sample_class": np.asarray(cols["sample_class"], dtype=np.int8),
    }
    arrays["note_pieces_offsets"], arrays["note_pieces"] = _csr(note_pieces)
    note_vocab_size = int(arrays["note_pieces"].max()) + 1 if len(arrays["note_pieces"]) else 0
    arrays["note_pieces"] = arrays["note_pieces"].astype(np.int16 if note_vocab_size < 2**15 else np.int32)
    arrays["sample_dx_offsets"], arrays["sample_dx"] = _csr(
        [[dx_index[t] for t in s if t in dx_index] for s in c.sample_dx]
    )
    arrays["sample_med_offsets"], arrays["sample_med"] = _csr(
        [[med_index[t] for t in s if t in med_index] for s in c.sample_med]
    )
    arrays["sample_known_dx_offsets"], arrays["sample_known_dx"] = _csr(
        [[final.get(t, 1) for t in s] for s in c.sample_known]
    )

    split_counts = {
        name: {
            "patients": int(sum(1 for s in cols["patient_split"] if s == i)),
            "samples": int(sum(1 for s in sample_split if s == i)),
        }
        for i, name in enumerate(SPLITS)
    }
    manifest: dict[str, Any] = {
        "generator": options.generator,
        "sources": [str(p) for p in fhir_dirs],
        "seed": options.seed,
        "options": {k: v for k, v in vars(options).items() if k != "generator"},
        "counts": {
            "patients": len(cols["patient_split"]),
            "events": len(cols["event_time"]),
            "notes": len(c.notes),
            "samples": len(cols["sample_patient"]),
            "samples_with_dx_label": int(sum(1 for s in c.sample_dx if any(t in dx_index for t in s))),
            "samples_with_med_label": int(sum(1 for s in c.sample_med if any(t in med_index for t in s))),
        },
        "splits": split_counts,
        "vocab_size": len(vocab_tokens),
        "note_vocab_size": _note_vocab_size(out),
        "encounter_classes": sorted(c.classes, key=lambda k: c.classes[k]),
        "labels": {"diagnosis": dx_labels, "medication": med_labels},
        "read_report": {"files": report.files, "resources": report.resources, "skipped": dict(report.warnings)},
    }
    vocab = {
        "tokens": vocab_tokens,
        "train_counts": [c.train_counts.get(t, 0) for t in vocab_tokens],
        "display": [c.displays.get(t, t) for t in vocab_tokens],
    }
    save_dataset(out, manifest, vocab, value_bins, arrays)
    log.info("dataset written: %s", report.summary())
    return manifest
