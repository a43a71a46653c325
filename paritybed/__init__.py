"""paritybed: a simulation and staging-parity testbed for AI agents that touch patient data.

The package is layered, imports only downward (docs/architecture.md): foundations
(``paritybed.core``) -> the scenario format (``paritybed.scenarios``) -> ``paritybed.fhir`` and
``paritybed.enforcer`` -> ``paritybed.agents`` -> ``paritybed.sim`` -> ``paritybed.parity`` -> the
CLI and the run pipeline, which are the modules of this top-level package.
"""

from importlib.metadata import version

__version__ = version("paritybed")  # pyproject.toml is the one place the version is written
