"""`GET /cds-services`: the discovery document, generated from the service registry.

Generated, never written by hand, so that what an EHR is told to prefetch is exactly what the
services read.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from cds_service.hooks.wire import Discovery, dump
from cds_service.services.registry import discovery

router = APIRouter(tags=["CDS Hooks"])


@router.get("/cds-services", response_model=Discovery, response_model_exclude_none=True)
async def discover() -> dict[str, Any]:
    return dump(discovery())
