"""What may leave a hospital's audit export for a profile: codes, never identities.

A profile built from production AuditEvents must carry no patient, record or clinician identity
and no names.  Rather than trying to recognise a name or an MRN (which always misses some), the
profile builder fails closed: every string that reaches profile.json is either a member of a
fixed vocabulary (R4 resource types, FHIR interactions) or a *code* as defined here, taken from a
coded field or from the mapping of client ids to agent classes the user provides.  Display
strings, descriptions, details, references and identifiers are never copied; replica streams are
renamed ``<class>#<n>``.  A value that must be a code and is not one is refused with the file, the
line and the field (docs/parity.md, "Profiles from AuditEvent").
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import RootModel

from paritybed.core.errors import InputError
from paritybed.core.jsonfile import load_model

#: A code: lower-case words of letters and digits joined by "-" or "_" ("prior_auth", "code_blue",
#: "scribe-llm").  No spaces, capitals, dots, "@" or "/" (names, e-mails, references), at most 32
#: characters and at most 3 digits (no MRN, no numeric or UUID id fits).
CODE = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")
CODE_MAX = 32
CODE_MAX_DIGITS = 3


def is_code(value: object) -> bool:
    """Whether ``value`` may stand in a profile (see CODE)."""
    return (isinstance(value, str) and len(value) <= CODE_MAX and CODE.fullmatch(value) is not None
            and sum(c.isdigit() for c in value) <= CODE_MAX_DIGITS)


def require_code(value: object, where: str) -> str:
    """``value`` if it is a code, else an InputError naming ``where`` (file:line: field)."""
    if is_code(value):
        return str(value)
    shown = value if not isinstance(value, str) or len(value) <= 40 else value[:37] + "..."
    raise InputError(f"{where} is {shown!r}: expected a code (lower-case letters, digits, '-' or '_'; at most "
                     f"{CODE_MAX} characters and {CODE_MAX_DIGITS} digits), not a name, an id or free text; "
                     "paritybed refuses to copy it into a de-identified profile",
                     hint="see docs/parity.md, 'Profiles from AuditEvent'")


class AgentClasses(RootModel[dict[str, str]]):
    """client id -> agent class, as the user writes it (``paritybed profile --agent-classes``)."""


def load_agent_classes(path: str | Path) -> dict[str, str]:
    """The user's mapping of client ids (as in ``agent.who.identifier.value`` or ``who.reference``)
    to agent classes: a JSON object; every class must be a code."""
    p = Path(path)

    def is_object(raw: object) -> None:
        if not isinstance(raw, dict) or not raw:
            raise InputError(f"{p}: expected a JSON object mapping client ids to agent classes, "
                             'e.g. {"cds-client-7f3a": "cds"}')

    m = load_model(p, AgentClasses, "agent-class mapping", "docs/parity.md", check=is_object)
    return {k: require_code(v, f"{p}: the class of client {k!r}") for k, v in m.root.items()}
