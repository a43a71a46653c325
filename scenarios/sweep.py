"""The sweep spec: many runs of scenario variants, each a cell of a table (`paritybed sweep`).

A spec names base scenarios, seeds and variant axes written as overrides of the scenario by
dotted path (docs/sweeps.md)::

    name: calibration
    scenarios: [community-hospital-week]       # library names, or paths relative to this file
    seeds: 5                                    # or a list; N means 100, 200, ..., 100*N
    overrides: {duration.days: 7}               # applied to every cell (optional)
    variants:                                   # groups; a group is the product of its axes
      - arms.staging.volume_factor: [0.3, 0.6, 0.9, 1.2]
      - arms.staging.arrivals: [uniform]
        arms.staging.break_glass: [drill, "off"]
    noise: true                                 # staging-vs-staging cells (the noise baseline)

Every base scenario runs unchanged ("base") and with each combination of each group, for every
seed; a value is merged into the scenario exactly as ``extends:`` merges a variant (a mapping
merges key by key, anything else replaces).  Seeds are spaced 100 apart so that one cell's
production (seed s), staging (s + 1) and noise arm (s + 2) never meet another cell's.

Each cell becomes a scenario file of its own (``extends:`` the base, the seed, the overrides),
validated before anything runs: a value that makes an invalid scenario is an error naming the
spec's line and the scenario's problem.  The cell id hashes the base's bytes, the overrides and
the seed, so a rerun of the same spec finds the cells it already ran.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from paritybed.core.errors import InputError
from paritybed.scenarios.base import ScenarioError, Strict
from paritybed.scenarios.loader import load_scenario, scenario_hash
from paritybed.scenarios.problems import error_items, problem_lines
from paritybed.scenarios.scenario import Scenario
from paritybed.scenarios.source import LIBRARY, Source, library_names, read_yaml

PATH_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
RESERVED = ("seed", "extends", "name")  # set by the sweep itself
SEED_STEP = 100


def _check_path(p: str) -> str:
    if not PATH_RE.match(p):
        raise ValueError(f"expected a dotted field path such as arms.staging.volume_factor, found {p!r}")
    if p.split(".")[0] in RESERVED:
        raise ValueError(f"expected a scenario field other than {', '.join(RESERVED)} (the sweep sets those), "
                         f"found {p!r}")
    return p


class SweepSpec(Strict):
    name: str = Field(min_length=1)
    description: str = ""
    scenarios: list[str] = Field(min_length=1)
    seeds: int | list[int]
    overrides: dict[str, Any] = Field(default_factory=dict)
    variants: list[dict[str, list[Any]]] = Field(default_factory=list)
    noise: bool = True

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: int | list[int]) -> int | list[int]:
        if isinstance(v, int) and v < 1:
            raise ValueError(f"expected a count of at least 1 or a list of seeds, found {v}")
        if isinstance(v, list) and (not v or len(set(v)) != len(v)):
            raise ValueError("expected a non-empty list of distinct seeds")
        return v

    @field_validator("overrides")
    @classmethod
    def _overrides(cls, v: dict[str, Any]) -> dict[str, Any]:
        for p in v:
            _check_path(p)
        return v

    @field_validator("variants")
    @classmethod
    def _variants(cls, v: list[dict[str, list[Any]]]) -> list[dict[str, list[Any]]]:
        for group in v:
            if not group:
                raise ValueError("expected each variant group to name at least one axis")
            for p, values in group.items():
                _check_path(p)
                if not values:
                    raise ValueError(f"expected at least one value for {p}")
        return v

    def seed_list(self) -> list[int]:
        return list(self.seeds) if isinstance(self.seeds, list) else [SEED_STEP * k for k in range(1, self.seeds + 1)]


@dataclass(frozen=True)
class Cell:
    """One run of a sweep (``kind`` run) or one staging-vs-staging comparison (``kind`` noise)."""

    kind: str  # run | noise
    index: int  # order in the spec's expansion (the table's row order)
    base: Path  # the base scenario file (absolute)
    base_hash: str  # its bytes and those of every file it extends
    scenario: str  # the base scenario's name
    overrides: tuple[tuple[str, Any], ...]  # (dotted path, value), spec overrides then the variant's
    seed: int
    origin: tuple[tuple[str, str], ...] = field(default=(), compare=False)  # (spec file:line:col, path) per override
    shared: int = 0  # how many of the overrides come from the spec's ``overrides`` (every cell has them)

    @property
    def variant(self) -> str:
        """The overrides as canonical JSON ("{}" for the base scenario)."""
        return json.dumps(dict(self.overrides), sort_keys=True, separators=(",", ":"))

    @property
    def label(self) -> str:
        """A short name for people: the variant's own overrides (``arms.staging.volume_factor=0.3``),
        or ``base``."""
        own = self.overrides[self.shared:]
        return ", ".join(f"{p}={json.dumps(v, separators=(',', ':'))}" for p, v in own) or "base"

    @property
    def id(self) -> str:
        blob = json.dumps({"kind": self.kind, "base": self.base_hash, "overrides": self.variant, "seed": self.seed},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def scenario_yaml(self) -> str:
        """The cell's scenario file: extends the base, sets the seed, merges the overrides."""
        lines = [f"# paritybed sweep cell {self.id} ({self.kind}): {self.label}",
                 f"extends: {json.dumps(str(self.base))}", f"seed: {self.seed}"]
        for key, value in nest(dict(self.overrides)).items():
            lines.append(f"{key}: {json.dumps(value, sort_keys=False)}")
        return "\n".join(lines) + "\n"


