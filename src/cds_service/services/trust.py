"""What a model suggestion must pass before a physician sees it.

The model's probability is not enough: on records unlike its training data it is confidently wrong, and
its evidence can point at records that do not move it. Each gate withholds a suggestion rather than show a
doubtful one (silence beats a wrong card), and every withheld suggestion is counted by gate in the metrics
(`cds_model_suggestions_withheld_total`) and in the audit record (`withheld`):

1. `unfamiliar:<check>`: the familiarity guard (`ml.familiarity`) judged the record unlike the training
   data; no model card at all, and the answer's reason is `unfamiliar-record` (`HookAnswerer.score`).
2. `weak-evidence`: leaving out the suggestion's top evidence record (deletion check) lowers its probability
   by less than `CDS_MIN_EVIDENCE_DROP`: the evidence shown would not explain the suggestion.
3. `no-indication` (medications): the record holds no active condition that the cited indication table
   (`drugs.indications`) lists for the drug. A shown recommendation names its indication.

The drug layer's filters (no major interaction with an active drug, a draft or another suggestion; no class
duplicate; no allergen or its class) run before these, in `ml.recommend.choose` and
`services.treatment.against_drafts`. Probabilities are shown capped (`cards.render.shown_probability`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from cds_service.core.telemetry import WITHHELD
from cds_service.fhir.elements import Resource
from cds_service.ml.contract import Finding
from cds_service.safety.indications import indication_for

log = logging.getLogger(__name__)


def evidence_holds(finding: Finding, min_drop: float) -> bool:
    """The top evidence record (by attribution share) was confirmed by deletion to move the probability by
    at least `min_drop`. Unconfirmed evidence (no deletion check ran) does not hold."""
    if not finding.evidence:
        return False
    top = max(finding.evidence, key=lambda e: e.share)
    return top.drop is not None and top.drop >= min_drop


def with_indication(finding: Finding, resources: Sequence[Resource]) -> Finding | None:
    """The medication finding with its indication attached, or None when the record holds none."""
    rxcui = finding.token.removeprefix("RXNORM/") if finding.token.startswith("RXNORM/") else None
    found = indication_for(finding.display, resources, rxcui)
    if found is None:
        return None
    finding.indication = {
        "reference": found.reference,
        "display": found.display,
        "recorded": found.recorded.date().isoformat() if found.recorded else None,
        "rule": found.rule_id,
        "citation": found.citation,
    }
    return finding


def trusted_findings(
    service_id: str, findings: Sequence[Finding], resources: Sequence[Resource], min_drop: float
) -> tuple[list[Finding], list[str]]:
    """(the findings that pass every gate, in order; one gate name per withheld finding)."""
    shown: list[Finding] = []
    withheld: list[str] = []
    for finding in findings:
        reason = None
        if not evidence_holds(finding, min_drop):
            reason = "weak-evidence"
        elif finding.head == "medication" and with_indication(finding, resources) is None:
            reason = "no-indication"
        if reason is None:
            shown.append(finding)
            continue
        withheld.append(reason)
        WITHHELD.labels(service=service_id, reason=reason).inc()
    if withheld:
        log.info("%s: withheld %d model suggestion(s): %s", service_id, len(withheld), ", ".join(withheld))
    return shown, withheld
