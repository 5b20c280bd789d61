"""FHIR R4 input: lenient file reading, element access, note decoding, grouping by patient."""
