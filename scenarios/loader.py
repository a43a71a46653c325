"""Loading a scenario: read the file and its ``extends:`` chain, validate, check references, and
resolve relative folders; the content hash a verdict names its input by; the merged document
``paritybed validate --show`` prints.  Nothing else parses scenario YAML."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from paritybed.scenarios.arms import ARM_NAMES
from paritybed.scenarios.base import ScenarioError
from paritybed.scenarios.population import PopulationSettings
from paritybed.scenarios.problems import error_items, problem_lines
from paritybed.scenarios.scenario import Scenario
from paritybed.scenarios.source import Source, read_source


def load_scenario(path: str | Path) -> Scenario:
    """Parse and validate a scenario YAML (and the files it extends).  Raises ScenarioError naming
    file:line:col, the field path, what was expected and what was found, for every problem at
    once (``.problems``)."""
    src = read_source(path)
    try:
        sc = Scenario.model_validate(src.data, context={"defer_references": True})
    except ValidationError as e:
        lines = problem_lines(src, error_items(e))
        raise ScenarioError("invalid scenario\n  " + "\n  ".join(lines), problems=lines) from None
    refs = sc.reference_problems()
    if refs:
        lines = problem_lines(src, refs)
        raise ScenarioError("invalid scenario\n  " + "\n  ".join(lines), problems=lines)
    return _absolute_folders(sc, src)


def _absolute_folders(sc: Scenario, src: Source) -> Scenario:
    """Population folders are relative to the file that wrote them (the scenario or a parent):
    resolve them once, here."""

    def fix(pop: PopulationSettings | None, path: tuple[str, ...]) -> PopulationSettings | None:
        if pop is None or pop.folder is None or Path(pop.folder).is_absolute():
            return pop
        base = src.written_in(path + ("folder",)).parent
        return PopulationSettings(folder=str((base / pop.folder).resolve()))

    arms = sc.arms.model_copy(update={
        a: getattr(sc.arms, a).model_copy(update={"population": fix(getattr(sc.arms, a).population,
                                                                       ("arms", a, "population"))})
        for a in ARM_NAMES
    })
    return sc.model_copy(update={"population": fix(sc.population, ("population",)), "arms": arms})


def scenario_hash(path: str | Path) -> str:
    """sha256 of the scenario file's bytes, followed by those of each file it extends: recorded in
    parity.json and the policy so a verdict names its input (a file that extends nothing: the
    hash of its bytes alone)."""
    h = hashlib.sha256()
    for i, f in enumerate(read_source(path).files.values()):
        if i:
            h.update(b"\0")
        h.update(f.read_bytes())
    return "sha256:" + h.hexdigest()


def merged_yaml(path: str | Path) -> str:
    """The document a scenario amounts to once its ``extends:`` chain is merged, as YAML, headed
    by the files it came from (``paritybed validate --show``)."""
    from ruamel.yaml import YAML

    src = read_source(path)
    buf = io.StringIO()
    buf.write("".join(f"# from {shown}\n" for shown in src.files))
    y = YAML(typ="safe", pure=True)
    y.default_flow_style = None
    y.sort_base_mapping_type_on_output = False
    y.width = 120
    y.dump(_plain(src.data), buf)
    return buf.getvalue()


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node
