#!/usr/bin/env python3
"""Generate paritybed's FHIR R4 tables from the official R4 definitions (not hand-typed).

Source: ``ca.uhn.hapi.fhir:hapi-fhir-validation-resources-r4:8.8.0`` (Maven Central), which
carries the FHIR 4.0.1 definition files: ``sp/search-parameters.json`` (every SearchParameter),
``profile/profiles-resources.xml`` (the resource StructureDefinitions and the five
CompartmentDefinitions), ``profile/profiles-types.xml`` (the datatypes) and
``valueset/{valuesets,v3-codesystems}.xml`` (value sets and code systems).  The jar is resolved
with Maven into the paritybed cache, the way scripts/setup.sh resolves Synthea.

Writes, into paritybed/core/r4/ (read by paritybed/core/r4spec.py):

* ``search_parameters.json``: the 146 resource types, per type every search parameter (code,
  type, the element paths it indexes, reference targets, composite components), the common
  parameters of Resource/DomainResource, and the five compartment definitions;
* ``elements.json``: per type the top-level choice elements, the ``_summary`` and mandatory
  elements, and the required bindings (with the codes of every value set that can be
  enumerated from the specification).

Both files start with ``about``: the Maven coordinates, the sha256 of the jar and of each file
read, the FHIR version and this generator.  Run it again to check or refresh them:

    python3 scripts/gen_r4_tables.py                 # resolve the jar with mvn, write the tables
    python3 scripts/gen_r4_tables.py --jar FILE.jar  # use a jar you already have
    python3 scripts/gen_r4_tables.py --check         # exit 1 if the committed tables differ

Only the standard library: the generator runs before the venv exists.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import Any, Iterator, NamedTuple

GROUP, ARTIFACT, VERSION = "ca.uhn.hapi.fhir", "hapi-fhir-validation-resources-r4", "8.8.0"
COORDS = f"{GROUP}:{ARTIFACT}:{VERSION}"
ROOT = "org/hl7/fhir/r4/model/"
SP_FILE = ROOT + "sp/search-parameters.json"
RESOURCES_FILE = ROOT + "profile/profiles-resources.xml"
TYPES_FILE = ROOT + "profile/profiles-types.xml"
VALUESET_FILES = (ROOT + "valueset/valuesets.xml", ROOT + "valueset/v3-codesystems.xml")
OUT = Path(__file__).resolve().parent.parent / "paritybed" / "core" / "r4"
F = "{http://hl7.org/fhir}"

#: Datatypes whose values are primitive (a JSON scalar).
PRIMITIVES = {
    "boolean", "integer", "string", "decimal", "uri", "url", "canonical", "base64Binary", "instant",
    "date", "dateTime", "time", "code", "oid", "id", "markdown", "unsignedInt", "positiveInt", "uuid",
    "xhtml",
}
#: Which element types each search parameter type reads (R4 search.html, "Search parameter types").
READS = {
    "date": {"date", "dateTime", "instant", "Period", "Timing"},
    "token": {"code", "Coding", "CodeableConcept", "Identifier", "boolean", "ContactPoint", "string", "uri", "id"},
    "reference": {"Reference", "canonical", "uri"},
    "quantity": {"Quantity", "Age", "Duration", "Distance", "Count", "SimpleQuantity", "Money", "Range", "SampledData"},
    "number": {"decimal", "integer", "positiveInt", "unsignedInt"},
    "string": {"string", "HumanName", "Address", "markdown"},
    "uri": {"uri", "url", "canonical", "oid", "uuid"},
}
#: FHIRPath System types of primitive values (``Resource.id``) as the FHIR type names.
SYSTEM_TYPES = {"http://hl7.org/fhirpath/System.String": "id"}
#: Bindable element types whose codes the server checks against a required value set.
CODED = {"code", "Coding", "CodeableConcept"}


# ------------------------------------------------------------------------------ the jar
def resolve_jar() -> Path:
    """The jar from the paritybed cache, resolved with Maven (dependency:copy) if absent."""
    cache = Path(os.environ.get("PARITYBED_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "paritybed")
    folder = cache / ARTIFACT / VERSION
    jar = folder / f"{ARTIFACT}-{VERSION}.jar"
    if jar.is_file():
        return jar
    folder.mkdir(parents=True, exist_ok=True)
    cmd = ["mvn", "-q", "-B", "dependency:copy", f"-Dartifact={COORDS}", f"-DoutputDirectory={folder}"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=folder)
    except FileNotFoundError:
        sys.exit("gen_r4_tables: Maven (mvn) not found; install maven or pass --jar")
    if r.returncode != 0 or not jar.is_file():
        sys.exit(f"gen_r4_tables: could not resolve {COORDS} from Maven Central:\n{r.stdout}{r.stderr}")
    return jar


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ StructureDefinitions
class Element:
    """One snapshot element of a StructureDefinition (only what the tables need)."""

    def __init__(self, el: ET.Element) -> None:
        self.path = _v(el, "path")
        # Resource.id and other primitives' own values are typed as FHIRPath System types.
        self.types = [SYSTEM_TYPES.get(c, c) for c in (_v(t, "code") or "" for t in el.findall(F + "type"))]
        self.targets = [p.get("value", "").rsplit("/", 1)[-1] for t in el.findall(F + "type") for p in t.findall(F + "targetProfile")]
        self.min = int(_v(el, "min") or 0)
        self.summary = _v(el, "isSummary") == "true"
        self.content_ref = (_v(el, "contentReference") or "").lstrip("#") or None
        b = el.find(F + "binding")
        self.strength = _v(b, "strength") if b is not None else None
        self.value_set = (_v(b, "valueSet") or "").split("|")[0] if b is not None else None

    @property
    def name(self) -> str:
        return self.path.rsplit(".", 1)[-1]

    @property
    def choice(self) -> bool:
        return self.name.endswith("[x]")


def _v(el: ET.Element | None, child: str) -> str | None:
    if el is None:
        return None
    c = el.find(F + child)
    return c.get("value") if c is not None else None


def _entries(data: bytes, tag: str) -> Iterator[ET.Element]:
    """Every ``<tag>`` resource of a Bundle document (streamed: the files are large)."""
    import io

    for _, el in ET.iterparse(io.BytesIO(data)):
        if el.tag == F + tag:
            yield el
        elif el.tag == F + "entry":
            el.clear()


def structure_definitions(*docs: bytes) -> tuple[dict[str, dict[str, Element]], dict[str, str]]:
    """{type name: {element path: Element}} of every StructureDefinition, and each one's kind."""
    sds: dict[str, dict[str, Element]] = {}
    kinds: dict[str, str] = {}
    for data in docs:
        for sd in _entries(data, "StructureDefinition"):
            if _v(sd, "derivation") == "constraint":
                continue  # profiles (SimpleQuantity, vitalsigns, ...) are not base types
            name = _v(sd, "type")
            snap = sd.find(F + "snapshot")
            if not name or snap is None:
                continue
            sds[name] = {e.path: e for e in map(Element, snap.findall(F + "element"))}
            kinds[name] = _v(sd, "kind") or ""
    return sds, kinds


