"""Exceptions raised by cds-service, one tree so callers can catch at the right depth.

CdsError
├── FhirInputError         input FHIR data cannot be read at all (bad JSON, empty file, wrong shape)
│   └── UnsupportedFhirVersion   a resource from another FHIR version (e.g. DSTU2 MedicationOrder)
├── DatasetError           a dataset directory is missing files or has an unknown format version
├── FhirFetchError         the EHR's FHIR server could not give us the data (hook answers 412 if needed)
├── PrefetchUnavailable    data a service needs is neither prefetched nor fetchable (412)
├── DeadlineMissed         model work ran out of the request's time budget (answer without it)
└── AuthError              the CDS client's JWT is missing or invalid (a bare 401)
"""

from __future__ import annotations


class CdsError(Exception):
    """Base of every error cds-service raises on purpose."""


class FhirInputError(CdsError):
    """FHIR input that cannot be read; the message says what and where, never the patient's data."""


class UnsupportedFhirVersion(FhirInputError):
    """A resource type that exists only in another FHIR version."""


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


class AuthError(CdsError):
    """A JWT failed verification; the reason is logged, the client sees only 401."""
