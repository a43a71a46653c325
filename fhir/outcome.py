"""FHIR errors as OperationOutcome with the HTTP status the spec asks for.

Every failure of the embedded server is a `FhirError` raised where it is detected (search
parsing, storage, bundle processing) and rendered once, by the app's exception handler or by
the batch processor, as an OperationOutcome body.  Keeping status, issue code and text together
means a client (or a bundle entry's ``response``) always gets the same answer for the same fault.
"""

from __future__ import annotations

from typing import Any

import orjson

#: OperationOutcome issue type per HTTP status (FHIR R4 issue-type value set).
_ISSUE_CODE = {
    400: "invalid",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    409: "conflict",
    410: "deleted",
    412: "conflict",
    415: "not-supported",
    422: "processing",
    500: "exception",
    501: "not-supported",
}

FHIR_JSON = "application/fhir+json; charset=utf-8"


class FhirError(Exception):
    """A FHIR interaction that failed with `status`; `diagnostics` is the human text."""

    def __init__(
        self,
        status: int,
        diagnostics: str,
        *,
        code: str | None = None,
        expression: list[str] | None = None,
        extra: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.diagnostics = diagnostics
        self.code = code or _ISSUE_CODE.get(status, "processing")
        self.expression = expression
        self.extra = extra or []

    def outcome(self) -> dict[str, Any]:
        """The OperationOutcome resource describing this error."""
        issue: dict[str, Any] = {"severity": "error", "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            issue["expression"] = self.expression
        return {"resourceType": "OperationOutcome", "issue": [issue, *self.extra]}

    def body(self) -> bytes:
        return orjson.dumps(self.outcome())


def information(text: str) -> dict[str, Any]:
    """An informational OperationOutcome (successful delete, Prefer: return=OperationOutcome)."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "information", "code": "informational", "diagnostics": text}],
    }


def status_line(status: int) -> str:
    """A bundle entry's ``response.status``: the code and its reason phrase, as HAPI writes it."""
    from http import HTTPStatus

    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)