def compartments(data: bytes) -> dict[str, dict[str, list[str]]]:
    """{compartment type: {resource type: [parameter codes]}} (types with no parameter left out)."""
    out: dict[str, dict[str, list[str]]] = {}
    for cd in _entries(data, "CompartmentDefinition"):
        members: dict[str, list[str]] = {}
        for r in cd.findall(F + "resource"):
            params = [p.get("value", "") for p in r.findall(F + "param")]
            if params:
                members[_v(r, "code") or ""] = params
        out[_v(cd, "code") or ""] = dict(sorted(members.items()))
    return dict(sorted(out.items()))


def json_name(base: str, fhir_type: str) -> str:
    """JSON key of one type of a choice element: ``value[x]`` + ``Quantity`` -> ``valueQuantity``."""
    return base.removesuffix("[x]") + fhir_type[:1].upper() + fhir_type[1:]


# ------------------------------------------------------------------------- FHIRPath subset
class Unsupported(Exception):
    """An expression outside the subset this generator compiles into element paths."""


def split_top(expr: str, sep: str) -> list[str]:
    """Split on `sep` outside parentheses and quotes."""
    parts, depth, quote, cur = [], 0, False, ""
    i = 0
    while i < len(expr):
        c = expr[i]
        if c == "'":
            quote = not quote
        elif not quote and c == "(":
            depth += 1
        elif not quote and c == ")":
            depth -= 1
        if not quote and depth == 0 and expr.startswith(sep, i):
            parts.append(cur)
            cur = ""
            i += len(sep)
            continue
        cur += c
        i += 1
    parts.append(cur)
    return [p.strip() for p in parts]


