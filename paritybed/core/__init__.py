"""Foundations every layer stands on: errors and exit codes, JSON artefact loading, hash-chained
logs, time units, the run's clock, seeded draws and the worker pipe protocol.

Nothing here imports another part of paritybed (docs/architecture.md): the scenario format,
fhir/, enforcer/, agents/, sim/, parity/ and the CLI all import downward into this package.
"""
