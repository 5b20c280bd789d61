"""Exceptions raised by cds-service, one tree so callers can catch at the right depth.

CdsError
├── DatasetError           a dataset directory is missing files or has an unknown format version
├── FhirFetchError         the EHR's FHIR server could not give us the data (hook answers 412 if needed)
├── PrefetchUnavailable    data a service needs is neither prefetched nor fetchable (412)
├── DeadlineMissed         model work ran out of the request's time budget (answer without it)
├── InvalidRequest         a hook or feedback request breaks the spec; the message names the field (400)
├── UnknownService         no CDS service has the id the client called (404)
└── AuthError              the CDS client's JWT is missing or invalid (a bare 401)

The HTTP status of each is decided once, in `cds_service.api.errors`; code below the API raises these
and never thinks in status codes.
"""

from __future__ import annotations


class CdsError(Exception):
    """Base of every error cds-service raises on purpose."""


class DatasetError(CdsError):
    """A dataset directory that cannot be loaded."""


class FhirFetchError(CdsError):
    """The EHR's FHIR server failed, timed out or answered with something that is not FHIR."""


class PrefetchUnavailable(CdsError):
    """Required patient data is neither in prefetch nor obtainable from `fhirServer`."""

    def __init__(self, keys: list[str], reason: str) -> None:
        super().__init__(f"required data unavailable: {', '.join(keys)} ({reason})")
        self.keys = keys
        self.reason = reason


class DeadlineMissed(CdsError):
    """Model work did not finish before the request's deadline (the answer goes out without it)."""


class InvalidRequest(CdsError):
    """A request the spec does not allow; the message starts with the offending field ("context.patientId: ...")."""


class UnknownService(CdsError):
    """The client called a service id that discovery does not list."""

    def __init__(self, service_id: str) -> None:
        super().__init__(f"no CDS service named {service_id!r}")
        self.service_id = service_id


class AuthError(CdsError):
    """A JWT failed verification; the reason is logged, the client sees only 401."""
