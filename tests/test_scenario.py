"""The scenario schema: clear errors (file:line:col, field, expected, found), arms, the library,
and docs/scenarios.md documenting every field."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from paritybed import scenarios as S
from paritybed.scenarios import ScenarioError, load_scenario, resolve_arm

REPO = Path(__file__).resolve().parent.parent
LIBRARY = sorted((REPO / "scenarios").glob("*.yaml"))
PB = [sys.executable, "-P", "-m", "paritybed.cli"]

MINIMAL = """\
name: t
population:
  folder: pop
agents:
  - name: scribe
    class: ambient_scribe
"""


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ScenarioError) as e:
        load_scenario(write(tmp_path, text))
    return e.value.problems


def test_minimal_scenario_loads_with_defaults_and_resolves_relative_folder(tmp_path):
    sc = load_scenario(write(tmp_path, MINIMAL))
    assert sc.population.folder == str((tmp_path / "pop").resolve())
    assert sc.hospital.beds == 300 and sc.duration.total_ns() == 7 * 86400 * 10**9
    assert sc.agents[0].settings.usage == 0.35


def test_every_problem_is_reported_with_position_path_expected_and_found(tmp_path):
    text = MINIMAL.replace("    class: ambient_scribe\n", "    class: ambient_scribe\n    replicas: 0\n    egres: []\n")
    text += "hospital:\n  beds: -1\n  occupancy: lots\n"
    got = problems(tmp_path, text)
    assert len(got) == 4, got
    f = str(tmp_path / "s.yaml")
    assert got[0] == f"{f}:7:5: agents[0].replicas: expected a number greater than or equal to 1; found 0"
    assert got[1].startswith(f"{f}:8:5: agents[0].egres: expected 'egress' ('egres' is not a field here")
    assert got[2] == f"{f}:10:3: hospital.beds: expected a number greater than or equal to 1; found -1"
    assert got[3].startswith(f"{f}:11:3: hospital.occupancy: expected a valid number") and got[3].endswith("found 'lots'")


def test_wrong_agent_class_points_at_the_class_key(tmp_path):
    got = problems(tmp_path, MINIMAL.replace("class: ambient_scribe", "class: ambient_scrib"))
    assert got == [f"{tmp_path / 's.yaml'}:6:5: agents[0].class: expected one of 'ambient_scribe', 'cds', "
                   f"'prior_auth'; found 'ambient_scrib'"]


def test_missing_class_and_field_errors_inside_a_tagged_agent_are_located(tmp_path):
    text = MINIMAL + "  - name: cds\n    class: cds\n    settings: {draft_share: 2}\n  - name: x\n"
    got = problems(tmp_path, text)
    assert any(re.search(r":9:16: agents\[1\]\.settings\.draft_share: expected a number less than or equal to 1; found 2", g) for g in got), got
    assert any(re.search(r":10:5: agents\[2\]\.class: expected a 'class' key", g) for g in got), got


def test_dangling_references_are_all_reported_at_their_position(tmp_path):
    text = MINIMAL + """\
    egress: [llm]
break_glass:
  - {name: code_blue, per_day: 1, agents: [scribe, nobody], lane: []}
attacks:
  - {name: a, kind: egress, agent: ghost, at: {day: 1}, address: "127.0.0.66:443"}
arms:
  staging:
    omit: [{agent: cds, type: DiagnosticReport}]
"""
    got = problems(tmp_path, text)
    f = str(tmp_path / "s.yaml")
    assert got[0].startswith(f"{f}:7:14: agents[0].egress[0]: expected an endpoint listed in baa_registry.endpoints")
    assert any(g.startswith(f"{f}:9:52: break_glass[0].agents[1]: expected an agent name of the fleet (scribe); found 'nobody'") for g in got), got
    assert any(":11:" in g and "attacks[0].agent" in g and "'ghost'" in g for g in got), got
    assert any(":14:" in g and "arms.staging.omit[0].agent" in g for g in got), got


def test_yaml_syntax_and_shape_errors_name_the_position(tmp_path):
    with pytest.raises(ScenarioError, match=r"s\.yaml:2:\d+: not valid YAML"):
        load_scenario(write(tmp_path, "name: [x\nseed: 1\n"))
    with pytest.raises(ScenarioError, match=r"s\.yaml:1:1: expected a mapping"):
        load_scenario(write(tmp_path, "- 1\n"))
    with pytest.raises(ScenarioError, match="no such scenario file"):
        load_scenario(tmp_path / "missing.yaml")


def test_semantic_checks(tmp_path):
    got = problems(tmp_path, MINIMAL + "hospital: {length_of_stay_days: 3, length_of_stay_median_days: 4}\n")
    assert "length_of_stay_median_days below length_of_stay_days" in got[0]
    bg = MINIMAL + "break_glass:\n  - {name: code_blue, per_day: 1, agents: [scribe], lane: [], duration_min: 10, active_min: 20}\n"
    assert "expected active_min <= duration_min; found 20.0 > 10.0" in problems(tmp_path, bg)[0]


def test_staging_defaults_make_a_good_arm():
    sc = load_scenario(REPO / "scenarios" / "community-hospital-week.yaml")
    prod, stag = resolve_arm(sc, "production"), resolve_arm(sc, "staging")
    assert prod.seed != stag.seed
    assert prod.population.synthea.seed != stag.population.synthea.seed
    assert prod.population.synthea.patients == stag.population.synthea.patients
    assert (prod.arrivals, stag.arrivals) == ("bursty", "bursty")
    assert (prod.break_glass, stag.break_glass) == ("as_production", "drill")
    assert (prod.attacks, stag.attacks) == (True, False)
    assert prod.duration_ns == stag.duration_ns and stag.omit == () and stag.changes == ()


def test_staging_overrides_are_applied(tmp_path):
    text = MINIMAL + """\
