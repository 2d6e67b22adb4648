"""The config schema: what a run trains — model, data, training — and the root
:class:`Config` that holds every section (where and how the run executes is in
``jaxlm.config.runtime``; the ``finetune`` section in ``jaxlm.config.finetune``).

Each section forbids unknown keys and checks its values, so a typo or a wrong type is caught
before anything is compiled; :class:`Config` checks combinations across sections. Building a
config from YAML and ``section.key=value`` overrides lives in ``jaxlm.config.load``.
This package imports nothing of jaxlm but its error types (floor 1).
"""

from __future__ import annotations

import json
import warnings
from typing import Any, Literal

from pydantic import Field, ValidationInfo, model_validator

from jaxlm.config.finetune import FinetuneConfig
from jaxlm.config.runtime import (
    CheckpointConfig,
    CompileConfig,
    DistributedConfig,
    LoggingConfig,
    MeshConfig,
)
from jaxlm.config.section import LoraConfig, OptimizerSettings, Section

# ----------------------------------------------------------------------------------- model


# What each family means, as feature flags the layers read (the family string is tested
# nowhere else). Any flag can be overridden; ``None`` in a config means "the family's".
FAMILY_FEATURES: dict[str, dict[str, Any]] = {
    # GPT-2: learned positions, pre-LN LayerNorm, tanh-GELU MLP, biases, tied head.
    "gpt2": {"norm": "layernorm", "norm_position": "pre", "mlp": "gelu_tanh", "bias": True,
             "causal": True, "positions": "learned", "tie_embeddings": True,
             "type_vocab_size": 0, "embed_norm": False, "norm_eps": 1e-5},
    # Llama: RoPE, pre-LN RMSNorm, SwiGLU, no biases, untied head.
    "llama": {"norm": "rmsnorm", "norm_position": "pre", "mlp": "swiglu", "bias": False,
              "causal": True, "positions": "rope", "tie_embeddings": False,
              "type_vocab_size": 0, "embed_norm": False, "norm_eps": 1e-5},
    # BERT: bidirectional, learned positions + token types, embedding LayerNorm, post-LN
    # blocks, exact (erf) GELU, biases; the masked-LM decoder is tied to the embeddings.
    "bert": {"norm": "layernorm", "norm_position": "post", "mlp": "gelu", "bias": True,
             "causal": False, "positions": "learned", "tie_embeddings": True,
             "type_vocab_size": 2, "embed_norm": True, "norm_eps": 1e-12},
}


