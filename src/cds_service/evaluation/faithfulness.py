"""Faithfulness of the evidence (after ERASER, DeYoung et al., ACL 2020): does what a card would cite as
evidence carry its prediction?

For test samples with a shown label (the most likely label above its threshold), the label's logit is
attributed as serving attributes it (`serving.explain`): captum's InputXGradient on the summed input
embeddings (`model.embed(batch)` passed as `inputs_embeds`), summed per source, plus, for a model with a
wide branch, each event's exact share of the wide logit. Dataset histories have no FHIR resource ids, so
a source here is one visit: every event of one `History.event_visit` and the notes of that visit (the
dataset's `note_visit`); events and notes outside any visit form one more source. Sources are ranked by
their summed attribution, and those with a positive total are the evidence a card would list. Then

    comprehensiveness@k = p(full) - p(the history without the top k sources)   high: the evidence is needed
    sufficiency@k       = p(full) - p(the history of the top k sources alone)  low: the evidence is enough

with p the calibrated probability (`Predictor.calibrate`). A source is removed by dropping its events and
notes from the `History` (so from the wide branch's code counts too) and re-encoding with
`ml.features.encode`: older events then move into the encoder's window, as they would in a record that
lacked the visit. The control: as many sources drawn at random (seeded) from all of the sample's sources.
A label with fewer than k positive sources uses the ones it has (none: nothing removed, so
comprehensiveness 0 and sufficiency p(full) - p(empty history)).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from captum.attr import InputXGradient

from cds_service.core.settings import Settings
from cds_service.data.dataset import Dataset
from cds_service.data.note_tokenizer import NOTE_MODEL_FILE
from cds_service.evaluation.cards import MIN_CARD_PROBABILITY
from cds_service.ml.artifacts import Predictor, file_digest
from cds_service.ml.features import (
    History,
    encode,
    history_from_dataset,
    known_dx_matrix,
    pad_batch,
    wide_event_contributions,
    wide_features,
)
from cds_service.ml.modeling import ModelOutput
from cds_service.ml.tensors import to_tensors

Array = npt.NDArray[Any]
KS = (1, 3)
NO_VISIT = -1  # the source of events and notes outside any visit
# The service's default `CDS_MIN_EVIDENCE_DROP`: a card is withheld unless leaving out its top evidence
# lowers its probability by at least this much.
MIN_EVIDENCE_DROP = float(Settings.model_fields["min_evidence_drop"].default)


@dataclass
class Case:
    """One shown label of one dataset sample: the sample's history (in the model's vocabulary) and the
    source (visit) of each of its events and notes."""

    sample: int
    label: int
    history: History
    known: npt.NDArray[np.int64]  # the encounter's known diagnoses (model code ids, 0-padded): kept fixed
    event_source: npt.NDArray[np.int64]
    note_source: npt.NDArray[np.int64]

    @property
    def sources(self) -> npt.NDArray[np.int64]:
        return np.unique(np.concatenate([self.event_source, self.note_source]))


def select_sources(case: Case, sources: Iterable[int], keep: bool) -> History:
    """The case's history with only `sources` (keep=True) or without them (keep=False)."""
    chosen = np.asarray(list(sources), dtype=np.int64)
    events = np.isin(case.event_source, chosen) == keep
    notes = np.isin(case.note_source, chosen) == keep
    h = case.history
    return replace(
        h,
        event_time=h.event_time[events],
        event_token=h.event_token[events],
        event_kind=h.event_kind[events],
        event_value_bin=h.event_value_bin[events],
        event_visit=h.event_visit[events],
        note_time=h.note_time[notes],
        note_pieces=[pieces for pieces, kept in zip(h.note_pieces, notes, strict=True) if kept],
    )


def ranked_evidence(totals: dict[int, float]) -> list[int]:
    """Sources with a positive total attribution, largest first: the evidence a card would list."""
    return sorted((s for s, v in totals.items() if v > 0), key=lambda s: (-totals[s], s))


