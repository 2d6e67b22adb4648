"""Reading a run's checkpoints without changing them: the one reader.

:class:`SavedRun` opens ``RUN_DIR/checkpoints`` read-only and answers what every verb that
reads a checkpoint asks: which steps are complete (and which is the best, as Orbax tracked
it), a step's saved config and tokenizer reference, its JSON items, the shapes of its
parameters, and its parameters (or one subtree of them) restored onto the shardings the
caller asks for, after the step's integrity manifest is checked. Resume (the
:class:`~jaxlm.checkpoint.checkpointer.Checkpointer`, through the manager it writes with),
export, predict, evaluate, generate, convert, fine-tuning backbones and ``model.init_from``
all read through it; which *kind* of path a user gave (run, step, export, Hugging Face
directory) is decided once, in :func:`jaxlm.checkpoint.pretrained.resolve_pretrained`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from jaxlm.checkpoint.compat import CheckpointError, describe_mismatch, mismatches
from jaxlm.checkpoint.integrity import verify
from jaxlm.checkpoint.manager import best_options, item_handlers


class SavedRun:
    """The complete checkpoints of one run directory's ``checkpoints/``, read-only.

    ``best = (metric, higher_is_better)``: :meth:`best_step` is Orbax's best by that metric.
    ``manager``: read through an existing (writable) manager instead of opening one.
    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, directory: str | Path, best: tuple[str, bool] | None = None,
                 manager: ocp.CheckpointManager | None = None) -> None:
        self.directory = Path(str(directory))
        self._owned = manager is None
        if manager is None:
            # PyTree handler: it restores a part of the state (the params, or a subtree)
            manager = ocp.CheckpointManager(
                self.directory.absolute(),
                options=ocp.CheckpointManagerOptions(
                    read_only=True, create=False, save_interval_steps=0,
                    **(best_options(*best) if best is not None else {})),
                item_handlers=item_handlers(ocp.PyTreeCheckpointHandler()))
        self.manager = manager

    def __enter__(self) -> SavedRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owned:
            self.manager.close()

    # ------------------------------------------------------------------------------ steps

    def steps(self) -> list[int]:
        """The complete steps, oldest first."""
        return sorted(self.manager.all_steps())

    def step(self, step: int | None = None, setting: str = "") -> int:
        """``step`` checked to be complete, or the latest; one-line errors naming ``setting``
        (what the user gave) otherwise."""
        steps = self.steps()
        where = f"{setting}: " if setting else ""
        if not steps:
            raise CheckpointError(f"{where}no complete checkpoint in {self.directory}")
        if step is None:
            return steps[-1]
        if step not in steps:
            raise CheckpointError(f"{where}no complete checkpoint of step {step} in "
                                  f"{self.directory}; there are steps {steps}")
        return step

    def best_step(self) -> int | None:
        """The best step by the metric given at opening (None: none was saved with it)."""
        return self.manager.best_step() if self.steps() else None

    # ------------------------------------------------------------------------- contents

    def json_item(self, step: int, name: str) -> Any:
        """A JSON item of ``step`` (config, tokenizer, data, progress); None if it has none."""
        if not (self.directory / str(step) / name).is_dir():
            return None
        out = self.manager.restore(step, args=ocp.args.Composite(
            **{name: ocp.args.JsonRestore()}))
        return out[name]

    def config(self, step: int) -> dict[str, Any]:
        """The run config saved with ``step``."""
        return self.json_item(step, "config")

    def tokenizer(self, step: int) -> dict[str, Any]:
        """The tokenizer reference saved with ``step`` (name, vocabulary size, hash)."""
        return self.json_item(step, "tokenizer") or {}

    def state_metadata(self, step: int) -> Any:
        """The saved train state's tree of array metadata (shapes, dtypes; nothing read)."""
        meta = self.manager.item_metadata(step)["state"]
        return getattr(meta, "tree", meta)

    def param_metadata(self, step: int, subtree: str | None = None) -> Any:
        """The saved parameters' (or their ``subtree``'s) array metadata; None if absent."""
        params = self.state_metadata(step).get("params")
        if subtree is not None:
            return params.get(subtree) if isinstance(params, dict) else None
        return params

    def check(self, step: int) -> str | None:
        """What is wrong with ``step``'s bytes (its integrity manifest), or None."""
        return verify(self.directory / str(step))

    def params(self, step: int, target: Any, subtree: str | None = None) -> Any:
        """The ``params`` (or their ``subtree``) of ``step``'s state, restored as ``target``
        (ShapeDtypeStructs with shardings) says; the optimizer state stays on disk. The
        step's integrity manifest and the tree and shapes are checked first."""
        where = self.directory / str(step)
        problem = self.check(step)
        if problem is not None:
            raise CheckpointError(f"checkpoint {where} failed its integrity check: {problem}")
        diffs = mismatches(self.param_metadata(step, subtree), target)
        if diffs:
            raise CheckpointError(describe_mismatch(f"checkpoint {where}", diffs))
        item = target if subtree is None else {subtree: target}
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item={"params": item},
                restore_args={"params": ocp.checkpoint_utils.construct_restore_args(item)},
                partial_restore=True)))
        params = restored.state["params"]
        return params if subtree is None else params[subtree]


def tokenizer_name(config: dict[str, Any]) -> str:
    """The tokenizer a saved run config names (``load_tokenizer``'s spec): a fine-tuning run
    records it under ``finetune`` (its ``data.*`` is not its own)."""
    return ((config.get("finetune") or {}).get("tokenizer")
            or (config.get("data") or {}).get("tokenizer", "default"))
