"""Scenario problems in words a user understands: what was expected, what was found, where.

Every problem is one line ``file:line:col: field: expected X; found Y`` (the file is the child or
the parent an ``extends:`` chain read it from), all problems of a file at once, in file order.
"""

from __future__ import annotations

import difflib
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from paritybed.scenarios.base import AGENT_CLASSES, field_path
from paritybed.scenarios.source import Source

#: (field path, what was expected, what was found)
Problem = tuple[tuple[Any, ...], str, str]


def _found(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return repr(value)[:80]


def _all_field_names() -> list[str]:
    """Every field name of the schema (for "did you mean" hints on a misspelt key)."""
    names: set[str] = set()
    seen: set[type] = set()

    def walk(model: type) -> None:
        if model in seen:
            return
        seen.add(model)
        for fname, f in model.model_fields.items():
            names.add(f.alias or fname)
            for sub in _models_in(f.annotation):
                walk(sub)

    from paritybed.scenarios.scenario import Scenario

    walk(Scenario)
    return sorted(names)


def _models_in(annotation: Any) -> list[type]:
    """The pydantic models mentioned in a type annotation (through list/Union/Annotated)."""
    out: list[type] = []
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    for arg in typing.get_args(annotation):
        out.extend(_models_in(arg))
    return out


def describe(err: dict[str, Any]) -> tuple[str, str]:
    """(what was expected, what was found) for one pydantic error, in words a user understands."""
    t = err.get("type", "")
    found = err.get("input")
    msg = err.get("msg", "")
    ctx = err.get("ctx") or {}
    if t == "extra_forbidden":
        loc = err.get("loc", ())
        name = str(loc[-1]) if loc else ""
        near = difflib.get_close_matches(name, _all_field_names(), n=1, cutoff=0.6)
        hint = f"'{near[0]}'" if near else "a field listed in docs/scenarios.md"
        return (f"{hint} ('{name}' is not a field here: check the spelling)", _found(found))
    if t == "missing":
        return ("this field (it is required)", "nothing")
    if t == "union_tag_invalid":
        return (f"one of {ctx.get('expected_tags', '')}", repr(ctx.get("tag", found))[:80])
    if t == "union_tag_not_found":
        return (f"a 'class' key (one of {', '.join(AGENT_CLASSES)})", "no 'class'")
    if t.startswith("literal_error"):
        return (msg.replace("Input should be ", "one of "), _found(found))
    if t == "model_type" or t == "dict_type":
        return ("a mapping of fields", _found(found))
    if msg.startswith("Value error, "):
        text = msg[len("Value error, "):]
        if text.startswith("expected "):
            # Our validators say "expected X, found Y" themselves.
            exp, _, fnd = text[len("expected "):].partition(", found ")
            return (exp, fnd or _found(found))
        return (text, _found(found))
    if msg.startswith("Input should be "):
        text = msg[len("Input should be "):]
        if t in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            text = "a number " + text
        return (text, _found(found))
    return (msg, _found(found))


def problem_lines(src: Source, items: list[Problem]) -> list[str]:
    """'file:line:col: field: expected X; found Y' for each problem, in file order."""
    rows = []
    files = list(src.files)
    for loc, expected, found in items:
        pos = src.locate(loc)
        where = "{}:{}:{}".format(*pos) if pos else next(iter(src.files))
        order = (files.index(pos[0]), pos[1], pos[2]) if pos else (0, 0, 0)
        rows.append((order, f"{where}: {field_path(loc)}: expected {expected}; found {found}"))
    rows.sort(key=lambda r: r[0])
    out: list[str] = []
    for _, line in rows:
        if line not in out:
            out.append(line)
    return out


def error_items(e: ValidationError) -> list[Problem]:
    items = []
    for err in e.errors():
        loc = tuple(err.get("loc", ()))
        if err.get("type", "").startswith("union_tag"):
            loc = loc + ("class",)  # point at the `class:` key (or its absence) of the agent
        expected, found = describe(err)
        items.append((loc, expected, found))
    return items
