"""The classifier on what real client libraries put on the wire: every request of every ordinary
operation (tests/client_ops.py: fhirpy, fhirclient, requests), recorded by a relay in front of
the embedded server, is plain, and the operation's requests together touch exactly the pairs the
FHIR grammar says the operation touches.  (The kernel half of the same claim runs the operations
under `paritybed enforce`: tests/test_kernel_clients.py.)"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

import client_ops
from paritybed.enforcer.classify import Stream
from paritybed.fhir.server import running_server
from wire import Relay, requests_in


@pytest.fixture(scope="module")
def relay():
    with running_server() as url:
        client_ops.seed(url)
        u = urlsplit(url)
        r = Relay((u.hostname, u.port))
        yield r, f"http://{r.address}{u.path}"
        r.close()


@pytest.mark.parametrize("name", [op.name for op in client_ops.OPERATIONS])
def test_every_request_is_plain_and_touches_what_the_grammar_says(relay, name: str) -> None:
    r, base = relay
    r.take()
    assert client_ops.run(base, [name])[0]["ok"]
    touched, seen = set(), []
    for stream in r.take():
        s = Stream()
        for raw in requests_in(stream):
            c = s.feed(raw)
            if c is None:
                continue
            s.commit(True)
            seen.append((raw[:120], c.shape))
            assert c.shape == "plain", (raw[:300], c)
            touched |= set(c.touches)
    assert seen, "the operation sent nothing"
    assert touched == set(client_ops.BY_NAME[name].touches), seen
