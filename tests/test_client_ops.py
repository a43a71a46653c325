"""Ordinary operations of real FHIR client libraries against the embedded server, unenforced:
every one must succeed (tests/client_ops.py holds the operations and what each touches)."""

from __future__ import annotations

import pytest

import client_ops
from paritybed.core import r4spec
from paritybed.enforcer.policy import INTERACTIONS
from paritybed.fhir.server import running_server


@pytest.fixture(scope="module")
def base() -> str:
    with running_server() as url:
        client_ops.seed(url)
        client_ops.seed(url)  # idempotent
        yield url


@pytest.mark.parametrize("name", [op.name for op in client_ops.OPERATIONS])
def test_operation_succeeds(base: str, name: str) -> None:
    result = client_ops.run(base, [name])[0]
    assert result["ok"], result["error"]


def test_operations_succeed_again(base: str) -> None:
    """A second run (the lead runs them unenforced, then enforced) sees the first one's writes."""
    failed = [r for r in client_ops.run(base) if not r["ok"]]
    assert not failed, failed


def test_touches_are_r4_pairs() -> None:
    assert len(client_ops.OPERATIONS) >= 30
    assert {op.library for op in client_ops.OPERATIONS} == {"fhirpy", "fhirclient", "requests"}
    for op in client_ops.OPERATIONS:
        assert op.touches, op.name
        for rtype, interaction in op.touches:
            assert r4spec.is_resource_type(rtype) and interaction in INTERACTIONS, (op.name, rtype, interaction)


def test_untyped_include_touches_every_target() -> None:
    """fhirclient cannot type an include: it touches every target R4 gives Observation.subject."""
    op = client_ops.BY_NAME["fc-include-untyped"]
    targets = r4spec.search_params("Observation")["subject"].targets
    assert {t for t, i in op.touches if i == "read"} == set(targets)


def test_command_line(base: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert client_ops.main(["run", base, "fp-read", "rq-head"]) == 0
    assert capsys.readouterr().out.count('"ok": true') == 2
    assert client_ops.main(["run", base, "no-such-op"]) == 2
    assert client_ops.main(["list"]) == 0