class ModelConfig(Section):
    """The transformer. ``family`` picks the feature flags below; any of them can be
    overridden (``None`` = the family's value, resolved once here)."""

    family: Literal["gpt2", "llama", "bert"] = "gpt2"
    vocab_size: int = Field(4096, gt=0)
    d_model: int = Field(192, gt=0)
    n_layers: int = Field(4, gt=0)
    n_heads: int = Field(6, gt=0)
    n_kv_heads: int | None = Field(
        None, gt=0, description="grouped-query attention; None = n_heads"
    )
    d_ff: int | None = Field(None, gt=0, description="MLP width; None = family default")
    max_seq_len: int = Field(128, gt=0)
    # Feature flags (None = the family's, see FAMILY_FEATURES).
    positions: Literal["learned", "rope", "sinusoidal"] | None = None
    tie_embeddings: bool | None = None
    norm: Literal["layernorm", "rmsnorm"] | None = None
    norm_position: Literal["pre", "post"] | None = Field(
        None, description="pre: x + f(norm(x)), then a final norm; post: norm(x + f(x))"
    )
    mlp: Literal["gelu_tanh", "gelu", "swiglu"] | None = Field(
        None, description="gelu_tanh (GPT-2), gelu = exact erf GELU (BERT), swiglu (Llama)"
    )
    bias: bool | None = Field(None, description="biases in attention and MLP projections")
    causal: bool | None = Field(None, description="causal (decoder) or bidirectional (encoder)")
    type_vocab_size: int | None = Field(
        None, ge=0, description="token-type (segment A/B) embeddings; 0 = none"
    )
    embed_norm: bool | None = Field(None, description="a norm right after the embeddings")
    norm_eps: float | None = Field(None, gt=0.0)
    rope_theta: float = 10000.0
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    attention: Literal["auto", "xla", "dot_product", "cudnn"] = Field(
        "auto",
        description="auto: cudnn on NVIDIA GPUs (bf16), xla on CPUs, else dot_product; xla: "
        "explicit softmax(QK^T/sqrt(d))V with its own mixed-precision backward; dot_product: "
        "jax.nn.dot_product_attention (XLA's fused attention); cudnn: the same with the "
        "cuDNN kernel (GPU only)",
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="compute dtype; auto = bfloat16 where the hardware has native bf16 "
        "matmuls (TPU, GPU, CPUs with AMX/AVX512-BF16), else float32",
    )
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    residual_init: Literal["plain", "scaled"] = Field(
        "plain", description="plain: every projection drawn with std 0.02; scaled: the two "
        "that write into the residual stream (attention out, MLP down) with 0.02/sqrt(2 * "
        "n_layers), as GPT-2 and nanoGPT (measured in BENCHMARKS.md)")
    remat: Literal["none", "full", "dots"] = "none"
    scan_layers: bool = False
    lora: LoraConfig = Field(
        default_factory=LoraConfig, description="adapters beside the backbone's dense layers "
        "(set from finetune.lora by a fine-tuning run; rank 0 = none)")
    init_from: str | None = Field(
        None, description="jaxlm train: a run, checkpoint, export or Hugging Face model dir; "
        "a fresh run takes its architecture, weights and tokenizer (a resumed run its own)")

    @model_validator(mode="after")
    def _resolve_family_defaults(self) -> ModelConfig:
        for key, value in FAMILY_FEATURES[self.family].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.d_ff is None:
            # SwiGLU: width 8/3·d rounded up to a multiple of 64; GELU MLPs: 4·d.
            swiglu = self.mlp == "swiglu"
            self.d_ff = -(-(8 * self.d_model // 3) // 64) * 64 if swiglu else 4 * self.d_model
        return self

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def is_encoder(self) -> bool:
        """Bidirectional attention: trained with masked-LM, not next-token prediction."""
        return not self.causal


# ------------------------------------------------------------------------------------ data


class SourceConfig(Section):
    """One text source: the embedded corpus, a Hugging Face hub dataset, or local files.

    ``path`` is ``'default'`` (the embedded corpus; ``split`` is ``'train'`` or ``'valid'``), a
    hub name such as ``'wikitext'`` (with ``name``/``split``), or local files: a file, a
    directory, a glob (``data/*.jsonl.gz``) or a list of them. Local formats (json/jsonl,
    parquet, csv/tsv, txt; optionally gzipped) are read from the file suffix unless ``format``
    says otherwise. ``weight`` is the share of *documents* drawn from this source in a mixture.
    """

    path: str | list[str] = Field(
        "default", description="'default' (embedded corpus), a hub name, or files/dirs/globs"
    )
    name: str | None = Field(None, description="hub dataset config name")
    split: str = Field("train", description="hub split, or 'train'/'valid' of the default corpus")
    text_column: str = "text"
    weight: float = Field(1.0, gt=0.0, description="relative share of documents in a mixture")
    format: Literal["auto", "json", "parquet", "csv", "text"] = Field(
        "auto", description="local file format; auto = from the suffix"
    )
    sample_by: Literal["document", "paragraph", "line"] = Field(
        "document", description="text files: one document per file, blank-line block or line"
    )

    @model_validator(mode="after")
    def _check_path(self) -> SourceConfig:
        paths = [self.path] if isinstance(self.path, str) else self.path
        if not paths or any(not p.strip() for p in paths):
            raise ValueError(
                "data.train/eval source path is empty; give 'default', a hub dataset "
                "name, or files/directories/globs"
            )
        return self


class DataConfig(Section):
    """The input stream: sources, tokenizer, row layout, shuffling and the training objective.

    ``mode``: ``pack`` (causal LM, documents packed into rows with segment ids), ``pad`` (one
    document per row, padded; for fine-tuning), ``mlm`` (packed rows, BERT-style masking).

    Documents of any length are read and tokenized in pieces (bounded memory); the saved
    stream state holds positions, never texts. ``shuffle`` (train only) seeds the file order
    of each epoch and the order of packed rows: windows of ``shuffle_rows`` rows are emitted
    in random order, so the rows of one long text spread over many batches (a window costs
    ``shuffle_rows * seq_len * 20`` bytes; ``0`` keeps rows in order).
    """

    train: list[SourceConfig] = Field(default_factory=lambda: [SourceConfig()])
    eval: list[SourceConfig] | None = Field(
        default_factory=lambda: [SourceConfig(split="valid")],
        description="held-out sources for eval; None disables eval",
    )
    tokenizer: str = Field("default", description="'default', a tokenizer.json or a directory")
    seq_len: int = Field(128, gt=1)
    shuffle: bool = Field(True, description="train: seeded file order per epoch and row order")
    shuffle_rows: int = Field(
        1024, ge=0, description="packed rows per shuffle window (train, shuffle on); 0 = in order"
    )
    seed: int = 0
    mode: Literal["pack", "pad", "mlm"] = "pack"
    mlm_probability: float = Field(0.15, gt=0.0, lt=1.0)
    truncate: bool = Field(
        False, description="pad mode: cut documents at seq_len instead of splitting them into rows"
    )
    prefetch: int = Field(8, gt=0, description="batches prepared ahead by the background thread")

    @model_validator(mode="before")
    @classmethod
    def _removed(cls, values: Any) -> Any:
        if isinstance(values, dict) and "shuffle_buffer" in values:
            raise ValueError("data.shuffle_buffer was removed (it held document texts); packed "
                             "rows are shuffled in windows of data.shuffle_rows rows")
        return values

    @model_validator(mode="after")
    def _check_sources(self) -> DataConfig:
        if not self.train:
            raise ValueError("data.train needs at least one source")
        if self.eval is not None and not self.eval:
            raise ValueError("data.eval must list at least one source, or be null to disable eval")
        return self


# ----------------------------------------------------------------------------------- train


class TrainConfig(OptimizerSettings):
    """Pretraining: the run, its schedule and its optimizer (AdamW settings shared with
    ``finetune``: :class:`~jaxlm.config.section.OptimizerSettings`)."""

    run_dir: str = "runs/default"
    steps: int = Field(300, gt=0)
    global_batch: int = Field(16, gt=0, description="sequences per optimizer step, all devices")
    grad_accum: int = Field(1, gt=0, description="microbatches per step (lax.scan)")
    warmup_steps: int = Field(30, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    decay_exclude: list[Literal["norms", "biases", "embeddings", "vectors"]] = Field(
        default_factory=lambda: ["norms", "biases"],
        description="no weight decay for: norms (modules named *norm*), biases, embeddings "
        "(wte, wpe), vectors (every parameter of rank < 2: nanoGPT's rule, by shape not name)",
    )
    z_loss: float = Field(0.0, ge=0.0)
    spike_factor: float | None = Field(
        3.0, gt=1.0, description="stop (without saving) when the loss exceeds this times its "
        "running average + 1 nat (from the second step); None = stop only on non-finite values; "
        "also used by fine-tuning",
    )
    seed: int = 0
    eval_every: int = Field(100, gt=0)
    eval_batches: int = Field(8, gt=0)
    sample_tokens: int = Field(64, ge=0, description="tokens generated at the end; 0 = none")
    sample_prompt: str = "ROMEO:"
    profile_steps: list[int] | None = None


# ------------------------------------------------------------------------------------ root

# Old keys of settings now shared by pretraining and fine-tuning → (section, key).
MOVED = {"train.log_every": ("logging", "every"), "finetune.log_every": ("logging", "every"),
         "finetune.checkpoint_every": ("checkpoint", "every")}


class ConfigWarning(UserWarning):
    """A setting was given under its old name."""



class Config(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    mesh: MeshConfig = Field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    compile: CompileConfig = Field(default_factory=CompileConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, values: Any) -> Any:
        """Settings both loops share moved to the section they belong to: the old keys still
        work, with a one-line warning."""
        if not isinstance(values, dict):
            return values
        for old, (section, key) in MOVED.items():
            where, name = old.split(".")
            part = values.get(where)
            if isinstance(part, dict) and name in part:
                part = dict(part)
                value = part.pop(name)
                values = {**values, where: part}
                target = dict(values.get(section) or {})
                target.setdefault(key, value)
                values[section] = target
                warnings.warn(f"{old} is now {section}.{key} (shared by train and finetune); "
                              f"using {section}.{key}={target[key]}", ConfigWarning, stacklevel=2)
        return values

    @model_validator(mode="after")
    def _check_combinations(self, info: ValidationInfo) -> Config:
        """Cross-section checks. A fine-tuning run's saved config (``from_dict(raw,
        objective="finetune")``) skips those of pretraining's data against the model: its
        model is the backbone's and ``data.*`` is not what it trained on."""
        m, t = self.model, self.train
        if m.d_model % m.n_heads:
            raise ValueError(f"model.n_heads={m.n_heads} must divide model.d_model={m.d_model}")
        if m.n_heads % m.n_kv_heads:
            raise ValueError(
                f"model.n_kv_heads={m.n_kv_heads} must divide model.n_heads={m.n_heads}"
            )
        if m.positions == "rope" and m.head_dim % 2:
            raise ValueError(f"rope needs an even head dim; d_model/n_heads={m.head_dim}")
        if t.global_batch % t.grad_accum:
            raise ValueError(
                f"train.grad_accum={t.grad_accum} must divide train.global_batch={t.global_batch}"
            )
        if (info.context or {}).get("objective") != "finetune" and self.model.init_from is None:
            self.check_pretraining_data()  # (with init_from: once its architecture is applied)
        return self

    def check_pretraining_data(self) -> None:
        """The data mode and length fit the model (masked LM for encoders only, next-token
        prediction for decoders only, rows no longer than the model's context)."""
        m = self.model
        mode = self.data.mode
        if mode == "mlm" and m.causal:
            raise ValueError(f"data.mode=mlm needs an encoder (model.family=bert), but "
                             f"model.family={m.family} is causal; use data.mode=pack or pad")
        if mode != "mlm" and not m.causal:
            raise ValueError(f"data.mode={mode} trains next-token prediction, which needs a "
                             f"causal model; model.family={m.family} is an encoder: use "
                             "data.mode=mlm")
        if self.data.seq_len > m.max_seq_len:
            raise ValueError(
                f"data.seq_len={self.data.seq_len} exceeds model.max_seq_len={m.max_seq_len}"
            )

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)
