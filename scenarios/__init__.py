"""The scenario format (the project's input) and the scenario library (the YAML files here).

A scenario describes one run: the hospital, its patients, the agent fleet, the BAA registry, the
break-glass classes, the attacks, the two arms (production and staging) and the gate thresholds.
Every step reads the scenario, and nothing else parses its YAML.  The schema is split by
section (timing, population, hospital, workflows, fleet, events, baa, arms, gates; scenario.py
puts them together); source.py reads YAML with positions and ``extends:``; loader.py validates;
resolve.py fills in an arm.  Every field is documented in docs/scenarios.md.

This layer imports only paritybed.core (docs/architecture.md).
"""

from paritybed.scenarios.arms import ARM_NAMES, ArmOverrides
from paritybed.scenarios.base import ScenarioError
from paritybed.scenarios.events import Omission
from paritybed.scenarios.gates import Gate, PolicySettings
from paritybed.scenarios.loader import load_scenario, merged_yaml, scenario_hash
from paritybed.scenarios.population import PopulationSettings, SyntheaSettings
from paritybed.scenarios.resolve import ResolvedArm, resolve_arm, resolve_arms
from paritybed.scenarios.scenario import Scenario
from paritybed.scenarios.timing import At, Duration

__all__ = [
    "ARM_NAMES", "ArmOverrides", "At", "Duration", "Gate", "Omission", "PolicySettings", "PopulationSettings",
    "ResolvedArm", "Scenario", "ScenarioError", "SyntheaSettings", "load_scenario", "merged_yaml", "resolve_arm",
    "resolve_arms", "scenario_hash",
]
