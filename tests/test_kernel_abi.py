"""enforcer/kernel_abi.py mirrors bpf/paritybed.h: every struct has the same size and every field
the same name, offset and size as clang lays it out (BCC compiles the header and reports the
layouts of map values it would create).  A change on one side only fails here, not in a map.
"""

from __future__ import annotations

import ctypes as ct

import pytest

from paritybed.enforcer import kernel_abi as abi
from paritybed.enforcer.kernel_load import BPF_DIR

@pytest.mark.bpf
def test_ctypes_mirror_matches_the_c_header() -> None:
    from bcc import BPF

    text = '#include "paritybed.h"\n' + "".join(f"BPF_ARRAY(m_{n}, struct {n}, 1);\n" for n in abi.STRUCTS)
    b = BPF(text=text.encode(), cflags=[f"-I{BPF_DIR}"])
    for name, mine in abi.STRUCTS.items():
        theirs = b[f"m_{name}".encode()].Leaf
        assert ct.sizeof(theirs) == ct.sizeof(mine), name
        c_fields = [(f[0], getattr(theirs, f[0]).offset, getattr(theirs, f[0]).size) for f in theirs._fields_]
        py_fields = [(f[0], getattr(mine, f[0]).offset, getattr(mine, f[0]).size) for f in mine._fields_]
        assert py_fields == c_fields, name
    b.cleanup()


def test_codes_follow_the_python_tuples() -> None:
    """The C constants are the Python ones: every decision and reason code of the header has the
    same name and value in kernel_abi, and the shape codes index policy.SHAPES."""
    from paritybed.enforcer.kernel_abi import REASONS
    from paritybed.enforcer.policy import SHAPES

    header = (BPF_DIR / "paritybed.h").read_text() + (BPF_DIR / "codes.h").read_text()  # the codes live in codes.h

    def value(macro: str) -> int:
        line = next(x for x in header.splitlines() if x.startswith(f"#define {macro} "))
        return int(line.split()[2])

    for macro, reason in [("R_LANE", "lane"), ("R_RATE", "rate-exceeded"), ("R_QUARANTINED", "quarantined"),
                          ("R_LANE_EXPIRED", "lane-expired"), ("R_UNCLASSIFIABLE", "unclassifiable"),
                          ("R_NOT_BAA", "egress-not-in-BAA"), ("R_NOT_ENVELOPE", "egress-not-in-envelope")]:
        assert REASONS[value(macro)] == reason
    reasons = [x.split()[1] for x in header.splitlines() if x.startswith("#define R_")]
    assert len(reasons) >= 10
    for macro in reasons:
        assert getattr(abi, macro) == value(macro), macro
    assert (abi.ALLOW, abi.DENY, abi.ALERT) == (value("PB_ALLOW"), value("PB_DENY"), value("PB_ALERT"))
    for macro, shape in [("S_BUNDLE", "bundle"), ("S_PIPELINED", "pipelined"), ("S_NOT_FHIR", "not-fhir"),
                         ("S_UNKNOWN_TYPE", "unknown-type"), ("S_METHOD_OVERRIDE", "method-override")]:
        assert SHAPES[value(macro) - 1] == shape
    assert value("I_HISTORY") == abi.INTERACTION_NAMES.index("history")
    assert abi.MODES == {"observe": value("M_OBSERVE"), "alert": value("M_ALERT"), "deny": value("M_DENY"),
                         "quarantine": value("M_QUARANTINE"), "kill": value("M_KILL")}
