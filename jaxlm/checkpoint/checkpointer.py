"""Checkpoints of a training run, written and read with Orbax.

``RUN_DIR/checkpoints/<step>/`` holds these items, written together by one
``orbax.checkpoint.CheckpointManager`` save:

* ``state``: the train state (step, params, optimizer state, RNG) as sharded arrays;
* ``data``: every process's data-pipeline state (JSON), for an exact resume of the stream
  (objectives that read a stream: pretraining);
* ``progress``: the objective's own record (JSON; fine-tuning: best metric, epochs without
  improvement, history); the best step itself is Orbax's (``best_step()``);
* ``config``: the resolved config (JSON), checked for compatibility on resume;
* ``tokenizer``: which tokenizer was used, its vocabulary size and a hash of it (JSON).

Why this is safe: Orbax writes a step into a temporary directory and renames it only once
every item and every process has finished (atomic finalize), so a save interrupted by a crash
or ``kill -9`` never looks like a checkpoint; old steps are deleted only after a newer one is
final. Saves are asynchronous by default: the arrays are copied to host memory, then written
by a background thread while training goes on.

Restoring goes through an *abstract* target (shapes, dtypes and the shardings of the current
mesh), so a checkpoint written on one mesh or process count loads onto another. A latest
checkpoint that cannot be read — or whose bytes no longer match the integrity manifest
written once it was final (:mod:`jaxlm.checkpoint.integrity`) — is reported and moved aside,
and the one before it is used.

A save that fails (a full disk, lost permissions) is one :class:`~jaxlm.errors.TrainingError`
naming the errno and the latest complete step, which is left as it was; Orbax's own reports of
the failure go to the process log (:mod:`jaxlm.runtime.quiet`).
Whether a checkpoint fits the run is decided in :mod:`jaxlm.checkpoint.compat`; managers and
helpers are in :mod:`jaxlm.checkpoint.manager`; SIGTERM handling is in
:mod:`jaxlm.runtime.preemption`; parameters-only export in :mod:`jaxlm.checkpoint.export`.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxlm.checkpoint.compat import (
    CheckpointError,
    CheckpointWarning,
    config_differences,
    describe_mismatch,
    locate,
    mismatches,
    schedule_differences,
    tokenizer_reference,
)
from jaxlm.checkpoint.integrity import write_manifest
from jaxlm.checkpoint.manager import (
    ITEMS,
    STATE_FIELDS,
    TMP_MARK,
    abstract_like,
    checkpoint_dir,
    gather_json,
    item_handlers,
    open_manager,
    state_tree,
    sync,
)
from jaxlm.checkpoint.reader import SavedRun
from jaxlm.config import Config
from jaxlm.errors import TrainingError
from jaxlm.models.trainable import Trainable, join, split, trained_part
from jaxlm.runtime import quiet, warn
from jaxlm.runtime.distributed import PEER_LOST, lost_peer
from jaxlm.runtime.process_log import log_only
from jaxlm.runtime.rundir import reason

__all__ = [  # the helpers are used from here by other modules
    "ITEMS", "STATE_FIELDS", "TMP_MARK", "CheckpointError", "CheckpointWarning", "Checkpointer",
    "abstract_like", "checkpoint_dir", "gather_json", "item_handlers", "open_manager",
    "state_tree",
]

# ----------------------------------------------------------------------------- checkpointer


class Checkpointer:
    """Saves and restores one run's checkpoints (``RUN_DIR/checkpoints``), per ``cfg``.

    Used by the training loop: :meth:`restore` once at start, :meth:`load_data_state` once
    the data pipeline exists, :meth:`due`/:meth:`save` after each step, :meth:`close` at
    the end. All processes call every method; only process 0 writes the JSON items.
    """

    def __init__(self, cfg: Config, tokenizer: Any, log: Callable[[str], None] = print, *,
                 run_dir: str | Path | None = None, tokenizer_name: str | None = None,
                 best: tuple[str, bool] | None = None, compat_keys: tuple[str, ...] = (),
                 trainable: Trainable | None = None) -> None:
        """``run_dir``: the run's directory (default ``train.run_dir``); ``tokenizer_name``:
        how the run names its tokenizer (default ``data.tokenizer``); ``best = (metric,
        higher_is_better)``: keep and track the best checkpoint by that metric;
        ``trainable``: only those parameters are saved and restored (the frozen rest is the
        backbone's, read back from it: see :func:`jaxlm.checkpoint.export.load_params`)."""
        self.cfg, self.ccfg, self.log = cfg, cfg.checkpoint, log
        self.trainable = trainable
        self._sized = False  # the bytes of a save are logged once
        self.compat_keys = compat_keys
        self.directory = checkpoint_dir(run_dir if run_dir is not None else cfg.train.run_dir)
        self.tokenizer_ref = tokenizer_reference(cfg, tokenizer)
        if tokenizer_name is not None:
            self.tokenizer_ref["tokenizer"] = tokenizer_name
        self.tracks_best = best is not None
        self._in_flight: int | None = None  # step of an async save not yet known to be final
        self._sealer: threading.Thread | None = None  # writing the last final step's manifest
        self._seal_error: str | None = None  # why the last manifest could not be written
        self.orbax_errors: list[str] = []  # Orbax's own reports of a failed save (see quiet)
        self._quiet = quiet.OrbaxSaveFailures(self._note).__enter__()
        quiet.quiet_orbax_leftovers(log_only)
        unfinished = sorted(p.name for p in self.directory.glob(f"*{TMP_MARK}*"))
        try:
            if jax.process_index() == 0:  # fail now, not at the first save many steps later
                self.directory.mkdir(parents=True, exist_ok=True)
                probe = self.directory / f".write-test-{time.time_ns()}"
                probe.write_bytes(b"")
                probe.unlink()
            self.manager = open_manager(self.directory, self.ccfg, best)  # drops unfinished
        except OSError as e:
            raise CheckpointError(
                f"cannot write to the checkpoint directory {self.directory}: {reason(e)}") from e
        if unfinished:
            self._warn(f"discarded {len(unfinished)} unfinished save(s) in {self.directory} "
                       f"({', '.join(unfinished)}): saves that were interrupted or failed")

    def _saved(self, state: Any) -> dict[str, Any]:
        """What is saved of a train state (or of its shardings): all of it, but only the
        trained parameters."""
        tree = state_tree(state)
        return {**tree, "params": trained_part(tree["params"], self.trainable)}

    def _note(self, text: str) -> None:
        """Orbax's report of a failed save: to the process log, not the terminal (the
        failure itself is raised as one TrainingError)."""
        if not log_only(text):
            self.orbax_errors.append(text)

    def _warn(self, msg: str) -> None:
        """A :class:`CheckpointWarning` (for code that catches it), also a line of the run's
        log unless the ``jaxlm`` command shows warnings as such lines already."""
        warnings.warn(msg, CheckpointWarning, stacklevel=3)
        if not warn.active():
            self.log(f"warning: {msg}")

    # ------------------------------------------------------------------------ restoring

    def _source(self) -> tuple[ocp.CheckpointManager, list[int], bool]:
        """Where to resume from: (manager, candidate steps newest first, is this run's own)."""
        own = sorted(self.manager.all_steps(), reverse=True)
        resume = self.ccfg.resume
        if resume == "never":
            if own:
                raise CheckpointError(
                    f"{self.directory} already holds checkpoints (latest step {own[0]}) and "
                    "checkpoint.resume=never; use a new train.run_dir, remove them, or resume")
            return self.manager, [], True
        if resume == "auto":
            return self.manager, own, True
        directory, step = locate(resume)
        if directory.resolve() == self.directory.resolve():
            if step is not None and own and step != own[0]:
                raise CheckpointError(
                    f"checkpoint.resume points to step {step} of this run but step {own[0]} "
                    "is newer; remove the later steps first or use a new train.run_dir")
            return self.manager, [step] if step is not None else own, True
        if own:
            self.log(f"checkpoint: {self.directory} already has checkpoints; continuing from "
                     f"step {own[0]} instead of {resume}")
            return self.manager, own, True
        other = open_manager(directory)
        steps = [step] if step is not None else sorted(other.all_steps(), reverse=True)
        if not steps or (step is not None and step not in other.all_steps()):
            raise CheckpointError(f"checkpoint.resume={resume}: no complete checkpoint there")
        return other, steps, False

    def restore(self, state: Any, shardings: Any) -> tuple[Any, Any, Any]:
        """``(state, data_item, progress_item)`` from the checkpoint chosen by
        ``checkpoint.resume``, restored onto ``shardings`` (both ``TrainState``s); items the
        checkpoint lacks are None; ``(state, None, None)`` when starting afresh."""
        manager, steps, own = self._source()
        reader = SavedRun(manager.directory, manager=manager)
        target = abstract_like(self._saved(state), self._saved(shardings))
        for i, step in enumerate(steps):
            where = reader.directory / str(step)
            problem = gather_json(reader.check(step) if jax.process_index() == 0 else None)[0]
            if problem is not None:  # silently changed bytes: as unreadable as a broken file
                self._skip(manager, step, steps[i + 1:], own, CheckpointError(problem))
                continue
            try:
                saved_cfg, saved_tok = reader.config(step), reader.tokenizer(step)
                if saved_cfg is None:
                    raise CheckpointError("it has no config item")
                saved_tree = reader.state_metadata(step)
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is skipped
                self._skip(manager, step, steps[i + 1:], own, e)
                continue
            self._check_compatible(where, saved_cfg, saved_tok)
            diffs = mismatches(saved_tree, target)
            if diffs:
                raise CheckpointError(describe_mismatch(f"checkpoint {where}", diffs))
            present = [name for name in ("data", "progress") if (where / name).is_dir()]
            try:
                out = manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target),
                    **{name: ocp.args.JsonRestore() for name in present}))
            except Exception as e:  # noqa: BLE001
                self._skip(manager, step, steps[i + 1:], own, e)
                continue
            self.log(f"checkpoint: resumed from {where} (step {step})")
            data = out.data if "data" in present else None
            progress = out.progress if "progress" in present else None
            if progress is None and data is not None and "history" in (data.get("states")
                                                                     or [{}])[0]:
                progress, data = data["states"][0], None  # fine-tuning before the item
            restored = {**out.state, "params": join(out.state["params"],
                                                    split(state.params, self.trainable)[1])}
            return state.replace(**restored), data, progress
        if steps:
            raise CheckpointError(f"no readable checkpoint in {manager.directory} (tried steps "
                                  f"{', '.join(map(str, steps))}); use checkpoint.resume=never "
                                  "with a new train.run_dir to start afresh")
        return state, None, None

    def _skip(self, manager: ocp.CheckpointManager, step: int, rest: list[int], own: bool,
              err: Exception) -> None:
        """Warn about an unreadable step; move this run's own aside so the step can be redone."""
        moved = ""
        if own:
            aside = self.directory.parent / "checkpoints_corrupt" / f"{step}-{time.time():.0f}"
            if jax.process_index() == 0:
                aside.parent.mkdir(parents=True, exist_ok=True)
                (self.directory / str(step)).rename(aside)
            sync(f"jaxlm_ckpt_skip_{step}")
            self.manager.reload()
            moved = f" (moved to {aside})"
        then = f"using step {rest[0]}" if rest else "no earlier checkpoint"
        self._warn(f"checkpoint {manager.directory / str(step)} is unreadable{moved}: "
                   f"{reason(err)}; {then}")

    def _check_compatible(self, where: Path, saved_cfg: dict[str, Any],
                          saved_tok: dict[str, Any]) -> None:
        diffs = config_differences(saved_cfg, self.cfg, self.compat_keys)
        if changed := schedule_differences(saved_cfg, self.cfg):
            self.log(f"warning: resuming {where} with another learning-rate schedule "
                     f"({'; '.join(changed)}): the steps after it follow the new one, so they "
                     "differ from an uninterrupted run of the checkpoint's config")
        if saved_tok.get("sha256") != self.tokenizer_ref["sha256"]:
            diffs.append(f"tokenizer {saved_tok.get('tokenizer')!r} (checkpoint) differs from "
                         f"{self.tokenizer_ref['tokenizer']!r}")
        if not diffs:
            return
        if self.ccfg.allow_config_change:
            self.log(f"warning: resuming {where} despite config changes: {'; '.join(diffs)}")
            return
        raise CheckpointError(
            f"the checkpoint {where} was made with another config ({'; '.join(diffs)}); use a "
            "new train.run_dir, or set checkpoint.allow_config_change=true to resume anyway")

    def load_data_state(self, pipe: Any, data_item: dict[str, Any] | None) -> None:
        """Put the data pipeline back where the checkpoint left it (this process's part)."""
        if data_item is None:
            return
        n, states = data_item.get("process_count"), data_item.get("states")
        why = None
        if n != jax.process_count() or not states:
            why = f"it was saved by {n} process(es) and this run has {jax.process_count()}"
        else:
            try:
                pipe.load_state_dict(states[jax.process_index()])
            except ValueError as e:  # DataError: another stream / data config
                if not self.ccfg.allow_config_change:
                    raise CheckpointError(f"{e}; or set checkpoint.allow_config_change=true to "
                                          "start the data stream afresh") from None
                why = str(e)
        if why:
            self._warn(f"the data stream starts afresh instead of resuming: {why}")

    # --------------------------------------------------------------------------- saving

    def due(self, step: int, total: int) -> bool:
        """A regular save is due after ``step`` of ``total``: every ``checkpoint.every``
        steps and at the last one."""
        return step % self.ccfg.every == 0 or step == total

    def save(self, step: int, state: Any, data_state: dict[str, Any] | None = None, *,
             progress: dict[str, Any] | None = None, wait: bool = False,
             metrics: dict[str, float] | None = None) -> bool:
        """Save everything after ``step``: the state, this process's ``data_state`` (None:
        the objective reads no stream) and the objective's ``progress`` (None: none);
        ``wait`` blocks until it is final on disk. ``metrics`` rank the checkpoint when the
        manager tracks the best one (the step is added to break ties).

        Returns False if this step was already saved. A failure to write (full disk, no
        permission) raises :class:`TrainingError`; complete checkpoints are left as they are.
        """
        if step in self.manager.all_steps():
            if wait:
                self.wait()
            return False
        if self._in_flight is not None:  # (Orbax would wait for it too) final → sealed
            self.wait()
        items: dict[str, Any] = {}
        if data_state is not None:
            items["data"] = ocp.args.JsonSave({"process_count": jax.process_count(),
                                               "states": gather_json(data_state)})
        if progress is not None:
            items["progress"] = ocp.args.JsonSave(progress)
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(self._saved(state)), **items,
            config=ocp.args.JsonSave(self.cfg.to_dict()),
            tokenizer=ocp.args.JsonSave(self.tokenizer_ref))
        try:
            self.manager.save(step, args=args, force=True,
                              metrics=None if metrics is None else {**metrics, "step": step})
        except Exception as e:  # noqa: BLE001 - reported as one clear TrainingError
            raise self._failed(step, e) from e
        self._in_flight = step
        if not self._sized:  # once per run: what each save costs
            self._sized = True
            tree = self._saved(state)
            n = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
            what = ("trained parameters" if self.trainable is not None else "parameters")
            self.log(f"checkpoint: each save writes {n / 2**20:,.1f} MiB ({what} and "
                     f"optimizer state) to {self.directory}")
        if wait or not self.ccfg.async_save:
            self.wait()
        return True

    def wait(self) -> None:
        """Block until the save in flight (if any) is final, then seal it (its integrity
        manifest, hashed in the background); raise if it failed."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise self._failed(self._in_flight, e) from e
        if self._in_flight is not None and jax.process_index() == 0:
            self._join_sealer()
            step_dir = self.directory / str(self._in_flight)
            self._sealer = threading.Thread(target=self._seal, args=(step_dir,), daemon=True,
                                            name="jaxlm-ckpt-manifest")
            self._sealer.start()
        self._in_flight = None

    def _seal(self, step_dir: Path) -> None:
        """Write a committed step's manifest (a step deleted meanwhile by the keep policy is
        skipped); a failure to write it is reported by :meth:`_join_sealer`."""
        try:
            write_manifest(step_dir)
        except FileNotFoundError:
            pass
        except OSError as e:
            self._seal_error = (f"could not write the integrity manifest of {step_dir} "
                                f"({reason(e)}); that step will be restored unverified")

    def _join_sealer(self) -> None:
        if self._sealer is not None:
            self._sealer.join()
            self._sealer = None
        if self._seal_error is not None:
            msg, self._seal_error = self._seal_error, None
            self._warn(msg)

    def _failed(self, step: int | None, err: Exception) -> TrainingError:
        """The error for a failed save: of the async save in flight if that one never became
        final (Orbax reports it at the next save), else of ``step``."""
        try:
            self.manager.reload()
            steps = self.manager.all_steps()
        except Exception:  # noqa: BLE001
            steps = []
        if self._in_flight is not None and self._in_flight not in steps:
            step = self._in_flight
        latest = max(steps, default=None)
        kept = (f"checkpoints already written are intact (latest complete: step {latest})"
                if latest is not None else "no complete checkpoint exists yet")
        # a peer that died mid-save fails the save's collectives: no disk to free then
        remedy = (PEER_LOST if lost_peer(err)
                  else "free disk space or fix permissions, then rerun to resume")
        return TrainingError(
            f"could not write checkpoint step {step} to {self.directory}: {reason(err)}; "
            f"{kept}; {remedy}")

    def discard_from(self, first: int) -> list[int]:
        """Move this run's checkpoints of step >= ``first`` to ``checkpoints_diverged/`` (a
        diverged run must not resume from them); returns their steps."""
        steps = sorted(s for s in self.manager.all_steps() if s >= first)
        if steps and jax.process_index() == 0:
            aside = self.directory.parent / "checkpoints_diverged"
            aside.mkdir(parents=True, exist_ok=True)
            for s in steps:
                (self.directory / str(s)).rename(aside / f"{s}-{time.time():.0f}")
        sync("jaxlm_ckpt_discard")
        self.manager.reload()
        return steps

    def latest(self) -> int | None:
        """The newest complete checkpoint of this run (saves in flight not counted)."""
        steps = [s for s in self.manager.all_steps() if s != self._in_flight]
        return max(steps, default=None)

    def best(self) -> int | None:
        """The best complete checkpoint by the tracked metric (Orbax's ``best_step``); None
        when none was saved with metrics."""
        if not self.tracks_best or not self.manager.all_steps():
            return None
        return self.manager.best_step()

    def describe(self, step: int) -> str:
        return (f"saved {self.directory / str(step)}: train state (step {step}, params, "
                "optimizer state, RNG), the objective's data/progress state, config and "
                "tokenizer reference")

    def close(self) -> None:
        """Wait for a save in flight and its manifest, then release Orbax's threads."""
        try:
            self.wait()
        finally:
            try:
                self._join_sealer()
                self.manager.close()
            finally:
                self._quiet.__exit__()
