"""cds-service: CDS Hooks decision support over FHIR R4 patient history and notes."""

__version__ = "0.1.0"
