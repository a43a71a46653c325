"""paritybed: a simulation and staging-parity testbed for AI agents that touch patient data.

The data flows one way: scenario -> simulation (``paritybed.sim``) -> agents
(``paritybed.agents``) -> enforcement (``paritybed.enforcer`` + ``bpf/``) -> trace -> parity
(``paritybed.parity``) -> artefacts.  This top-level package owns the CLI and the run
orchestration that wires the parts together.
"""

__version__ = "0.1.0"