@dataclass
class CaseFigures:
    sample: int
    label: int
    p_full: float
    sources: int
    evidence: int  # sources with a positive total attribution
    comprehensiveness: dict[int, float] = field(default_factory=dict)  # by k
    sufficiency: dict[int, float] = field(default_factory=dict)
    comprehensiveness_random: dict[int, float] = field(default_factory=dict)
    sufficiency_random: dict[int, float] = field(default_factory=dict)
    used: dict[int, int] = field(default_factory=dict)  # sources removed or kept at each k


def _head_logits(out: ModelOutput, head: str) -> torch.Tensor:
    return out.dx_logits if head == "diagnosis" else out.med_logits


class Attributor:
    """Attribution and deletion re-scoring of dataset samples with a loaded model, encoded as batch
    scoring encodes them (`ml.batch.encode_dataset`: the model's vocabulary; notes only when the dataset
    was tokenised by the model's SentencePiece model)."""

    def __init__(self, predictor: Predictor, ds: Dataset, use_notes: bool = True) -> None:
        self.predictor = predictor
        self.model = predictor.model
        self.ds = ds
        self.code_map = predictor.code_map(ds.vocab)
        same_notes = file_digest(ds.path / NOTE_MODEL_FILE) == file_digest(predictor.model_dir / NOTE_MODEL_FILE)
        config = predictor.encode_config
        self.config = replace(config, note_tokens=config.note_tokens if use_notes and same_notes else 0)

    def case(self, sample: int, label: int) -> Case:
        h = history_from_dataset(self.ds, sample)
        h.event_token = self.code_map[h.event_token]
        known_ids = known_dx_matrix(self.ds, np.asarray([sample]), self.config.max_known_dx)[0]
        known = self.code_map[known_ids] * (known_ids > 0)
        return Case(sample, label, h, known, h.event_visit.astype(np.int64), self._note_visits(sample, h))

    def _note_visits(self, sample: int, h: History) -> npt.NDArray[np.int64]:
        """The visit of each of the history's notes (the rows `history_from_dataset` took, in its order)."""
        a = self.ds.arrays
        patient = int(a["sample_patient"][sample])
        rows = np.arange(int(a["patient_notes_offsets"][patient]), int(a["patient_notes_offsets"][patient + 1]))
        rows = rows[a["note_time"][rows] < float(a["sample_time"][sample])]
        if len(rows) != len(h.note_pieces):
            raise ValueError(f"sample {sample}: {len(rows)} note rows for {len(h.note_pieces)} notes")
        if "note_visit" not in a:
            return np.full(len(rows), NO_VISIT, dtype=np.int64)
        visits: npt.NDArray[np.int64] = np.maximum(a["note_visit"][rows].astype(np.int64), NO_VISIT)
        return visits

    def _batch(
        self, histories: list[History], known: list[npt.NDArray[np.int64]]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, list[list[int]]]:
        encoded = [encode(h, self.predictor.space, self.config) for h in histories]
        device = self.predictor.device
        batch = to_tensors(pad_batch([features for features, _ in encoded]), device)
        known_t = torch.from_numpy(np.stack(known).astype(np.int64)).to(device)
        return batch, known_t, [positions for _, positions in encoded]

    @torch.no_grad()
    def probabilities(
        self, head: str, histories: list[History], known: list[npt.NDArray[np.int64]], labels: list[int], rows: int = 64
    ) -> npt.NDArray[np.float32]:
        """Calibrated probability of `labels[i]` given `histories[i]`, for each i."""
        self.model.eval()
        out: list[npt.NDArray[np.float32]] = []
        for start in range(0, len(histories), rows):
            batch, known_t, _ = self._batch(histories[start : start + rows], known[start : start + rows])
            p = self.predictor.calibrate(head, _head_logits(self.model(batch, known_t), head).float())
            picked = p[torch.arange(len(p)), torch.as_tensor(labels[start : start + rows], device=p.device)]
            out.append(picked.cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def source_attributions(self, head: str, cases: list[Case]) -> list[dict[int, float]]:
        """Per case, the summed attribution of each source to its label's logit (serving's method)."""
        batch, known_t, positions = self._batch([c.history for c in cases], [c.known for c in cases])
        self.model.eval()
        embeds = self.model.embed(batch).detach().requires_grad_()

        def forward(inputs_embeds: torch.Tensor) -> torch.Tensor:
            return _head_logits(self.model(batch, known_t, inputs_embeds=inputs_embeds), head)

        with torch.enable_grad():
            attr = InputXGradient(forward).attribute(embeds, target=[c.label for c in cases])
        per_position = attr.sum(-1).detach().float().cpu().numpy()
        out = []
        for row, case in enumerate(cases):
            totals: dict[int, float] = defaultdict(float)
            for position, index in enumerate(positions[row]):
                if index >= 0:
                    totals[int(case.event_source[index])] += float(per_position[row, position])
                elif index <= -2:
                    totals[int(case.note_source[-2 - index])] += float(per_position[row, position])
            shares = self.wide_shares(head, case)
            if shares is not None and len(shares):
                sources, inverse = np.unique(case.event_source, return_inverse=True)
                for source, share in zip(sources, np.bincount(inverse, weights=shares), strict=True):
                    totals[int(source)] += float(share)
            out.append(dict(totals))
        return out

    def wide_shares(self, head: str, case: Case) -> npt.NDArray[np.float32] | None:
        """Per history event, its share of the wide branch's logit for the case's label (serving's split)."""
        wide, layer = self.predictor.wide_space, self.model.wide
        if wide is None or layer is None:
            return None
        column = case.label if head == "diagnosis" else self.model.config.n_diagnoses + case.label
        weights = layer.weight[:, column].detach().float().cpu().numpy()
        ids, values = wide_features(case.history, wide)
        logits = np.zeros(wide.size, dtype=np.float32)
        logits[ids] = weights[ids] * values
        return wide_event_contributions(case.history, wide, logits)

    def figures(self, head: str, cases: list[Case], rng: np.random.Generator) -> list[CaseFigures]:
        """Comprehensiveness and sufficiency at each k of `KS`, for the ranked evidence and for as many
        random sources, of each case (one attribution pass, then one batched re-scoring)."""
        if not cases:
            return []
        totals = self.source_attributions(head, cases)
        histories: list[History] = []
        plans: list[list[tuple[str, int]]] = []
        used: list[dict[int, int]] = []
        for case, total in zip(cases, totals, strict=True):
            evidence = ranked_evidence(total)
            shuffled = [int(s) for s in rng.permutation(case.sources)]
            plan = [("full", 0)]
            histories.append(case.history)
            counts = {}
            for k in KS:
                n = min(k, len(evidence))
                counts[k] = n
                for kind, chosen in (("top", evidence[:n]), ("random", shuffled[:n])):
                    histories += [select_sources(case, chosen, keep=False), select_sources(case, chosen, keep=True)]
                    plan += [(f"without_{kind}", k), (f"only_{kind}", k)]
            plans.append(plan)
            used.append(counts)
        per_row = [c for case, plan in zip(cases, plans, strict=True) for c in [case] * len(plan)]
        p = self.probabilities(head, histories, [c.known for c in per_row], [c.label for c in per_row])
        out, at = [], 0
        for case, plan, total, counts in zip(cases, plans, totals, used, strict=True):
            values = dict(zip(plan, p[at : at + len(plan)].tolist(), strict=True))
            at += len(plan)
            full = values[("full", 0)]
            figures = CaseFigures(
                case.sample, case.label, full, len(case.sources), len(ranked_evidence(total)), used=counts
            )
            for k in KS:
                figures.comprehensiveness[k] = full - values[("without_top", k)]
                figures.sufficiency[k] = full - values[("only_top", k)]
                figures.comprehensiveness_random[k] = full - values[("without_random", k)]
                figures.sufficiency_random[k] = full - values[("only_random", k)]
            out.append(figures)
        return out


def shown_labels(p: Array, thresholds: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Per row, the most likely label above its threshold (-1 where none is)."""
    p = np.asarray(p, dtype=np.float32)
    above = p >= np.asarray(thresholds, dtype=p.dtype)
    best = np.argmax(np.where(above, p, -np.inf), axis=1)
    out: npt.NDArray[np.int64] = np.where(above.any(1), best, -1).astype(np.int64)
    return out


def faithfulness(
    predictor: Predictor,
    ds: Dataset,
    head: str,
    samples: Array,
    p: Array,
    thresholds: npt.ArrayLike,
    n_samples: int = 300,
    seed: int = 13,
    batch_size: int = 32,
) -> dict[str, Any]:
    """The faithfulness figures of `head` on up to `n_samples` of `samples` (dataset rows; `p` their
    calibrated probabilities in the model's label order), drawn (seeded) among those with a shown label;
    `at_card_probability`: the same figures for the labels also above the minimum card probability (those
    a card could show at the service's default)."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    labels = shown_labels(p, thresholds)
    eligible = np.flatnonzero(labels >= 0)
    drawn = np.sort(rng.choice(eligible, min(n_samples, len(eligible)), replace=False))
    attributor = Attributor(predictor, ds)
    records: list[CaseFigures] = []
    for at in range(0, len(drawn), batch_size):
        rows = drawn[at : at + batch_size]
        cases = [attributor.case(int(samples[r]), int(labels[r])) for r in rows]
        records += attributor.figures(head, cases, rng)
    return {
        "test_samples": len(samples),
        "samples_with_a_shown_label": len(eligible),
        **summarize(records),
        "at_card_probability": {
            "min_probability": MIN_CARD_PROBABILITY,
            **summarize([r for r in records if r.p_full >= MIN_CARD_PROBABILITY]),
        },
        "seconds": time.perf_counter() - start,
    }


def summarize(records: list[CaseFigures]) -> dict[str, Any]:
    def mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else float("nan")

    by_k = {
        str(k): {
            "comprehensiveness": mean([r.comprehensiveness[k] for r in records]),
            "comprehensiveness_random": mean([r.comprehensiveness_random[k] for r in records]),
            "sufficiency": mean([r.sufficiency[k] for r in records]),
            "sufficiency_random": mean([r.sufficiency_random[k] for r in records]),
            "sources_used": mean([float(r.used[k]) for r in records]),
        }
        for k in KS
    }
    first = KS[0]
    return {
        "labels_explained": len(records),
        "mean_probability": mean([r.p_full for r in records]),
        "sources_per_sample": mean([float(r.sources) for r in records]),
        "evidence_sources_per_sample": mean([float(r.evidence) for r in records]),
        "k": by_k,
        "min_evidence_drop": MIN_EVIDENCE_DROP,
        "share_top1_comprehensiveness_at_least_min_drop": mean(
            [float(r.comprehensiveness[first] >= MIN_EVIDENCE_DROP) for r in records]
        ),
        "share_random1_comprehensiveness_at_least_min_drop": mean(
            [float(r.comprehensiveness_random[first] >= MIN_EVIDENCE_DROP) for r in records]
        ),
    }


def markdown(figures: dict[str, Any]) -> list[str]:
    """`faithfulness` as a short Markdown table."""
    lines = [
        f"Faithfulness of the evidence ({figures['labels_explained']} shown top-1 labels, drawn among the "
        f"{figures['samples_with_a_shown_label']} of {figures['test_samples']} test samples with one; a source is "
        "a visit; differences of calibrated probability; random = as many random sources):",
        "",
        "| k | comprehensiveness | random | sufficiency | random |",
        "|---|---|---|---|---|",
    ]
    for k, row in figures["k"].items():
        lines.append(
            f"| {k} | {row['comprehensiveness']:+.3f} | {row['comprehensiveness_random']:+.3f} "
            f"| {row['sufficiency']:+.3f} | {row['sufficiency_random']:+.3f} |"
        )
    card = figures["at_card_probability"]
    drop = figures["min_evidence_drop"]
    lines += [
        "",
        f"Top-1 comprehensiveness at least {drop:g} (the service's evidence check): "
        f"{figures['share_top1_comprehensiveness_at_least_min_drop']:.3f} of labels "
        f"(one random source: {figures['share_random1_comprehensiveness_at_least_min_drop']:.3f}); "
        f"of the {card['labels_explained']} at p >= {card['min_probability']:g}: "
        f"{card['share_top1_comprehensiveness_at_least_min_drop']:.3f}.",
        "",
    ]
    return lines
