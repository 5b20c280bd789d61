"""The evidence behind each finding, for the physician reading the card.

Evidence: captum's InputXGradient on the summed input embeddings (one backward pass for all explained
labels, one batch row per label), summed per source FHIR resource or note. When the model has a wide
(bag-of-codes) branch, its logit is exactly linear in the code counts: each code's contribution is
split over the events it counts and added to their sources. The top sources of each label are then
confirmed by deletion: the positions of that source are masked out, its events leave the code counts,
and the label is re-scored in one batch; `drop` is how much the calibrated probability fell without it.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from captum.attr import InputXGradient

from cds_service.ml.contract import EvidenceItem, Finding
from cds_service.ml.features import WideSpace, pad_batch, wide_event_contributions, wide_features
from cds_service.serving.scorer import PatientScorer, PatientScores
from cds_service.timeline.events import Event, Note

QUOTE_PIECES = 16  # note pieces per quoted passage


def snap_to_words(passage: str, text: str) -> str:
    """The passage as it stands in the note, widened to whole words, with an ellipsis where it is cut.

    Pieces decode to the model's view of the text, which can start or end inside a word."""
    flat = " ".join(text.split())
    at = flat.find(" ".join(passage.split()))
    if at < 0:
        return passage
    end = at + len(" ".join(passage.split()))
    start = flat.rfind(" ", 0, at) + 1 if at > 0 and flat[at - 1] != " " else at
    if end < len(flat) and flat[end] != " ":
        space = flat.find(" ", end)
        end = len(flat) if space < 0 else space
    return ("…" if start > 0 else "") + flat[start:end] + ("…" if end < len(flat) else "")