arms:
  staging:
    seed: 99
    duration: {days: 2}
    arrivals: uniform
    break_glass: "off"
    population: {folder: other}
    volume_factor: 0.5
"""
    sc = load_scenario(write(tmp_path, text))
    st = resolve_arm(sc, "staging")
    assert (st.seed, st.duration_ns, st.arrivals, st.break_glass, st.volume_factor) == (99, 2 * 86400 * 10**9, "uniform", "off", 0.5)
    assert st.population.folder == str((tmp_path / "other").resolve())
    assert resolve_arm(sc, "production").population.folder == str((tmp_path / "pop").resolve())


@pytest.mark.parametrize("path", LIBRARY, ids=[p.stem for p in LIBRARY])
def test_library_scenarios_validate(path):
    sc = load_scenario(path)
    for arm in ("production", "staging"):
        resolve_arm(sc, arm)


def test_library_scenarios_cite_their_sources():
    text = (REPO / "scenarios" / "community-hospital-week.yaml").read_text()
    for source in ("fastTS", "HCUP", "AHA", "HHS", "GWTG-R", "JAMA 2008", "AMA", "Montreal"):
        assert source in text, source


def _field_names(model: type[BaseModel], seen: set[type]) -> set[str]:
    out: set[str] = set()
    if model in seen:
        return out
    seen.add(model)
    for name, f in model.model_fields.items():
        out.add(f.alias or name)
        for t in _types(f.annotation):
            if isinstance(t, type) and issubclass(t, BaseModel):
                out |= _field_names(t, seen)
    return out


def _types(annotation) -> list:
    args = getattr(annotation, "__args__", None)
    if args:
        return [x for a in args for x in _types(a)]
    meta = getattr(annotation, "__metadata__", None)
    if meta is not None:
        return _types(annotation.__origin__)
    return [annotation]


def test_docs_document_every_field_with_its_default():
    doc = (REPO / "docs" / "scenarios.md").read_text()
    names = _field_names(S.Scenario, set())
    missing = sorted(n for n in names if f"`{n}`" not in doc)
    assert not missing, f"fields not documented in docs/scenarios.md: {missing}"


def test_validate_command_exit_codes_and_every_problem(tmp_path):
    good = REPO / "scenarios" / "tiny.yaml"
    ok = subprocess.run(PB + ["validate", str(good)], capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout
    bad = write(tmp_path, MINIMAL.replace("class: ambient_scribe", "class: robot") + "hospital: {beds: 0}\n")
    r = subprocess.run(PB + ["validate", str(good), str(bad)], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2
    assert "agents[0].class" in r.stderr and "hospital.beds" in r.stderr
    assert "Traceback" not in r.stderr
    # the README's form, one line per problem: file:line:col: field: expected X; found Y
    import re

    lines = [x.strip() for x in r.stderr.splitlines() if f"{bad.name}:" in x and "invalid" not in x]
    assert len(lines) == 2 and all(re.fullmatch(rf".*{bad.name}:\d+:\d+: [\w.\[\]]+: expected .+; found .+", x) for x in lines), lines
    assert any(x.endswith("agents[0].class: expected one of 'ambient_scribe', 'cds', 'prior_auth'; found 'robot'") for x in lines)


# ------------------------------------------------------------------------------------ extends
def test_variants_extend_the_default_and_merge_key_by_key(tmp_path):
    """A variant is the parent plus what it writes: mappings merge, lists and scalars replace."""
    base = load_scenario(REPO / "scenarios" / "community-hospital-week.yaml")
    child = write(tmp_path, f"""\
extends: {REPO / "scenarios" / "community-hospital-week.yaml"}
name: v
hospital:
  beds: 120
arms:
  staging:
    arrivals: uniform
