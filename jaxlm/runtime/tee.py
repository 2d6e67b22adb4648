"""The tee behind a multi-process run's log: one stream of a jaxlm process, copied both to
where it went before (a terminal, a launcher's file) and to ``RUN_DIR/logs/process_N.log``.

It runs as a small program of its own (``python -I -S tee.py LOG [INDEX COUNT]``, standard
library only), not as a thread, so nothing is lost when the jaxlm process dies abruptly
(SIGABRT from JAX, SIGKILL): it reads to the end of the pipe and exits. In the log,
carriage-return redraws (progress bars) keep only their last state.

Given ``INDEX COUNT`` (the stderr tee), it also keeps C++ crash reports off the terminal.
When another process of the run dies, this one is often ended from C++ rather than Python:
JAX's coordination service aborts it (``Terminating process because the JAX distributed
service detected fatal errors``, with a stack trace) or gloo throws from its own thread
(``terminate called after throwing ...``). From the first line of such a report on, the
output goes to the log only, and when the stream ends the terminal gets one line instead::

    jaxlm: error: process 0 of 2 stopped: <the cause, in a few words>; ...

(unless jaxlm printed its own ``jaxlm: error:`` line meanwhile, which is passed through).
"""

from __future__ import annotations

import os
import re
import select
import signal
import sys
import time

# The first line of a C++ crash report: an absl/glog FATAL line, std::terminate, a failed
# check or a signal report of absl's failure handler; the process ends after any of them.
_GLOG = rb"\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ "
_FATAL = re.compile(
    rb"(?:^|(?<=\r))(?:F" + _GLOG + rb"\S+:\d+\] |terminate called after throwing|"
    rb"\*\*\* (?:Check failure stack trace|SIG[A-Z]+ received))", re.M)
# An ERROR line of JAX's coordination service: it usually precedes the fatal line by a few
# milliseconds, so it is held back (and shown after all if nothing fatal follows).
_WARNING = re.compile(rb"(?:^|(?<=\r))E" + _GLOG + rb"coordination_service\S*:\d+\] ", re.M)
RELEASE_S = 10.0  # held-back lines with nothing fatal after them are shown after this long
_OWN_ERROR = b"jaxlm: error:"
_KEEP = 1 << 16  # bytes of a crash report kept to describe it


def crash_cause(report: str) -> str:
    """Why the process was ended, in a few words, from the crash report's text."""
    peer = "another process has probably died or hung (see its log)"
    if "stopped sending heartbeats" in report:
        return ("JAX's coordination service found that another process stopped sending "
                "heartbeats: it died or hangs (see its log)")
    what = re.search(r"what\(\):\s*(.+)", report)
    if "terminate called after throwing" in report and "gloo" in report:
        detail = f" ({what.group(1).strip()[:160]})" if what else ""
        return f"a collective with the other processes failed in gloo{detail}: {peer}"
    if "JAX distributed service detected fatal errors" in report:
        status = re.search(r"absl::Status: (.+)", report)
        detail = f" ({status.group(1).strip()[:160]})" if status else ""
        return f"JAX's distributed service reported a fatal error{detail}: {peer}"
    first = report.strip().splitlines()[0] if report.strip() else "a C++ error"
    return re.sub(r"^[EF]\d{4} [\d:.]+ +\d+ \S+\] ", "", first)[:200]


def summary(index: str, count: str, report: str, log_path: str) -> bytes:
    """The one line the terminal gets for a crash report."""
    return (f"jaxlm: error: process {index} of {count} stopped: {crash_cause(report)}; "
            "relaunch the same command to resume from the last checkpoint (crash report: "
            f"{log_path})\n").encode()


