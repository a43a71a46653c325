"""Hash-chained logs and their signed checkpoints (paritybed/hashlog.py), without the kernel.

The chain alone cannot see a removed tail; a log written with a checkpoint key must end with a
final checkpoint whose MAC only the key holder can make, so every cut is detected, and the
problem names the last checkpoint that still holds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from paritybed.core.errors import InputError
from paritybed.core.hashlog import GENESIS, HashLog, key_id, read_checkpoint_key, verify

KEY = b"k" * 32
AT = "2026-12-03T12:00:00Z"


def write(path: Path, n: int, *, key: bytes | None = KEY, every: int = 4, final: bool = True) -> list[str]:
    """n event records with a checkpoint after every ``every`` of them (and a final one)."""
    with HashLog(path, checkpoint_key=key) as log:
        for i in range(n):
            log.append({"event": "deny", "i": i})
            if key is not None and (i + 1) % every == 0:
                log.checkpoint(at=AT)
        if key is not None and final:
            log.checkpoint(at=AT, final=True)
    return path.read_text().splitlines(keepends=True)


def cut(path: Path, lines: list[str], keep: int) -> Path:
    path.write_text("".join(lines[:keep]))
    return path


def test_plain_chain_cannot_see_a_removed_tail_but_checkpoints_can(tmp_path):
    plain = tmp_path / "plain.jsonl"
    lines = write(plain, 6, key=None)
    assert verify(cut(plain, lines, 5)).ok  # the gap this module closes: order and content only
    signed = tmp_path / "signed.jsonl"
    lines = write(signed, 6)
    v = verify(signed, KEY)
    assert v.ok and v.records == 6 + 1 + 1 and "final checkpoint" in v.anchor
    assert v.last_hash == json.loads(lines[-1])["hash"]


@pytest.mark.parametrize("removed", [1, 2, 3])
def test_removing_the_last_k_records_is_detected_naming_the_last_checkpoint(tmp_path, removed):
    p = tmp_path / "events.jsonl"
    lines = write(p, 6)  # records: e0..e3, cp(line 5), e4, e5, final cp (line 8)
    v = verify(cut(p, lines, len(lines) - removed), KEY)
    assert not v.ok and v.first_bad == len(lines) - removed + 1
    assert "without a final checkpoint" in v.problem and "line 5" in v.problem
    assert f"ends {3 - removed} record(s) after its last checkpoint" in v.problem


def test_emptying_the_file_is_detected(tmp_path):
    p = tmp_path / "events.jsonl"
    write(p, 3)
    p.write_text("")
    v = verify(p, KEY)
    assert not v.ok and v.records == 0 and "empty" in v.problem


def test_a_shorter_valid_chain_in_its_place_is_detected(tmp_path):
    p = tmp_path / "events.jsonl"
    write(p, 6)
    write(p.with_name("short.jsonl"), 2, key=None)  # a valid chain, but nobody with the key signed it
    os.replace(p.with_name("short.jsonl"), p)
    v = verify(p, KEY)
    assert not v.ok and "none of its 2 records is a checkpoint" in v.problem


def test_rolling_back_to_an_earlier_checkpoint_is_detected(tmp_path):
    p = tmp_path / "events.jsonl"
    lines = write(p, 8)  # checkpoints at lines 5 and 10, final at 11
    v = verify(cut(p, lines, 10), KEY)  # everything after the second checkpoint, the final one included
    assert not v.ok and "line 10" in v.problem and "ends 0 record(s)" in v.problem


def test_a_forged_final_checkpoint_fails_its_mac(tmp_path):
    p = tmp_path / "events.jsonl"
    lines = write(p, 6)
    cut(p, lines, 6)  # drop the last event and the final checkpoint ...
    with HashLog(p, checkpoint_key=b"f" * 32) as log:  # ... and sign a new end with a key of one's own
        log.checkpoint(at=AT, final=True)
    v = verify(p, KEY)
    assert not v.ok and v.first_bad == 7 and "MAC does not verify" in v.problem
    assert key_id(b"f" * 32) in v.problem and key_id(KEY) in v.problem


def test_a_log_continued_after_a_final_checkpoint_needs_a_new_one(tmp_path):
    """A control plane that adopts the pinned state continues the log: it must close it again."""
    p = tmp_path / "events.jsonl"
    write(p, 2)
    with HashLog(p, checkpoint_key=KEY) as log:
        log.append({"event": "control-plane-start"})
    assert not verify(p, KEY).ok
    with HashLog(p, checkpoint_key=KEY) as log:
        assert log.records == 4
        log.checkpoint(at=AT, final=True)
    assert verify(p, KEY).ok


def test_an_edited_checkpoint_breaks_the_chain_even_with_its_hash_recomputed(tmp_path):
    from paritybed.core.hashlog import record_hash

    p = tmp_path / "events.jsonl"
    lines = write(p, 4)
    rec = json.loads(lines[-1])
    rec["checkpoint"]["at"] = "2030-01-01T00:00:00Z"
    rec["hash"] = record_hash(rec)
    p.write_text("".join(lines[:-1]) + json.dumps(rec) + "\n")
    v = verify(p, KEY)
    assert not v.ok and "MAC does not verify" in v.problem


def test_checkpoint_key_file_is_created_private_and_refused_when_others_can_read_it(tmp_path):
    k = tmp_path / "keys" / "checkpoint.key"
    key = read_checkpoint_key(k, create=True)
    assert len(key) == 32 and (k.stat().st_mode & 0o777) == 0o600
    assert read_checkpoint_key(k) == key  # an existing key is kept
    k.chmod(0o640)
    with pytest.raises(InputError, match="accessible to group or others"):
        read_checkpoint_key(k)
    with pytest.raises(InputError, match="no such checkpoint key"):
        read_checkpoint_key(tmp_path / "none.key")


def test_genesis_is_the_last_hash_of_an_empty_log(tmp_path):
    p = tmp_path / "e.jsonl"
    p.write_text("")
    v = verify(p)
    assert v.ok and v.records == 0 and v.last_hash == GENESIS


def test_periodic_checkpoints_come_only_when_due_and_only_after_new_records(tmp_path):
    p = tmp_path / "events.jsonl"
    with HashLog(p, checkpoint_key=KEY) as log:
        assert log.checkpoint_if_due(5.0, now=100.0) is None  # starts the clock
        log.append({"event": "deny"})
        assert log.checkpoint_if_due(5.0, now=104.9) is None  # not yet due
        cp = log.checkpoint_if_due(5.0, now=105.0)
        assert cp is not None and cp["seq"] == 1 and cp["checkpoint"]["final"] is False
        assert log.checkpoint_if_due(5.0, now=200.0) is None  # nothing new to vouch for
        log.append({"event": "alert"})  # after a quiet spell: due at once (the last checkpoint is old)
        assert log.checkpoint_if_due(5.0, now=201.0) is not None
        log.append({"event": "deny"})
        assert log.checkpoint_if_due(5.0, now=205.0) is None and log.checkpoint_if_due(5.0, now=206.0) is not None
        log.checkpoint(final=True)
    assert verify(p, KEY).ok and verify(p, KEY).records == 7
    with HashLog(tmp_path / "plain.jsonl") as plain:
        plain.append({"event": "deny"})
        assert not plain.signed and plain.checkpoint_if_due(0.0, now=1e9) is None


def test_verify_log_command_with_the_key_and_the_enforce_summary_anchor(tmp_path, paritybed_cli):
    """What `paritybed enforce` leaves in --out (a signed events.jsonl, summary.json with its
    anchor), checked by `paritybed verify-log --key` as its README line says, without the kernel."""
    from paritybed.parity.anchors import log_anchor

    key = tmp_path / "keys" / "checkpoint.key"
    k = read_checkpoint_key(key, create=True)
    log = tmp_path / "out" / "events.jsonl"
    lines = write(log, 6, key=k)
    (log.parent / "summary.json").write_text(json.dumps({"logs": {"events.jsonl": log_anchor(log)}}))

    def call(*args: str) -> tuple[int, str]:
        code, text = paritybed_cli("verify-log", *args)
        return code, " ".join(text.split())  # without the console's line wrapping

    code, text = call(str(log), "--key", str(key))
    assert code == 0 and "vouched for by its final checkpoint" in text and "summary.json" in text
    log.write_text("".join(lines[:-2]))
    code, text = call(str(log), "--key", str(key))
    assert code == 1 and "without a final checkpoint" in text
    code, text = call(str(log))
    assert code == 1 and "the last 2 record(s) are missing" in text and "summary.json" in text
    code, text = call(str(log), "--key", str(tmp_path / "other.key"))
    assert code == 2 and "no such checkpoint key" in text


def test_a_record_cannot_pass_itself_off_as_a_checkpoint_or_carry_chain_keys(tmp_path):
    with HashLog(tmp_path / "e.jsonl") as log:
        for key in ("checkpoint", "mac", "seq", "hash"):
            with pytest.raises(ValueError, match="belong to the chain"):
                log.append({"event": "deny", key: 1})