attacks: []
""")
    v = load_scenario(child)
    assert v.name == "v" and v.hospital.beds == 120 and v.attacks == []
    assert v.hospital.occupancy == base.hospital.occupancy  # the rest of the mapping is the parent's
    assert v.arms.staging.arrivals == "uniform" and v.arms.production == base.arms.production
    assert v.agents == base.agents and v.break_glass == base.break_glass


def test_library_variants_are_their_parent_plus_a_few_lines():
    """The library's flawed scenarios extend the default (and differ from it only where they say)."""
    base = load_scenario(REPO / "scenarios" / "community-hospital-week.yaml").model_dump()
    for name in ("uniform-staging", "missing-diagnosticreport", "no-break-glass", "hotfix-egress"):
        path = REPO / "scenarios" / f"{name}.yaml"
        assert "extends: community-hospital-week" in path.read_text()
        assert len(path.read_text().splitlines()) < 30
        v = load_scenario(path).model_dump()
        assert {k for k in v if v[k] != base[k]} == {"name", "description", "arms"}, name


def test_errors_point_into_the_child_or_the_parent(tmp_path):
    parent = write(tmp_path, MINIMAL + "hospital:\n  beds: 0\n", "parent.yaml")
    sub = tmp_path / "sub"
    sub.mkdir()
    child = write(sub, "extends: ../parent.yaml\nname: c\nworkflows:\n  rounds:\n    start: '25:00'\n", "child.yaml")
    with pytest.raises(ScenarioError) as e:
        load_scenario(child)
    got = e.value.problems
    assert [x.split(": expected")[0] for x in got] == [f"{child}:5:5: workflows.rounds.start",
                                                        f"{parent}:8:3: hospital.beds"], got


def test_a_child_fixes_what_its_parent_got_wrong(tmp_path):
    write(tmp_path, MINIMAL + "hospital:\n  beds: 0\n", "parent.yaml")
    child = write(tmp_path, "extends: parent.yaml\nhospital:\n  beds: 10\n", "child.yaml")
    assert load_scenario(child).hospital.beds == 10


def test_missing_parent_and_cycles_are_input_errors(tmp_path):
    missing = write(tmp_path, "name: x\nextends: nowhere-to-be-found\n", "m.yaml")
    with pytest.raises(ScenarioError) as e:
        load_scenario(missing)
    assert e.value.message.startswith(f"{missing}:2:1: extends:") and "does not exist" in e.value.message
    assert "community-hospital-week" in e.value.message  # the library names it could have been
    write(tmp_path, "extends: b.yaml\nname: a\n", "a.yaml")
    write(tmp_path, "extends: a.yaml\nname: b\n", "b.yaml")
    with pytest.raises(ScenarioError) as e:
        load_scenario(tmp_path / "a.yaml")
    assert "cycle a.yaml -> b.yaml -> a.yaml" in e.value.message
    me = write(tmp_path, "extends: me.yaml\nname: me\n", "me.yaml")
    with pytest.raises(ScenarioError):
        load_scenario(me)
    r = subprocess.run(PB + ["validate", str(tmp_path / "a.yaml")], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and "cycle" in r.stderr and "Traceback" not in r.stderr


def test_relative_folders_follow_the_file_that_wrote_them(tmp_path):
    (tmp_path / "base").mkdir()
    write(tmp_path / "base", MINIMAL, "parent.yaml")
    child = write(tmp_path, "extends: base/parent.yaml\nname: c\n", "child.yaml")
    assert load_scenario(child).population.folder == str((tmp_path / "base" / "pop").resolve())
    child2 = write(tmp_path, "extends: base/parent.yaml\nname: c\npopulation:\n  folder: here\n", "child2.yaml")
    assert load_scenario(child2).population.folder == str((tmp_path / "here").resolve())


def test_scenario_hash_covers_the_parents(tmp_path):
    from paritybed.scenarios import scenario_hash

    parent = write(tmp_path, MINIMAL, "parent.yaml")
    child = write(tmp_path, "extends: parent.yaml\nname: c\n", "child.yaml")
    before = scenario_hash(child)
    parent.write_text(MINIMAL + "seed: 9\n")
    assert scenario_hash(child) != before
    import hashlib

    assert scenario_hash(parent) == "sha256:" + hashlib.sha256(parent.read_bytes()).hexdigest()


def test_validate_show_prints_the_merged_document():
    r = subprocess.run(PB + ["validate", "--show", str(REPO / "scenarios" / "no-break-glass.yaml")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "# from " in r.stdout and "community-hospital-week.yaml" in r.stdout
    assert "break_glass: 'off'" in r.stdout or 'break_glass: "off"' in r.stdout or "break_glass: off" in r.stdout
    assert "beds: 300" in r.stdout  # from the parent
