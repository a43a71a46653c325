"""Words the scenario format, the policy and the kernel share (one definition each)."""

from __future__ import annotations

#: FHIR R4 REST interactions a policy pair can name (the kernel's interaction codes follow this order).
INTERACTIONS = ("read", "vread", "search", "create", "update", "delete", "history")
#: What enforcement does when an agent leaves its envelope (docs/enforcement.md).
RESPONSES = ("deny", "kill", "quarantine", "alert", "observe")
