"""Live featurisation: a patient's timeline (from a hook's FHIR data) to the same `History` training used.

Token ids, value bins and note pieces come from the model's own vocabularies, and the visit numbering,
value binning and note truncation mirror `data/build.py`, so an encounter scored live gets the inputs it
would have had as a training sample. The events and notes kept here are the sources evidence points at.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cds_service.data.note_tokenizer import NoteTokenizer
from cds_service.ml.concepts import ConceptMap
from cds_service.ml.features import EncodeConfig, History, value_bin
from cds_service.timeline.events import Event, EventKind, Note, PatientTimeline

UNK_ID = 1


@dataclass
class LiveHistory:
    history: History
    events: list[Event]  # events[i] is history event i
    notes: list[Note]  # notes[k] is history note k
    known_dx: list[int]  # code ids of the encounter's known diagnoses


class LiveFeaturizer:
    def __init__(
        self,
        vocab: list[str],
        value_bins: dict[str, list[float]],
        notes: NoteTokenizer | None,
        config: EncodeConfig,
        concepts: ConceptMap | None = None,
    ) -> None:
        self.index = {t: i for i, t in enumerate(vocab)}
        self.concepts = concepts  # fallbacks for unknown codes (`ml.concepts`); None: unknown stays [UNK]
        self.value_bins = value_bins
        self.notes = notes
        self.config = config  # the model's own caps (config.json), never constants copied from training

    def token_id(self, token: str) -> int:
        return self.index.get(token, UNK_ID)

    def event_token_id(self, event: Event) -> int:
        """The event's code id, or the id of a known code for the same concept, or [UNK]."""
        found = self.index.get(event.token)
        if found is not None:
            return found
        if self.concepts is not None:
            fallback = self.concepts.fallback(event.token, event.display, event.kind)
            if fallback is not None:
                return fallback
        return UNK_ID

    def featurize(
        self,
        timeline: PatientTimeline,
        cutoff: float,
        encounter_id: str | None = None,
        known_dx: list[str] | None = None,
        max_notes: int | None = None,
    ) -> LiveHistory:
        """Inputs strictly before `cutoff`, minus anything recorded at `encounter_id` (the current one)."""
        past = timeline.before(cutoff, exclude_encounter=encounter_id)
        order = sorted(timeline.encounters, key=lambda k: timeline.encounters[k].start)
        visits = {eid: i for i, eid in enumerate(order)}
        events = past.events
        notes = [n for n in past.notes if n.text.strip()] if self.notes is not None else []
        if max_notes is not None:  # only the most recent notes can enter the input: tokenise just those
            notes = notes[max(0, len(notes) - max_notes) :] if max_notes else []
        tokens = np.asarray([self.event_token_id(e) for e in events], dtype=np.int64)
        bins = np.asarray(
            [
                value_bin(e.value, self.value_bins.get(e.token))
                if e.value is not None and e.kind is EventKind.OBSERVATION
                else 0
                for e in events
            ],
            dtype=np.int64,
        )
        history = History(
            cutoff=cutoff,
            birth_time=timeline.birth_time,
            event_time=np.asarray([e.time for e in events], dtype=np.float64),
            event_token=tokens,
            event_kind=np.asarray([int(e.kind) for e in events], dtype=np.int64),
            event_value_bin=bins,
            event_visit=np.asarray([visits.get(e.encounter or "", -1) for e in events], dtype=np.int64),
            note_time=np.asarray([n.time for n in notes], dtype=np.float64),
            note_pieces=[
                np.asarray(self.notes.encode(n.text, self.config.max_note_pieces), dtype=np.int64)
                for n in notes
                if self.notes is not None
            ],
            sex=timeline.sex,
            encounter_class=timeline.encounters[encounter_id].class_code
            if encounter_id in timeline.encounters
            else None,
        )
        known = [self.token_id(t) for t in (known_dx or [])[: self.config.max_known_dx]]  # training's cap
        return LiveHistory(history, events, notes, known)
