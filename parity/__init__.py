"""paritybed.parity: is the staging-built envelope good enough to enforce in production?

Learns each agent's envelope from the staging trace and compiles it into ``policy.json``
(``envelope``, ``compile``), replays production under it (``replay``), summarises each arm into a
de-identified profile (``profile``, also from a FHIR AuditEvent export: ``auditevent``), scores the
three criteria (``criteria``), and writes the verdict, report, plots and audit artefacts
(``evaluate``).  Public names are imported lazily so ``import paritybed.parity`` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "policy_from_trace": "paritybed.parity.compile",
    "compile_policy": "paritybed.parity.compile",
    "Margins": "paritybed.parity.compile",
    "learn_envelope": "paritybed.parity.envelope",
    "Envelope": "paritybed.parity.envelope",
    "evaluate": "paritybed.parity.evaluate",
    "Verdict": "paritybed.parity.evaluate",
    "replay": "paritybed.parity.replay",
    "Profile": "paritybed.parity.profile",
    "profile_from_trace": "paritybed.parity.profile",
    "load_profile": "paritybed.parity.profile",
    "criteria": "paritybed.parity.criteria",
    "Criteria": "paritybed.parity.criteria",
    "auditevents_from_trace": "paritybed.parity.auditevent",
    "profile_from_auditevents": "paritybed.parity.auditevent",
    "run_gate": "paritybed.parity.gate",
    "verify_log": "paritybed.parity.auditlog",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'paritybed.parity' has no attribute {name!r}")
    return getattr(import_module(mod), name)