def nest(overrides: dict[str, Any]) -> dict[str, Any]:
    """Dotted paths as nested mappings: {"arms.staging.x": 1} -> {"arms": {"staging": {"x": 1}}}."""
    out: dict[str, Any] = {}
    for path, value in overrides.items():
        node = out
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


@dataclass
class Sweep:
    spec: SweepSpec
    path: Path
    cells: list[Cell]


def _position(src: Source, loc: tuple[Any, ...]) -> str:
    pos = src.locate(loc)
    return "{}:{}:{}".format(*pos) if pos else str(src.files and next(iter(src.files)))


def _scenario_file(ref: str, spec: Path, where: str) -> Path:
    if "/" in ref or ref.endswith((".yaml", ".yml")):
        target = (spec.parent / ref).resolve()
    else:
        target = LIBRARY / f"{ref}.yaml"
    if not target.is_file():
        raise InputError(f"{where}: scenarios: expected a library scenario ({', '.join(library_names())}) or a path "
                         f"relative to the spec; found {ref!r} ({target} does not exist)")
    return target


def _conflicts(paths: list[str]) -> tuple[str, str] | None:
    for a, b in itertools.permutations(paths, 2):
        if b.startswith(a + "."):
            return a, b
    return None


def load_sweep(path: str | Path) -> Sweep:
    """Parse a sweep spec and expand it into cells (not yet validated as scenarios: ``validate``)."""
    src = read_yaml(path, "sweep spec")
    try:
        spec = SweepSpec.model_validate(src.data)
    except ValidationError as e:
        lines = problem_lines(src, error_items(e))
        raise ScenarioError("invalid sweep spec\n  " + "\n  ".join(lines), problems=lines) from None
    spec_path = Path(path)
    groups: list[list[tuple[tuple[str, Any], ...]]] = [[()]]  # the base scenario first
    origins: dict[str, tuple[tuple[str, str], ...]] = {"[]": ()}  # JSON of a combination -> (position, path)
    for g, group in enumerate(spec.variants):
        axes = list(group.items())
        combos = []
        for values in itertools.product(*(vals for _, vals in axes)):
            combo = tuple((p, v) for (p, _), v in zip(axes, values))
            combos.append(combo)
            origins.setdefault(json.dumps(combo), tuple((_position(src, ("variants", g, p)), p) for p, _ in axes))
        groups.append(combos)
    fixed = tuple(spec.overrides.items())
    fixed_origin = tuple((_position(src, ("overrides", p)), p) for p, _ in fixed)
    cells: list[Cell] = []
    seen: set[tuple[Any, ...]] = set()
    for i, ref in enumerate(spec.scenarios):
        where = _position(src, ("scenarios", i))
        base = _scenario_file(ref, spec_path, where)
        digest = scenario_hash(base)
        name = load_scenario(base).name
        for combo in (c for group in groups for c in group):
            paths = [p for p, _ in fixed if p not in dict(combo)] + [p for p, _ in combo]
            clash = _conflicts(paths)
            if clash:
                raise InputError(f"{(origins[json.dumps(combo)] + fixed_origin)[0][0]}: {clash[0]} and {clash[1]} both "
                                 "set in one cell: expected paths of which neither contains the other")
            shared = tuple((p, v) for p, v in fixed if p not in dict(combo))
            merged = shared + combo
            for seed in spec.seed_list():
                key = (digest, json.dumps(merged, sort_keys=True), seed)
                if key in seen:
                    continue
                seen.add(key)
                cells.append(Cell("run", len(cells), base, digest, name, merged, seed, fixed_origin + origins[json.dumps(combo)],
                                  len(shared)))
    if spec.noise:
        for i, ref in enumerate(spec.scenarios):
            base = _scenario_file(ref, spec_path, _position(src, ("scenarios", i)))
            digest, name = scenario_hash(base), load_scenario(base).name
            for seed in spec.seed_list():
                cells.append(Cell("noise", len(cells), base, digest, name, fixed, seed, fixed_origin, len(fixed)))
    return Sweep(spec=spec, path=spec_path, cells=cells)


def cell_file(folder: Path, cell: Cell) -> Path:
    return folder / f"{cell.id}.yaml"


def validate(sweep: Sweep, folder: Path) -> dict[str, Scenario]:
    """Write each cell's scenario file into ``folder`` and load every distinct variant once
    (cell id -> Scenario for all cells).  A variant that does not validate is an InputError naming
    the spec's lines that made it and the scenario's problems."""
    folder.mkdir(parents=True, exist_ok=True)
    loaded: dict[tuple[str, str], Scenario] = {}
    out: dict[str, Scenario] = {}
    for cell in sweep.cells:
        path = cell_file(folder, cell)
        text = cell.scenario_yaml()
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        key = (cell.base_hash, cell.variant)
        if key not in loaded:
            try:
                loaded[key] = load_scenario(path)
            except ScenarioError as e:
                # the overrides whose path the scenario's problems name, else all of them
                named = [o for o in cell.origin if any(f": {o[1]}" in p for p in e.problems)] or list(cell.origin)
                where = "; ".join(f"{pos} ({path})" for pos, path in named) or str(sweep.path)
                raise InputError(f"{where}: {cell.label} makes an invalid {cell.scenario} scenario:\n  "
                                 + "\n  ".join(e.problems)) from None
        out[cell.id] = loaded[key].model_copy(update={"seed": cell.seed})
    return out
