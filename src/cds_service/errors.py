"""Exceptions raised by cds-service, one tree so callers can catch at the right depth.

CdsError
├── FhirInputError         input FHIR data cannot be read at all (bad JSON, empty file, wrong shape)
│   └── UnsupportedFhirVersion   a resource from another FHIR version (e.g. DSTU2 MedicationOrder)
└── DatasetError           a dataset directory is missing files or has an unknown format version
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
