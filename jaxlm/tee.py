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
import signal
import sys

# The first line of a C++ crash report: an absl/glog FATAL line; an ERROR line of JAX's
# coordination service (it precedes the fatal one); std::terminate; a failed check or a
# signal report of absl's failure handler.
_CRASH = re.compile(
    rb"(?:^|(?<=\r))(?:F\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] |"
    rb"E\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ coordination_service\S*:\d+\] |"
    rb"terminate called after throwing|\*\*\* (?:Check failure stack trace|SIG[A-Z]+ received))",
    re.M)
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
        self.report: bytes | None = None  # the crash report, once one started
        self.said = False  # jaxlm printed its own error line after the report started

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
        if self.report is None:
            text = self.line + chunk
            found = _CRASH.search(text)
            if found is None:
                self._show(chunk)
                self.line = text[text.rfind(b"\n") + 1:][-4096:]
                return
            self._show(text[len(self.line):found.start()] if found.start() > len(self.line)
                       else b"")
            self.report, chunk, self.line = b"", text[found.start():], b""
        self.line += chunk  # in a report: only jaxlm's own error lines reach the terminal
        *lines, self.line = self.line.split(b"\n")
        for line in lines:
            if line.startswith(_OWN_ERROR):
                self._show(line + b"\n")
                self.said = True
            if len(self.report) < _KEEP:
                self.report += line + b"\n"

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

    def close(self) -> None:
        if self.pending.strip(b"\r"):
            self.log.write(self.pending.rsplit(b"\r", 1)[-1] + b"\n")
        if self.report is not None and self.who is not None:
            report = (self.report + self.line).decode("utf-8", "replace")
            if self.line.startswith(_OWN_ERROR):
                self._show(self.line + b"\n")
            elif not self.said:
                line = summary(*self.who, report, self.log_path)
                self._show(line)
                self.log.write(line)
        self.log.close()


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the jaxlm process
    tee = Tee(argv[1], 1, (argv[2], argv[3]) if len(argv) > 3 else None)
    while True:
        chunk = os.read(0, 1 << 16)
        if not chunk:
            break
        tee.feed(chunk)
    tee.close()


if __name__ == "__main__":
    main(sys.argv)
