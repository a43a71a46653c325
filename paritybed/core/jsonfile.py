"""Reading a JSON artefact into its pydantic model, with errors a user can act on.

policy.json, baa-registry.json and profile.json are all read this way, so a missing file, bad
JSON or a schema problem is always an InputError naming the file, the field and the doc.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, TypeVar

from pydantic import BaseModel, ValidationError

from paritybed.core.errors import InputError

M = TypeVar("M", bound=BaseModel)


def load_model(path: str | Path, model: type[M], what: str, doc: str,
               check: Callable[[Any], None] | None = None) -> M:
    """Parse ``path`` as JSON and validate it as ``model``; ``what`` names the artefact in
    messages ("policy"), ``doc`` the page that documents it; ``check(raw)`` may raise an
    InputError before validation (e.g. a schema marker)."""
    p = Path(path)
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{p}: no such {what} file") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{p}: not a readable JSON {what} ({e})") from None
    if check is not None:
        check(raw)
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise InputError(f"{p}: invalid {what} at {loc}: {first['msg']} (see {doc})") from None