_AS_PAREN = re.compile(r"\(([A-Za-z][\w.]*) as (\w+)\)")
_AS_TAIL = re.compile(r"^([A-Za-z][\w.]*) as (\w+)$")


def steps_of(part: str) -> list[str]:
    """``(Observation.value as Quantity)`` -> ``['Observation', 'value', 'as(Quantity)']``."""
    part = _AS_PAREN.sub(r"\1.as(\2)", part.strip())
    part = _AS_TAIL.sub(r"\1.as(\2)", part)
    return split_top(part, ".")


class State(NamedTuple):
    """Where a FHIRPath walk is: the JSON path so far, the StructureDefinition and element path
    to look the next step up in, the FHIR type reached, a resolve() target, an open choice."""

    json: str
    sd: str
    element: str
    fhir_type: str | None = None
    target: str | None = None
    choice: Element | None = None


class Resolver:
    """Turns the FHIRPath of a search parameter into element paths of the JSON form."""

    def __init__(self, sds: dict[str, dict[str, Element]], kinds: dict[str, str]) -> None:
        self.sds, self.kinds = sds, kinds

    def element(self, sd: str, path: str) -> Element | None:
        elements = self.sds.get(sd, {})
        return elements.get(path) or elements.get(path + "[x]")

    def compile(self, rtype: str, steps: list[str], start: tuple[str, str] | None = None) -> list[tuple[str, str, str | None]]:
        """[(json path, FHIR type, resolve() target or None)] reached by `steps`.

        `start` is (StructureDefinition, element path) to resolve relative steps from (the
        components of a composite), else the steps begin with the resource type's name.
        """
        if start is None:
            if steps and re.fullmatch(r"[a-z]\w*", steps[0]):
                steps = [rtype, *steps]  # a relative part ("name | alias" of InsurancePlan.name)
            if not steps or steps[0] not in (rtype, "Resource", "DomainResource"):
                raise Unsupported(f"does not start with {rtype}")
            start = (rtype, rtype) if steps[0] == rtype else ("Resource", "Resource")
            steps = steps[1:]
        states = [State("", *start)]
        for step in steps:
            states = [nxt for st in states for nxt in self._step(step, st)]
        out = []
        for st in states:
            if st.choice is not None:  # a choice left open: every type of it
                out.extend((json_name(st.json, t), t, st.target) for t in st.choice.types)
            elif st.fhir_type is None:
                out.append((st.json, st.sd if st.json == "" else "BackboneElement", st.target))
            else:
                out.append((st.json, st.fhir_type, st.target))
        return out

    def _step(self, step: str, st: State) -> list[State]:
        if step.startswith("as(") or step.startswith("ofType("):
            return [self._cast(step[step.index("(") + 1:-1], st)]
        if step.startswith("where(resolve() is "):
            return [st._replace(target=step[len("where(resolve() is "):-1])]
        m = re.fullmatch(r"where\((\w+)\s*=\s*'([^']*)'\)", step)
        if m:
            return [st._replace(json=f"{st.json}[{m.group(1)}={m.group(2)}]")]
        if not re.fullmatch(r"[a-z]\w*", step):
            raise Unsupported(f"step {step!r}")
        if st.choice is not None:
            raise Unsupported(f"{st.choice.path} is a choice followed by .{step}")
        found = self.element(st.sd, f"{st.element}.{step}")
        if found is None:
            raise Unsupported(f"no element {st.element}.{step} in {st.sd}")
        key = f"{st.json}.{step}" if st.json else step
        if found.choice:
            return [State(key, st.sd, found.path.removesuffix("[x]"), None, st.target, found)]
        if found.content_ref:  # e.g. Questionnaire.item.item -> #Questionnaire.item
            target = self.element(st.sd, found.content_ref)
            assert target is not None
            types, below = target.types, found.content_ref
        else:
            types, below = found.types, found.path
        fhir_type = types[0] if len(types) == 1 else None
        if fhir_type in (None, "BackboneElement", "Element"):
            return [State(key, st.sd, below, None, st.target)]
        return [State(key, *self._into(st.sd, below, fhir_type), fhir_type, st.target)]

    def _cast(self, want: str, st: State) -> State:
        """``as(T)`` / ``ofType(T)``: one type of an open choice, or a check of the type reached."""
        if st.choice is not None:
            if want not in st.choice.types:
                want = want[:1].lower() + want[1:]  # FHIRPath's System types: DateTime -> dateTime
            if want not in st.choice.types:
                raise Unsupported(f"{st.choice.path} has no type {want}")
            return State(json_name(st.json, want), *self._into(st.sd, st.element, want), want, st.target)
        if st.fhir_type == want or (want == "Quantity" and st.fhir_type in READS["quantity"]):
            return st
        raise Unsupported(f"cast of {st.element} ({st.fhir_type}) to {want}")

    def _into(self, sd: str, ep: str, fhir_type: str) -> tuple[str, str]:
        """Where element lookup continues below an element of `fhir_type`."""
        if fhir_type in self.sds and self.kinds.get(fhir_type) == "complex-type":
            return fhir_type, fhir_type
        return sd, ep


