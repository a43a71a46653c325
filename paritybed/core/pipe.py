"""The worker pipe protocol: a child process reads one JSON command per line on stdin and answers
each with one JSON line on stdout, until end of input or ``{"op": "quit"}`` (``"exit"`` too).

Every process paritybed drives inside a cgroup speaks it: the live replica worker
(``python -m paritybed.agents.live``) and the scripted network probe of the kernel tests and
benchmarks (``python -m paritybed.enforcer.probe``).  ``serve`` is the child's loop, ``PipeWorker``
the parent's end.  A child the kernel's ``kill`` response killed simply stops answering: ``ask``
returns None and the caller decides what that means.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import IO, Any, Callable, Mapping

STOP_OPS = ("quit", "exit")

Handler = Callable[[dict[str, Any]], dict[str, Any]]


def serve(handle: Handler, *, invalid: Callable[[str], dict[str, Any]] | None = None,
          stdin: IO[str] | None = None, stdout: IO[str] | None = None) -> int:
    """The child's loop: ``handle(command)`` for each line, its answer written and flushed at once.
    A line that is not a JSON object is answered with ``invalid(message)`` (default: ok false)."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    for line in stdin:
        line = line.strip()
        if not line:
            continue
        try:
            cmd = json.loads(line)
            if not isinstance(cmd, dict):
                raise ValueError("a command is a JSON object")
        except ValueError as e:
            answer = (invalid or _invalid)(f"not JSON: {e}")
        else:
            if cmd.get("op") in STOP_OPS:
                break
            answer = handle(cmd)
        stdout.write(json.dumps(answer, separators=(",", ":")) + "\n")
        stdout.flush()
    return 0


def _invalid(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


class PipeWorker:
    """The parent's end: a child started with text pipes (``stdin=PIPE, stdout=PIPE, text=True``)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc

    def ask(self, cmd: Mapping[str, Any]) -> dict[str, Any] | None:
        """Send one command and wait for its answer; None when the child is gone (no answer)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(cmd, separators=(",", ":")) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, ValueError):  # ValueError: the pipe was already closed
            return None
        return json.loads(line) if line else None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self, timeout: float = 10) -> int:
        """Ask the child to quit and wait for it (killed if it does not); its exit code."""
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write('{"op":"quit"}\n')
                self.proc.stdin.close()
                return self.proc.wait(timeout=timeout)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
        return self.proc.wait()