class Tee:
    """Copies chunks to ``out_fd`` and to the log; see the module docstring."""

    def __init__(self, log_path: str, out_fd: int, who: tuple[str, str] | None) -> None:
        self.log_path = log_path
        self.log = open(log_path, "ab")  # noqa: SIM115 - open for the tee's whole life
        self.out_fd, self.out_ok, self.who = out_fd, True, who
        self.pending = b""  # the log's unfinished line
        self.line = b""  # the terminal's unfinished line (to spot a report's first line)
        self.hidden: bytes | None = None  # held back from the terminal since a report began
        self.fatal = False  # the held-back text holds a fatal line: the process is ending
        self.since = 0.0  # when holding back began
        self.scanned = 0  # bytes of `hidden` searched for jaxlm's own error lines
        self.said = False  # jaxlm's own error line was shown after the report began

    def _show(self, data: bytes) -> None:
        view = memoryview(data)
        while self.out_ok and view:
            try:
                view = view[os.write(self.out_fd, view):]
            except OSError:
                self.out_ok = False

    def _terminal(self, chunk: bytes) -> None:
        if self.who is None:
            self._show(chunk)
            return
        if self.hidden is None:
            text = self.line + chunk
            found = [m for m in (_FATAL.search(text), _WARNING.search(text)) if m is not None]
            if not found:
                self._show(chunk)
                self.line = text[text.rfind(b"\n") + 1:][-4096:]
                return
            start = min(m.start() for m in found)
            self._show(text[len(self.line):start] if start > len(self.line) else b"")
            self.hidden, self.line, self.since, self.scanned = b"", b"", time.monotonic(), 0
            chunk = text[start:]
        if len(self.hidden) < _KEEP:
            self.hidden += chunk
        if not self.fatal and _FATAL.search(self.hidden):
            self.fatal = True
        if self.fatal:  # jaxlm's own error line still reaches the terminal
            self._own_lines(final=False)
        elif len(self.hidden) >= _KEEP:
            self.release()

    def _own_lines(self, final: bool) -> None:
        assert self.hidden is not None
        end = len(self.hidden) if final else self.hidden.rfind(b"\n") + 1
        for line in self.hidden[self.scanned:end].splitlines():
            if line.startswith(_OWN_ERROR):
                self._show(line + b"\n")
                self.said = True
        self.scanned = max(self.scanned, end)

    def release(self) -> None:
        """Show what was held back (nothing fatal followed it) and go on as usual."""
        if self.hidden is not None and not self.fatal:
            self._show(self.hidden)
            self.line = self.hidden[self.hidden.rfind(b"\n") + 1:][-4096:]
            self.hidden = None

    def tick(self) -> None:
        """Called when no output came for a while: release lines held back too long."""
        if self.hidden is not None and time.monotonic() - self.since > RELEASE_S:
            self.release()

    def _to_log(self, chunk: bytes) -> None:
        self.pending += chunk
        *lines, self.pending = self.pending.split(b"\n")
        for line in lines:
            self.log.write(line.rstrip(b"\r").rsplit(b"\r", 1)[-1] + b"\n")
        cut = self.pending.rfind(b"\r")
        if cut > 0:
            self.pending = self.pending[cut:]
        self.log.flush()

    def feed(self, chunk: bytes) -> None:
        self._terminal(chunk)
        self._to_log(chunk)
        self.tick()

    def close(self) -> None:
        """At the end of the stream: after a fatal report, one summary line (unless jaxlm
        said its own); held-back lines without one are shown, or only jaxlm's own error
        line if the process printed one."""
        if self.pending.strip(b"\r"):
            self.log.write(self.pending.rsplit(b"\r", 1)[-1] + b"\n")
        if self.hidden is not None:
            if not self.fatal and _OWN_ERROR not in self.hidden:
                self.release()
            else:
                self._own_lines(final=True)
                if not self.said:
                    line = summary(*self.who or ("?", "?"),
                                   self.hidden.decode("utf-8", "replace"), self.log_path)
                    self._show(line)
                    self.log.write(line)
        self.log.close()


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the jaxlm process
    tee = Tee(argv[1], 1, (argv[2], argv[3]) if len(argv) > 3 else None)
    while True:
        if not select.select([0], [], [], RELEASE_S / 4)[0]:
            tee.tick()
            continue
        chunk = os.read(0, 1 << 16)
        if not chunk:
            break
        tee.feed(chunk)
    tee.close()


if __name__ == "__main__":
    main(sys.argv)
