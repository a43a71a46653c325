"""Words the scenario format, the policy and the kernel share (one definition each)."""

from __future__ import annotations

#: FHIR R4 REST interactions a policy pair can name (the kernel's interaction codes follow this order).
INTERACTIONS = ("read", "vread", "search", "create", "update", "delete", "history")
#: What enforcement does when an agent leaves its envelope (docs/enforcement.md).
RESPONSES = ("deny", "kill", "quarantine", "alert", "observe")
#: Why a request, connect or activation was decided so: the kernel's reason codes in order (R_* in
#: bpf/paritybed.h; enforcer/kernel_abi.py mirrors them and tests hold the two equal).  The names
#: after ``unclassifiable`` are the control plane's own or the replay's: lane and launch-context
#: activations, an agent without a policy.
REASONS = ("", "observe", "lane", "type-not-in-envelope", "rate-exceeded", "egress-not-in-BAA",
           "egress-not-in-envelope", "quarantined", "lane-expired", "unclassifiable", "lane-not-in-envelope",
           "lane-opened", "unenforced", "out-of-context", "new-patient-budget", "context-opened",
           "context-not-in-envelope")
