"""The runtime sections of the config schema: where and how a run executes — the device
mesh and its sharding rules, checkpoints, logging, and multi-process start-up.

Part of the schema (:mod:`jaxlm.config.schema` holds the root :class:`Config`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from jaxlm.config.section import Section

# ----------------------------------------------------------------------------------- mesh


DEFAULT_RULES: list[tuple[str, str | list[str] | None]] = [
    ("batch", ["data", "fsdp"]),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("act_batch", ["data", "fsdp"]),
    ("act_len", None),
    ("act_embed", None),
]


class MeshConfig(Section):
    """Device mesh ``(data, fsdp, tensor)``; -1 means "all remaining devices" (at most one).

    Multi-slice (TPU slices over the data-center network, or GPU/CPU hosts): ``data``, ``fsdp``
    and ``tensor`` are the sizes *within* a slice (ICI); ``dcn_data``, ``dcn_fsdp`` and
    ``dcn_tensor`` how many slices each axis spans, so the mesh axis ``data`` has size
    ``data * dcn_data``. The product of the ``dcn_*`` sizes must equal the number of slices
    (or of processes, where devices have no slice index). Usually only ``dcn_data`` is > 1.
    """

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    dcn_data: int = Field(1, gt=0, description="slices spanned by the data axis (multi-slice)")
    dcn_fsdp: int = Field(1, gt=0, description="slices spanned by the fsdp axis (multi-slice)")
    dcn_tensor: int = Field(1, gt=0, description="slices spanned by the tensor axis (rarely > 1)")
    rules: list[tuple[str, str | list[str] | None]] = Field(
        default_factory=lambda: list(DEFAULT_RULES)
    )

    @model_validator(mode="after")
    def _check_sizes(self) -> MeshConfig:
        sizes = {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}
        for k, v in sizes.items():
            if v == 0 or v < -1:
                raise ValueError(f"mesh.{k}={v} must be a positive size or -1 (the rest)")
        if list(sizes.values()).count(-1) > 1:
            raise ValueError("at most one of mesh.data/fsdp/tensor may be -1")
        return self


# ----------------------------------------------------------------------- checkpoint, logging


class CheckpointConfig(Section):
    """Orbax checkpoints in ``RUN_DIR/checkpoints`` (see :mod:`jaxlm.checkpoint.checkpointer`).

    ``resume``: ``auto`` continues from the latest checkpoint in the run directory (a fresh
    start if there is none); ``never`` starts afresh and refuses a run directory that already
    holds checkpoints; a path (a run directory, its ``checkpoints`` directory or one step
    directory in it) starts from that checkpoint, unless this run directory already has
    checkpoints of its own, which are newer and win (so a restarted job continues).
    """

    every: int = Field(
        100, gt=0, description="save every N steps (and at the end); fine-tuning saves at "
        "every epoch's end, and every N steps only when this is set"
    )
    keep: int = Field(3, gt=0, description="keep the last K checkpoints (fine-tuning: the "
                      "best and the latest, unless this is set)")
    keep_period: int | None = Field(None, gt=0, description="also keep every M-th step forever")
    async_save: bool = Field(True, description="write in the background while training goes on")
    resume: str = Field("auto", description="auto | never | <checkpoint path>")
    allow_config_change: bool = Field(
        False,
        description="resume even if the model, data.seq_len, train.global_batch, the "
        "tokenizer or the data stream differ from the checkpoint's",
    )

    @model_validator(mode="after")
    def _check_resume(self) -> CheckpointConfig:
        if not self.resume.strip():
            raise ValueError("checkpoint.resume must be 'auto', 'never' or a checkpoint path")
        return self


class CompileConfig(Section):
    """JAX's persistent compilation cache: compiled steps are kept on disk, so a resumed or
    repeated run (the same shapes) loads them instead of compiling again."""

    cache: bool = Field(True, description="use the persistent compilation cache")
    cache_dir: str | None = Field(
        None, description="where; None = $JAX_COMPILATION_CACHE_DIR if set, else "
        "$XDG_CACHE_HOME/jaxlm/xla (~/.cache/jaxlm/xla)")


class LoggingConfig(Section):
    """Where metrics go (TensorBoard, metrics.jsonl, progress bar) and what is measured."""

    tensorboard: bool = Field(True, description="event files in RUN_DIR/tensorboard")
    jsonl: bool = Field(True, description="one JSON line per log in RUN_DIR/metrics.jsonl")
    every: int = Field(10, gt=0, description="log train metrics every N steps")
    progress: bool = Field(True, description="terminal progress bar")
    flush_secs: int = Field(10, gt=0, description="how often event files are flushed")
    peak_tflops: float | None = Field(
        None,
        gt=0.0,
        description="peak TFLOP/s per device for MFU; None = known TPU/GPU "
        "table, or measured on CPU",
    )
    memory_summary: bool = Field(
        True, description="print bytes per device (params, optimizer, step temporaries) at start"
    )
    eval_samples: bool = Field(
        True, description="generate train.sample_tokens of text at every eval (tag 'samples')"
    )


# ----------------------------------------------------------------------------- distributed


class DistributedConfig(Section):
    """Multi-process runs: how ``jax.distributed`` is started (:mod:`jaxlm.runtime.distributed`).

    ``mode``: ``auto`` starts it when the run is given a coordinator (here or in the
    ``JAXLM_COORDINATOR_ADDRESS`` / ``JAXLM_NUM_PROCESSES`` / ``JAXLM_PROCESS_ID`` environment)
    or runs under a cluster JAX detects (Cloud TPU, SLURM with several tasks, Open MPI, GKE);
    ``on`` always starts it (failing if nothing says how); ``off`` never does. Timeouts are in
    seconds: when a process dies, the others stop within about ``heartbeat_timeout``.
    """

    mode: Literal["auto", "on", "off"] = "auto"
    coordinator_address: str | None = Field(None, description="host:port of process 0")
    num_processes: int | None = Field(None, gt=0)
    process_id: int | None = Field(None, ge=0)
    local_device_ids: list[int] | None = Field(
        None, description="devices this process uses (e.g. one GPU per process); None = all"
    )
    initialization_timeout: int = Field(
        300, gt=0, description="seconds to wait for all processes to connect"
    )
    heartbeat_timeout: int = Field(
        100, gt=0, description="seconds without a heartbeat before a process counts as dead"
    )
    shutdown_timeout: int = Field(
        300, gt=0, description="seconds a finished process waits for the others at exit"
    )

    @model_validator(mode="after")
    def _check_ids(self) -> DistributedConfig:
        n, i = self.num_processes, self.process_id
        if n is not None and i is not None and i >= n:
            raise ValueError(
                f"distributed.process_id={i} must be below distributed.num_processes={n}"
            )
        return self