class Explainer:
    """Evidence for the chosen labels of one scored patient (the module docstring says how)."""

    def __init__(self, scorer: PatientScorer) -> None:
        self.scorer = scorer
        self.predictor = scorer.predictor
        self.model = scorer.model

    def explain(
        self, scores: PatientScores, head: str, labels: list[int], top: int = 5, confirm: int = 2
    ) -> list[Finding]:
        """Findings for `labels` of `head`, each with its top evidence; the top `confirm` checked by deletion."""
        if not labels:
            return []
        per_position = self._attributions(scores, head, labels)
        findings = []
        for row, label in enumerate(labels):
            wide_share = self._wide_shares(scores, head, label)
            meta = self.predictor.labels[head][label]
            findings.append(
                Finding(
                    head,
                    label,
                    str(meta["token"]),
                    str(meta.get("display", meta["token"])),
                    float(scores.probabilities[head][label]),
                    float(self.predictor.thresholds[head][label]),
                    self._evidence(scores, per_position[row], wide_share)[:top],
                )
            )
        self._confirm(scores, findings, confirm)
        return findings

    def _attributions(self, scores: PatientScores, head: str, labels: list[int]) -> npt.NDArray[np.float32]:
        batch, known = self.scorer.batch(scores, len(labels))
        self.model.eval()
        embeds = self.model.embed(batch).detach().requires_grad_()

        def forward(inputs_embeds: torch.Tensor) -> torch.Tensor:
            out = self.model(batch, known, inputs_embeds=inputs_embeds)
            logits: torch.Tensor = out.dx_logits if head == "diagnosis" else out.med_logits
            return logits

        with torch.enable_grad():
            attr = InputXGradient(forward).attribute(embeds, target=labels)
        result: npt.NDArray[np.float32] = attr.sum(-1).detach().float().cpu().numpy()
        return result

    @property
    def _wide_space(self) -> WideSpace | None:
        return self.predictor.wide_space

    def _wide_shares(self, scores: PatientScores, head: str, label: int) -> npt.NDArray[np.float32] | None:
        """Per history event: its share of the wide branch's logit for `label` (None without the branch)."""
        wide = self._wide_space
        if wide is None or self.model.wide is None:
            return None
        column = label if head == "diagnosis" else self.model.config.n_diagnoses + label
        weights = self.model.wide.weight[:, column].detach().float().cpu().numpy()
        logits = np.zeros(wide.size, dtype=np.float32)
        ids, values = scores.features["wide_ids"], scores.features["wide_values"]
        logits[ids] = weights[ids] * values
        return wide_event_contributions(scores.live.history, wide, logits)

    def _source_of(self, scores: PatientScores, position: int) -> tuple[str, Event | Note] | None:
        index = scores.positions[position]
        if index >= 0:
            event = scores.live.events[index]
            return event.source, event
        if index <= -2:
            note = scores.live.notes[-2 - index]
            return note.source, note
        return None

    def _evidence(
        self,
        scores: PatientScores,
        attribution: npt.NDArray[np.float32],
        wide_share: npt.NDArray[np.float32] | None = None,
    ) -> list[EvidenceItem]:
        totals: dict[str, float] = defaultdict(float)
        items: dict[str, Event | Note] = {}
        for position in range(len(scores.positions)):
            found = self._source_of(scores, position)
            if found is not None:
                totals[found[0]] += float(attribution[position])
                items[found[0]] = found[1]
        if wide_share is not None:
            for index in np.flatnonzero(wide_share):
                event = scores.live.events[int(index)]
                totals[event.source] += float(wide_share[index])
                items.setdefault(event.source, event)
        positive = sum(v for v in totals.values() if v > 0)
        ranked = sorted((s for s in totals if totals[s] > 0), key=lambda s: -totals[s])
        out = []
        for source in ranked:
            item = items[source]
            if isinstance(item, Note):
                out.append(
                    EvidenceItem(
                        source,
                        item.title or "Clinical note",
                        item.time,
                        totals[source] / positive,
                        self._quote(scores, attribution, source),
                    )
                )
            else:
                out.append(EvidenceItem(source, item.display, item.time, totals[source] / positive))
        return out

    def _quote(self, scores: PatientScores, attribution: npt.NDArray[np.float32], source: str) -> str | None:
        """The window of note pieces with the largest attribution, decoded back to text."""
        tokenizer = self.predictor.note_tokenizer
        positions = [p for p in range(len(scores.positions)) if (f := self._source_of(scores, p)) and f[0] == source]
        if tokenizer is None or not positions:
            return None
        window = min(QUOTE_PIECES, len(positions))
        sums = np.convolve(attribution[positions], np.ones(window), mode="valid")
        start = int(np.argmax(sums))
        ids = scores.features["input_ids"][positions[start : start + window]] - self.predictor.space.note_offset
        text = tokenizer.decode([int(i) for i in ids]).strip()
        note = self._source_of(scores, positions[0])
        if text and note is not None and isinstance(note[1], Note):
            text = snap_to_words(text, note[1].text)
        return text or None

    @torch.no_grad()
    def _confirm(self, scores: PatientScores, findings: list[Finding], confirm: int) -> None:
        # One re-scored row per distinct source: deleting a source changes every label at once, and the
        # same record is often top evidence for several findings.
        sources = list(dict.fromkeys(item.source for f in findings for item in f.evidence[:confirm]))
        if not sources:
            return
        row_of = {source: row for row, source in enumerate(sources)}
        batch, known = self.scorer.batch(scores, len(sources))
        for position in range(len(scores.positions)):
            found = self._source_of(scores, position)
            if found is not None and found[0] in row_of:
                batch["attention_mask"][row_of[found[0]], position] = 0
        wide = self._wide_space
        if wide is not None:  # the deleted source's events leave the code counts too
            event_sources = np.asarray([e.source for e in scores.live.events], dtype=object)
            rows: list[dict[str, npt.NDArray[Any]]] = []
            for source in sources:
                ids, values = wide_features(scores.live.history, wide, np.flatnonzero(event_sources == source))
                rows.append({"wide_ids": ids, "wide_values": values})
            padded = pad_batch(rows)
            device = self.predictor.device
            batch["wide_ids"] = torch.from_numpy(padded["wide_ids"]).to(device)
            batch["wide_values"] = torch.from_numpy(padded["wide_values"]).to(device)
        out = self.model(batch, known)
        without = {
            "diagnosis": self.predictor.calibrate("diagnosis", out.dx_logits),
            "medication": self.predictor.calibrate("medication", out.med_logits),
        }
        for finding in findings:
            for item in finding.evidence[:confirm]:
                item.drop = finding.probability - float(without[finding.head][row_of[item.source], finding.label])
