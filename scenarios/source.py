"""A scenario file as data: YAML read with the position of every key, and ``extends:`` resolved.

``extends: <library name or relative path>`` makes a file a variant of another: the parent is read
first (it may extend a third), then the child is merged over it, key by key (a deep merge):

* a mapping in the child merges into the parent's mapping of the same key;
* anything else the child writes (a number, a string, a list, null) replaces the parent's value
  whole: a list is never merged item by item.

Every key and list item of the merged document remembers the file, line and column it was
written at, so a validation error names the child or the parent, wherever the bad value is.  A
library name is a file of the scenario library (this package's folder, ``<name>.yaml``); anything
with a ``/`` or ending in ``.yaml``/``.yml`` is a path relative to the file that names it.  A
missing parent or a cycle is an error naming the ``extends:`` line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paritybed.scenarios.base import UNION_TAGS, ScenarioError, yaml_key

LIBRARY = Path(__file__).resolve().parent

#: (file as shown to the user, line, column), 1-based
Position = tuple[str, int, int]


@dataclass
class Source:
    """The merged document of a scenario file and its parents (module doc)."""

    data: dict[str, Any]
    positions: dict[tuple[Any, ...], Position]
    files: dict[str, Path] = field(default_factory=dict)  # as shown -> path: the file first, then its parents

    def locate(self, loc: tuple[Any, ...]) -> Position | None:
        """Where the deepest key of a pydantic error path was written (the key of a mapping
        entry, or the item of a list); union tags in the path are skipped."""
        path: tuple[Any, ...] = ()
        best = self.positions.get(path)
        for part in loc:
            if part in UNION_TAGS and path + (part,) not in self.positions:
                continue  # a discriminated-union tag in the error path, not a YAML key
            step = path + (yaml_key(part),)
            if step not in self.positions:
                break
            path = step
            best = self.positions[path]
        return best

    def written_in(self, path: tuple[Any, ...]) -> Path:
        """The file that wrote the value at ``path`` (a relative path there is relative to it)."""
        pos = self.positions.get(path)
        return self.files[pos[0]] if pos is not None else next(iter(self.files.values()))


def read_source(path: str | Path) -> Source:
    """The scenario file at ``path`` with its ``extends:`` chain resolved and merged."""
    return _read(Path(path), str(path), ())


def read_yaml(path: str | Path, what: str) -> Source:
    """Another YAML mapping file of this format family (``what``: "sweep spec") with the position
    of every key, for errors that name file:line:col; no ``extends:``."""
    shown = str(path)
    positions: dict[tuple[Any, ...], Position] = {(): (shown, 1, 1)}
    data = _positions(_load_yaml(Path(path), shown, what), shown, (), positions)
    return Source(data, positions, {shown: Path(path)})


def library_names() -> list[str]:
    return sorted(p.stem for p in LIBRARY.glob("*.yaml"))


# ------------------------------------------------------------------------------------ one file
def _yaml():
    from ruamel.yaml import YAML

    y = YAML(typ="rt")
    y.allow_duplicate_keys = False
    return y


def _load_yaml(p: Path, shown: str, what: str = "scenario") -> Any:
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(f"{shown}: no such {what} file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ScenarioError(f"{shown}: cannot read the {what}: {e}") from None
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    try:
        data = _yaml().load(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{shown}:{mark.line + 1}:{mark.column + 1}" if mark else shown
        raise ScenarioError(f"{where}: not valid YAML: {e.problem or e.context}") from None
    except YAMLError as e:
        raise ScenarioError(f"{shown}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{shown}:1:1: expected a mapping of {what} fields, found {type(data).__name__}")
    return data


def _positions(node: Any, shown: str, path: tuple[Any, ...], out: dict[tuple[Any, ...], Position]) -> Any:
    """Record the position of every key and list item under ``node``; return it as plain data
    (ruamel's commented containers -> dicts and lists: pydantic validates plain data)."""
    lc = getattr(node, "lc", None)
    if isinstance(node, dict):
        plain = {}
        for k, v in node.items():
            key = str(k)
            if lc is not None:
                ln, col = lc.key(k)
                out[path + (key,)] = (shown, ln + 1, col + 1)
            plain[key] = _positions(v, shown, path + (key,), out)
        return plain
    if isinstance(node, list):
        items = []
        for i, v in enumerate(node):
            if lc is not None:
                ln, col = lc.item(i)
                out[path + (i,)] = (shown, ln + 1, col + 1)
            items.append(_positions(v, shown, path + (i,), out))
        return items
    return _scalar(node)


def _scalar(node: Any) -> Any:
    """ruamel's scalar subclasses (folded strings, scalar floats...) as the plain Python value."""
    for plain in (bool, str, int, float):
        if isinstance(node, plain) and type(node) is not plain:
            return plain(node)
    return node


# ------------------------------------------------------------------------------------ extends
def _read(p: Path, shown: str, chain: tuple[Path, ...]) -> Source:
    node = _load_yaml(p, shown)
    positions: dict[tuple[Any, ...], Position] = {(): (shown, 1, 1)}
    data = _positions(node, shown, (), positions)
    if "extends" not in data:
        return Source(data, positions, {shown: p})
    where = "{}:{}:{}".format(*positions[("extends",)])
    parent_ref = data.pop("extends")
    positions = {k: v for k, v in positions.items() if k[:1] != ("extends",)}
    parent, parent_shown = _parent(parent_ref, p, shown, where)
    me = p.resolve()
    if me in chain or parent.resolve() == me or parent.resolve() in chain:
        names = " -> ".join([str(x.name) for x in chain + (me,)] + [parent.name])
        raise ScenarioError(f"{where}: extends: expected a scenario that does not extend this one again; "
                            f"found a cycle {names}")
    base = _read(parent, parent_shown, chain + (me,))
    merged_data, merged_pos = _merge(base.data, base.positions, data, positions, ())
    merged_pos[()] = (shown, 1, 1)
    return Source(merged_data, merged_pos, {shown: p, **base.files})


def _parent(ref: Any, child: Path, shown: str, where: str) -> tuple[Path, str]:
    """The parent file an ``extends:`` value names, and how to show it in messages."""
    names = ", ".join(library_names())
    if not isinstance(ref, str) or not ref.strip():
        raise ScenarioError(f"{where}: extends: expected a library scenario name ({names}) or a path relative to "
                            f"this file; found {ref!r}")
    if "/" in ref or ref.endswith((".yaml", ".yml")):
        target = child.parent / ref
        target_shown = os.path.normpath(os.path.join(os.path.dirname(shown), ref))
        what = f"the file {target_shown}"
    else:
        target = LIBRARY / f"{ref}.yaml"
        target_shown = _display(target)
        what = f"a library scenario named {ref!r}"
    if not target.is_file():
        raise ScenarioError(f"{where}: extends: expected a library scenario name ({names}) or a path relative to "
                            f"this file; found {ref!r} ({what} does not exist)")
    return target, target_shown


def _display(p: Path) -> str:
    """A library file as the user can open it: relative to the working folder when inside it."""
    try:
        return os.path.relpath(p) if not os.path.relpath(p).startswith("..") else str(p)
    except ValueError:
        return str(p)


def _merge(base: dict[str, Any], base_pos: dict[tuple[Any, ...], Position], over: dict[str, Any],
           over_pos: dict[tuple[Any, ...], Position], path: tuple[Any, ...]) -> tuple[dict[str, Any], dict]:
    """Deep merge of ``over`` into ``base`` (module doc), positions following the values."""
    data = dict(base)
    pos = dict(base_pos) if not path else base_pos
    for key, value in over.items():
        here = path + (key,)
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key], pos = _merge(data[key], pos, value, over_pos, here)
            pos[here] = over_pos[here]
            continue
        for k in [k for k in pos if k[:len(here)] == here]:
            del pos[k]
        pos.update({k: v for k, v in over_pos.items() if k[:len(here)] == here})
        data[key] = value
    return data, pos

