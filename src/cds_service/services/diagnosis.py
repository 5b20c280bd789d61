"""Diagnosis suggestions on patient-view and encounter-start: what the model finds that the record lacks.

Conditions already on the record (and valid) are excluded from the job, so a suggestion is always
news. Both hooks open a visit, before any order is drafted, so they also precompute (in the background)
the medication job the order hooks will ask for next, and those answers come from the cache.
"""

from __future__ import annotations

import time

from cds_service.core.settings import Settings
from cds_service.fhir.elements import condition_tokens
from cds_service.hooks.prefetch import PatientData
from cds_service.hooks.wire import PatientContext
from cds_service.ml.contract import ScoringJob
from cds_service.services.answer import HookAnswerer, HookCall
from cds_service.services.treatment import medication_job


def diagnosis_job(context: PatientContext, data: PatientData, settings: Settings) -> ScoringJob:
    return ScoringJob(
        head="diagnosis",
        patient_id=context.patientId,
        resources=data.resources,
        cutoff=time.time(),
        encounter_id=context.encounterId,
        exclude=condition_tokens(data.resources),
        max_findings=settings.max_cards,
        min_probability=settings.min_card_probability,
    )


async def suggest_diagnoses(answerer: HookAnswerer, call: HookCall) -> None:
    """The diagnosis services' handler: model cards, then the order hooks' job precomputed."""
    result = await answerer.score(call, diagnosis_job(call.context, call.data, answerer.settings))
    if result is not None:
        answerer.model_cards(call, result)
    answerer.precompute(medication_job(call.context, call.data, answerer.settings))
