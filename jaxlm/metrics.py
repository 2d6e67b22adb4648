"""Where the numbers go: TensorBoard event files, a JSONL log and the terminal; and viewing them.

Only process 0 writes (other processes get a writer that does nothing). Event files go to
``RUN_DIR/tensorboard``, written with the ``tensorboard`` package's own event-file writer and
protos (no TensorFlow; and not tensorboardX, whose import pulls in PyTorch when it is
installed, seconds of start-up). Every scalar, text and event also goes to
``RUN_DIR/metrics.jsonl``, one JSON object per line (``{"step": ..., "time": ..., "<tag>":
value, ...}``), so runs can be read without TensorBoard.

Tags: ``train/*`` and ``eval/*`` scalars, ``memory/*`` (bytes per device, at start-up),
``samples`` (generated text), ``config`` (the resolved config as JSON) plus TensorBoard
hparams, and ``event/<name>`` (text) with ``event/<name>/<key>`` scalars for events such as
checkpoint saves.

:func:`serve_tensorboard` runs the ``tensorboard`` program on a run directory
(``jaxlm tensorboard RUN_DIR``), bound to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
from tensorboard.plugins.hparams import metadata as hparams_meta
from tensorboard.plugins.text import metadata as text_meta
from tensorboard.summary.writer import event_file_writer
from tensorboard.summary.writer.record_writer import RecordWriter
from tensorboard.util import tensor_util

from jaxlm.errors import TrainingError, UserError
from jaxlm.runtime.quiet import quiet_writer_thread
from jaxlm.runtime.rundir import write_error

# Metric tags the TensorBoard hparams dashboard shows next to each run's hyperparameters.
JSONL = "metrics.jsonl"
HPARAM_METRICS = ("train/loss", "eval/loss", "eval/perplexity", "train/tokens_per_sec",
                  "train/mfu")


class TensorBoardWriter:
    """Scalars, Markdown text and hparams as TensorBoard summaries, in one event file.

    A thin layer over ``tensorboard.summary.writer.event_file_writer`` (which writes in a
    background thread and flushes every ``flush_secs``) that builds the summary protos the
    scalars, text and hparams plugins read.
    """

    def __init__(self, logdir: str | Path, flush_secs: int = 10) -> None:
        thread = getattr(event_file_writer, "_AsyncWriterThread", None)
        if thread is not None:  # its OSError is raised again in the caller's thread, and told
            quiet_writer_thread(thread)
        self._writer = event_file_writer.EventFileWriter(str(logdir), flush_secs=flush_secs)
        self._text_meta = text_meta.create_summary_metadata(display_name="", description="")
        self._text_meta.data_class = summary_pb2.DATA_CLASS_TENSOR

    def _add(self, step: int, value: Any) -> None:
        event = event_pb2.Event(wall_time=time.time(), step=int(step))
        event.summary.value.append(value)
        self._writer.add_event(event)

    def scalar(self, step: int, tag: str, value: float) -> None:
        # A classic ``simple_value``: read as a scalar by TensorBoard and by every reader of
        # event files, including ``EventAccumulator.Scalars``.
        self._add(step, summary_pb2.Summary.Value(tag=tag, simple_value=value))

    def text(self, step: int, tag: str, text: str) -> None:
        self._add(step, summary_pb2.Summary.Value(
            tag=tag, tensor=tensor_util.make_tensor_proto(text.encode()),
            metadata=self._text_meta))

    def hparams_start(self, hparams: dict[str, bool | int | float | str],
                      metrics: tuple[str, ...]) -> None:
        """The experiment (hparam names and types, metric tags) and this run's values."""
        start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
        infos = []
        for k, v in hparams.items():
            if isinstance(v, bool):
                start.hparams[k].bool_value, kind = v, "DATA_TYPE_BOOL"
            elif isinstance(v, (int, float)):
                start.hparams[k].number_value, kind = float(v), "DATA_TYPE_FLOAT64"
            else:
                start.hparams[k].string_value, kind = str(v), "DATA_TYPE_STRING"
            infos.append(api_pb2.HParamInfo(name=k, type=api_pb2.DataType.Value(kind)))
        experiment = api_pb2.Experiment(
            hparam_infos=infos, time_created_secs=time.time(),
            metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=m)) for m in metrics])
        self._hparams(plugin_data_pb2.HParamsPluginData(experiment=experiment))
        self._hparams(plugin_data_pb2.HParamsPluginData(session_start_info=start))

    def hparams_end(self, success: bool) -> None:
        status = api_pb2.Status.Value("STATUS_SUCCESS" if success else "STATUS_FAILURE")
        end = plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=time.time())
        self._hparams(plugin_data_pb2.HParamsPluginData(session_end_info=end))

    def _hparams(self, data: Any) -> None:
        tag = {"experiment": hparams_meta.EXPERIMENT_TAG,
               "session_start_info": hparams_meta.SESSION_START_INFO_TAG,
               "session_end_info": hparams_meta.SESSION_END_INFO_TAG}[data.WhichOneof("data")]
        meta = hparams_meta.create_summary_metadata(data)
        meta.data_class = summary_pb2.DATA_CLASS_TENSOR
        self._add(0, summary_pb2.Summary.Value(tag=tag, tensor=hparams_meta.NULL_TENSOR,
                                               metadata=meta))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class MetricsWriter:
    """Scalars, text, events and hyperparameters → ``RUN_DIR/tensorboard`` and
    ``RUN_DIR/metrics.jsonl``. A disabled writer (``enabled=False``, as on processes other
    than 0) accepts every call and writes nothing.

    ``resume_step``: the step a run continues from (0 when it starts afresh). What an earlier
    attempt logged after that step is dropped from ``metrics.jsonl`` and the event files
    first, since the run redoes those steps: each step is recorded once, by the attempt whose
    state the run kept. A failed write (a full disk) raises a one-line error (see
    :func:`jaxlm.runtime.rundir.write_error`).
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = True,
                 jsonl: bool = True, flush_secs: int = 10,
                 resume_step: int | None = None) -> None:
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self._tb: TensorBoardWriter | None = None
        self._jsonl = None
        self._hparams_written = False
        if not enabled:
            return
        with self._writing():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if resume_step is not None:
                drop_after(self.run_dir, resume_step)
            if tensorboard:
                self._tb = TensorBoardWriter(self.run_dir / "tensorboard", flush_secs=flush_secs)
            if jsonl:
                self._jsonl = open(self.run_dir / JSONL, "a", buffering=1)  # noqa: SIM115

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        try:
            yield
        except OSError as e:
            raise write_error(f"the metrics in {self.run_dir}", e) from None

    def _line(self, step: int, values: dict[str, Any]) -> None:
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({"step": step, "time": time.time(), **values}) + "\n")

    def scalars(self, step: int, values: dict[str, Any], prefix: str = "") -> None:
        """Log a dict of scalars under ``prefix + name`` at ``step`` (e.g. ``train/loss``)."""
        if not self.enabled:
            return
        clean = {f"{prefix}{k}": float(np.asarray(v)) for k, v in values.items()}
        with self._writing():
            if self._tb is not None:
                for k, v in clean.items():
                    self._tb.scalar(step, k, v)
            # NaN/inf become null: strict JSON has no literal for them.
            self._line(step, {k: v if math.isfinite(v) else None for k, v in clean.items()})

    def text(self, step: int, tag: str, text: str) -> None:
        """A piece of text (a generated sample, a note) at ``step``; shown as Markdown."""
        if not self.enabled:
            return
        with self._writing():
            if self._tb is not None:
                self._tb.text(step, tag, text)
            self._line(step, {tag: text})

    def event(self, step: int, name: str, **info: Any) -> None:
        """Something that happened at ``step``, e.g. ``event(100, "checkpoint",
        path="runs/x/checkpoints/100", seconds=1.2)``.

        TensorBoard gets a text entry ``event/<name>`` listing ``info`` and a scalar
        ``event/<name>/<key>`` for each numeric value (so save times can be plotted); the
        JSONL line is ``{"step", "time", "event": name, **info}``.
        """
        if not self.enabled:
            return
        with self._writing():
            if self._tb is not None:
                desc = ", ".join(f"{k}={v}" for k, v in info.items())
                self._tb.text(step, f"event/{name}",
                              f"**{name}** at step {step}" + (f": {desc}" if desc else ""))
                for k, v in info.items():
                    if isinstance(v, (int, float, np.number)) and not isinstance(v, bool):
                        self._tb.scalar(step, f"event/{name}/{k}", float(v))
            self._line(step, {"event": name, **{k: _jsonable(v) for k, v in info.items()}})

    def config(self, cfg: dict[str, Any]) -> None:
        """The resolved config, as pretty JSON text (tag ``config``) and as TensorBoard hparams
        (every leaf as ``section.key``), linked to :data:`HPARAM_METRICS`."""
        if not self.enabled or self._tb is None:
            return
        flat = {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
                for k, v in _flatten(cfg).items() if v is not None}
        with self._writing():
            self._tb.text(0, "config", "```\n" + json.dumps(cfg, indent=2) + "\n```")
            self._tb.hparams_start(flat, HPARAM_METRICS)
        self._hparams_written = True

    def flush(self) -> None:
        if self._tb is not None:
            with self._writing():
                self._tb.flush()

    def close(self, success: bool = True) -> None:
        """Flush and close; ends the hparams session with status success or failure. After a
        failure (``success=False``) a write that fails too is not raised: the run's own error
        is the one to report."""
        tb, jsonl, self._tb, self._jsonl = self._tb, self._jsonl, None, None
        try:
            with self._writing():
                try:
                    if tb is not None:
                        if self._hparams_written:
                            tb.hparams_end(success)
                        tb.close()
                finally:
                    if jsonl is not None:
                        jsonl.close()
        except (UserError, TrainingError):
            if success:
                raise


def drop_after(run_dir: Path, step: int) -> None:
    """Remove what was logged after ``step`` from ``metrics.jsonl`` and the TensorBoard event
    files of ``run_dir`` (each rewritten to a temporary file, then renamed over it)."""
    path = run_dir / JSONL
    if path.is_file():
        _rewrite(path, lambda line: _jsonl_step(line) <= step, text=True)
    for events in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        _rewrite(events, lambda record: event_pb2.Event.FromString(record).step <= step)


def _jsonl_step(line: str) -> float:
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):  # a line cut short by a crash: dropped too
        return math.inf


def _rewrite(path: Path, keep: Callable[[Any], bool], text: bool = False) -> None:
    if text:
        with open(path, encoding="utf-8") as f:
            items = f.readlines()
    else:
        items = list(RawEventFileLoader(str(path)).Load())
    kept = [x for x in items if keep(x)]
    if len(kept) == len(items) and (not text or all(x.endswith("\n") for x in items)):
        return
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w" if text else "wb") as f:
        if text:
            f.writelines(x if x.endswith("\n") else x + "\n" for x in kept)
        else:
            out = RecordWriter(f)
            for record in kept:
                out.write(record)
    os.replace(tmp, path)


def _jsonable(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, np.generic):
        return v.item()
    return str(v)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ------------------------------------------------------------------------------- viewing


def free_port(host: str = "127.0.0.1", preferred: int | None = 6006, tries: int = 10) -> int:
    """``preferred`` or the next of ``tries`` ports after it that can be bound on ``host``;
    failing that (or with ``preferred=None``), a port the OS picks."""
    candidates = list(range(preferred, preferred + tries)) if preferred else []
    for port in [*candidates, 0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError(f"no free port on {host}")


def tensorboard_command(logdir: str | Path, host: str, port: int) -> list[str]:
    """The command line of the ``tensorboard`` program (from the tensorboard package, run
    with this Python) serving ``logdir`` on ``host:port``."""
    return [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", host,
            "--port", str(port)]


def serve_tensorboard(logdir: str | Path, host: str = "127.0.0.1", port: int | None = None,
                      out: Any = None) -> int:
    """Run TensorBoard on ``logdir`` until it exits or this process is interrupted/terminated
    (the server is then stopped too); returns its exit code.

    ``port=None`` takes 6006 or the next free port after it. The URL is printed first.
    """
    out = out or sys.stdout
    if not Path(logdir).is_dir():
        raise UserError(f"run directory '{logdir}' not found (give train.run_dir of a run)")
    if not any(Path(logdir).rglob("events.out.tfevents.*")):
        print(f"note: no event files under {logdir} yet; TensorBoard will pick them up as they "
              "appear", file=out)
    port = free_port(host, 6006) if port is None else port
    shown = f"[{host}]" if ":" in host else host
    print(f"TensorBoard for {logdir} at http://{shown}:{port}/ (Ctrl+C to stop)", file=out,
          flush=True)
    proc = subprocess.Popen(tensorboard_command(logdir, host, port))

    def _terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def progress_postfix(m: dict[str, float]) -> dict[str, str]:
    """The train metrics in short form for the terminal progress bar (those present)."""
    formats = {"loss": ("loss", "{:.3f}"), "lr": ("lr", "{:.2e}"), "grad_norm": ("gnorm", "{:.2f}"),
               "tokens_per_sec": ("tok/s", "{:,.0f}"), "tflops_per_device": ("TFLOP/s", "{:.3g}"),
               "mfu": ("mfu", "{:.1%}")}
    return {short: fmt.format(m[k]) for k, (short, fmt) in formats.items() if k in m}