def compile_param(res: Resolver, rtype: str, sp: dict[str, Any], by_url: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The table entry of one search parameter for one base type."""
    entry: dict[str, Any] = {"type": sp["type"]}
    expr = sp.get("expression")
    targets = sorted(sp.get("target", []))
    if sp["type"] == "reference":
        entry["targets"] = targets
    if not expr:
        entry["paths"] = None
        entry["note"] = "no expression in the specification"
        return entry
    mine = [p for p in split_top(expr, "|") if re.match(rf"^\(?({rtype}|Resource|DomainResource)\b|^[a-z]", p)]
    try:
        if sp["type"] == "composite":
            roots = [r for p in mine for r in res.compile(rtype, steps_of(p))]
            entry["paths"] = [[jp, ft] for jp, ft, _ in roots]
            entry["components"] = [_component(res, rtype, comp, roots, by_url) for comp in sp["component"]]
            return entry
        compiled = [c for p in mine for c in res.compile(rtype, steps_of(p))]
    except Unsupported as e:
        entry["paths"] = None
        entry["note"] = f"expression not indexable ({e}): {expr}"
        return entry
    reads = READS.get(sp["type"])
    compiled = [c for c in compiled if reads is None or c[1] in reads]  # e.g. value as string, for a quantity
    filters = {tg for _, _, tg in compiled}
    if sp["type"] == "reference" and compiled and None not in filters:
        # every path keeps only some targets (Observation.patient = subject.where(resolve() is
        # Patient)): for this type the parameter's targets are those.
        entry["targets"] = targets = sorted(filters)
    paths = []
    for jp, ft, tg in compiled:
        if tg is not None and targets != [tg]:
            jp = f"{jp}[resolve={tg}]"
        if [jp, ft] not in paths:
            paths.append([jp, ft])
    entry["paths"] = paths
    return entry


def _component(res: Resolver, rtype: str, comp: dict[str, Any], roots: list[tuple[str, str, str | None]],
               by_url: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One component of a composite: its parameter, type and paths relative to each root."""
    sub = by_url[comp["definition"]]
    paths: list[list[str]] = []
    for root_jp, root_ft, _ in roots:
        if res.kinds.get(root_ft) == "complex-type" and root_ft not in ("BackboneElement", "Element"):
            start = (root_ft, root_ft)  # a datatype (UsageContext): its own StructureDefinition
        else:  # the resource itself, or one of its backbone elements (Observation.component)
            start = (rtype, rtype + ("." + re.sub(r"\[[^]]*\]", "", root_jp) if root_jp else ""))
        for part in split_top(comp["expression"], "|"):
            for jp, ft, _ in res.compile(rtype, steps_of(part), start=start):
                if [jp, ft] not in paths:
                    paths.append([jp, ft])
    return {"param": sub["code"], "type": sub["type"], "paths": paths}


def search_table(sp_bundle: dict[str, Any], res: Resolver, types: list[str]) -> tuple[dict, dict]:
    """(common parameters, {type: {code: entry}})."""
    sps = [e["resource"] for e in sp_bundle["entry"]]
    by_url = {sp["url"]: sp for sp in sps}
    common: dict[str, Any] = {}
    per_type: dict[str, dict[str, Any]] = {t: {} for t in types}
    for sp in sorted(sps, key=lambda s: (s["code"], s["id"])):
        for base in sp["base"]:
            if base in ("Resource", "DomainResource"):
                common[sp["code"]] = compile_param(res, "Resource", sp, by_url) | {"base": base}
            elif base in per_type:
                per_type[base][sp["code"]] = compile_param(res, base, sp, by_url)
    return common, {t: dict(sorted(ps.items())) for t, ps in per_type.items()}


# --------------------------------------------------------------------------- value sets
class Terminology:
    """Code systems and value sets of the specification, expanded where enumerable."""

    def __init__(self, docs: list[bytes]) -> None:
        self.systems: dict[str, dict[str, list[str]]] = {}  # url -> {code: [child codes]}
        self.complete: set[str] = set()
        self.valuesets: dict[str, ET.Element] = {}
        for data in docs:
            for cs in _entries(data, "CodeSystem"):
                url = _v(cs, "url")
                if url:
                    self.systems[url] = {}
                    self._concepts(cs, self.systems[url], None)
                    if _v(cs, "content") == "complete":
                        self.complete.add(url)
            for vs in _entries(data, "ValueSet"):
                if _v(vs, "url"):
                    self.valuesets[_v(vs, "url") or ""] = vs
        self.cache: dict[str, dict[str, list[str]] | None] = {}

    def _concepts(self, node: ET.Element, into: dict[str, list[str]], parent: str | None) -> None:
        for c in node.findall(F + "concept"):
            code = _v(c, "code") or ""
            into.setdefault(code, [])
            if parent is not None:
                into[parent].append(code)
            self._concepts(c, into, code)

    def _below(self, system: str, code: str) -> set[str]:
        out, todo = set(), [code]
        while todo:
            c = todo.pop()
            for child in self.systems[system].get(c, []):
                if child not in out:
                    out.add(child)
                    todo.append(child)
        return out

    def _include(self, inc: ET.Element) -> dict[str, set[str]] | None:
        system = _v(inc, "system")
        imports = [v.get("value", "").split("|")[0] for v in inc.findall(F + "valueSet")]
        result: dict[str, set[str]] | None = None
        if system:
            codes = [_v(c, "code") or "" for c in inc.findall(F + "concept")]
            filters = inc.findall(F + "filter")
            if codes and not filters:
                chosen = set(codes)  # listed codes: enumerable even from an external system
            elif system not in self.systems or system not in self.complete:
                return None  # all or part of an external code system (SNOMED CT, UCUM, BCP-47...)
            elif not filters:
                chosen = set(self.systems[system])
            else:
                chosen = set(self.systems[system])
                for f in filters:
                    prop, op, value = _v(f, "property"), _v(f, "op"), _v(f, "value") or ""
                    if prop != "concept" or op not in ("is-a", "descendent-of", "is-not-a"):
                        return None
                    below = self._below(system, value)
                    if op == "is-a":
                        chosen &= below | {value}
                    elif op == "descendent-of":
                        chosen &= below
                    else:
                        chosen -= below | {value}
            result = {system: chosen}
        for url in imports:
            sub = self.expand(url)
            if sub is None:
                return None
            sub_sets = {s: set(c) for s, c in sub.items()}
            if result is None:
                result = sub_sets
            else:  # a system and value sets in one include: their intersection
                result = {s: result[s] & sub_sets[s] for s in result if s in sub_sets}
        return result

    def expand(self, url: str) -> dict[str, list[str]] | None:
        """{system: sorted codes} of a value set, or None if it cannot be enumerated here."""
        if url in self.cache:
            return self.cache[url]
        self.cache[url] = None  # cycles: not enumerable
        vs = self.valuesets.get(url)
        compose = vs.find(F + "compose") if vs is not None else None
        if compose is None:
            return None
        codes: dict[str, set[str]] = {}
        for inc in compose.findall(F + "include"):
            part = self._include(inc)
            if part is None:
                return None
            for s, c in part.items():
                codes.setdefault(s, set()).update(c)
        for exc in compose.findall(F + "exclude"):
            part = self._include(exc)
            if part is None:
                return None
            for s, c in part.items():
                codes.get(s, set()).difference_update(c)
        result = {s: sorted(c) for s, c in sorted(codes.items()) if c}
        self.cache[url] = result
        return result


# ------------------------------------------------------------------------------ elements
def element_table(sds: dict[str, dict[str, Element]], kinds: dict[str, str], types: list[str],
                  term: Terminology) -> dict[str, Any]:
    """Per type: top-level and choice elements, _summary and mandatory JSON keys, required bindings."""

    def keys(el: Element) -> list[str]:
        return [json_name(el.name, t) for t in el.types] if el.choice else [el.name]

    def bindings_of(sd: str, root: str) -> dict[str, str]:
        """{json path: value set url or '@Datatype'} below `root` of StructureDefinition `sd`."""
        out: dict[str, str] = {}
        elements = sds[sd]
        for path, el in elements.items():
            if not path.startswith(root + ".") or el.name in ("extension", "modifierExtension", "id"):
                continue
            rel = path[len(root) + 1:]
            if any(p in ("extension", "modifierExtension") for p in rel.split(".")):
                continue
            if el.content_ref:
                continue  # a repeated backbone: its elements are listed once, under the original
            parent = rel.rsplit(".", 1)[0] if "." in rel else None
            if parent is not None and elements.get(f"{root}.{parent}") is None:
                continue
            for t in el.types:
                key = json_name(rel, t) if el.choice else rel
                if el.strength == "required" and t in CODED and el.value_set:
                    out[key] = el.value_set
                elif t in datatype_bindings and datatype_bindings[t]:
                    out[key] = "@" + t
        return out

    datatype_bindings: dict[str, dict[str, str]] = {}
    complex_types = sorted(t for t, k in kinds.items() if k == "complex-type" and t not in ("Extension", "Element", "BackboneElement"))
    for _ in range(6):  # to a fixed point: datatypes inside datatypes (Reference.identifier)
        before = json.dumps(datatype_bindings, sort_keys=True)
        for t in complex_types:
            datatype_bindings[t] = bindings_of(t, t)
        if json.dumps(datatype_bindings, sort_keys=True) == before:
            break
    table: dict[str, Any] = {}
    used_vs: set[str] = set()
    for rtype in types:
        elements = sds[rtype]
        top = [el for p, el in elements.items() if p.count(".") == 1]
        b = bindings_of(rtype, rtype)
        table[rtype] = {
            "elements": [el.name.removesuffix("[x]") for el in top],
            "choice": sorted(el.name.removesuffix("[x]") for el in top if el.choice),
            "summary": sorted(k for el in top if el.summary for k in keys(el)),
            "mandatory": sorted(k for el in top if el.min > 0 for k in keys(el)),
            "bindings": dict(sorted(b.items())),
        }
        used_vs.update(v for v in b.values() if not v.startswith("@"))
    datatypes = {t: dict(sorted(b.items())) for t, b in sorted(datatype_bindings.items()) if b}
    for b in datatypes.values():
        used_vs.update(v for v in b.values() if not v.startswith("@"))
    valuesets = {url: term.expand(url) for url in sorted(used_vs)}
    return {"types": table, "datatypes": datatypes, "valueSets": valuesets}


# ------------------------------------------------------------------------------- main
def build(jar: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    jar_bytes = jar.read_bytes()
    with zipfile.ZipFile(jar) as z:
        files = {name: z.read(name) for name in (SP_FILE, RESOURCES_FILE, TYPES_FILE, *VALUESET_FILES)}
    term = Terminology([files[f] for f in VALUESET_FILES])
    rt = term.systems["http://hl7.org/fhir/resource-types"]
    types = sorted(t for t in rt if t not in ("Resource", "DomainResource"))
    sds, kinds = structure_definitions(files[RESOURCES_FILE], files[TYPES_FILE])
    res = Resolver(sds, kinds)
    common, per_type = search_table(json.loads(files[SP_FILE]), res, types)
    about = {
        "source": f"{COORDS} (Maven Central)",
        "jarSha256": sha256(jar_bytes),
        "fhirVersion": "4.0.1",
        "generator": "scripts/gen_r4_tables.py",
    }
    search = {
        "about": {
            **about,
            "files": {SP_FILE: sha256(files[SP_FILE]), RESOURCES_FILE: sha256(files[RESOURCES_FILE]),
                      TYPES_FILE: sha256(files[TYPES_FILE])},
            "paths": "each path is [json path, FHIR type]: dotted JSON keys from the resource, "
                     "'key[name=value]' keeps the items whose 'name' is 'value', "
                     "'[resolve=Type]' keeps references to Type; paths null = not indexable (see note); "
                     "a composite's component paths are relative to each of its paths ('' = the resource)",
        },
        "resourceTypes": types,
        "common": common,
        "types": per_type,
        "compartments": compartments(files[RESOURCES_FILE]),
    }
    elements = {
        "about": {
            **about,
            "files": {RESOURCES_FILE: sha256(files[RESOURCES_FILE]), TYPES_FILE: sha256(files[TYPES_FILE]),
                      **{f: sha256(files[f]) for f in VALUESET_FILES}},
            "elements": "top-level elements by base name in the specification's order (a choice "
                        "element value[x] is 'value', listed in 'choice'); 'summary' and 'mandatory' are JSON keys",
            "bindings": "per type {json path: value set url, or '@Datatype' for the datatype's own "
                        "bindings}; only required bindings of code, Coding and CodeableConcept; "
                        "valueSets[url] = {system: [codes]}, or null when the value set uses a code "
                        "system the specification does not enumerate (SNOMED CT, UCUM, BCP-13, ...)",
        },
        **element_table(sds, kinds, types, term),
    }
    return search, elements


def dump(data: Any, expand: int, indent: str = "") -> str:
    """JSON with the first `expand` levels of objects one key per line, the rest on one line:
    one line per search parameter (or binding), so a regenerated table diffs readably."""
    if expand <= 0 or not isinstance(data, dict) or not data:
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    inner = indent + " "
    items = [f"{inner}{json.dumps(k)}: {dump(v, expand - 1, inner)}" for k, v in data.items()]
    return "{\n" + ",\n".join(items) + f"\n{indent}}}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jar", type=Path, help=f"{ARTIFACT}-{VERSION}.jar (default: resolve with mvn)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--check", action="store_true", help="exit 1 if the files in --out differ")
    args = ap.parse_args(argv)
    jar = args.jar or resolve_jar()
    search, elements = build(jar)
    outputs = {"search_parameters.json": dump(search, 3) + "\n", "elements.json": dump(elements, 4) + "\n"}
    if args.check:
        stale = [n for n, text in outputs.items() if not (args.out / n).is_file() or (args.out / n).read_text() != text]
        for n in stale:
            print(f"gen_r4_tables: {args.out / n} differs from what {jar.name} generates", file=sys.stderr)
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for n, text in outputs.items():
        (args.out / n).write_text(text)
        print(f"wrote {args.out / n} ({len(text.encode()) // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
