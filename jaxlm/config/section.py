"""The base of every config section: unknown keys are errors, so a typo is caught at once."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    """A config section (pydantic model) that forbids keys it does not define."""

    model_config = ConfigDict(extra="forbid")


class OptimizerSettings(Section):
    """The AdamW settings both ``train`` and ``finetune`` are run with, defined once here;
    each section sets its own defaults where pretraining and fine-tuning differ (lr, decay,
    b2)."""

    lr: float = Field(2e-3, gt=0.0, description="peak learning rate")
    weight_decay: float = Field(0.1, ge=0.0)
    b1: float = Field(0.9, gt=0.0, lt=1.0, description="AdamW first-moment decay")
    b2: float = Field(0.95, gt=0.0, lt=1.0, description="AdamW second-moment decay")
    eps: float = Field(1e-8, gt=0.0)
    clip_norm: float | None = Field(1.0, gt=0.0, description="global-norm clipping; None = off")


class LoraConfig(Section):
    """LoRA adapters (``finetune.lora``; the run records them as ``model.lora``): a rank-r
    update ``(alpha/r)·A·B`` beside each targeted dense layer of the backbone, which stays
    frozen. ``rank: 0`` = off (every parameter trains)."""

    rank: int = Field(0, ge=0, description="adapter rank r; 0 = no LoRA")
    alpha: float = Field(16.0, gt=0.0, description="the update is scaled by alpha / rank")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="on the adapter's input")
    targets: list[str] = Field(
        default_factory=lambda: ["attention"], min_length=1,
        description="dense layers to adapt: 'attention' (query, key, value, out), 'mlp' (fc, "
        "gate, up, proj), a layer name, or a glob over parameter paths "
        "(backbone/block_0/attn/query)")
    base_dtype: Literal["float32", "bfloat16"] | None = Field(
        None, description="storage dtype of the frozen backbone; None = model.param_dtype")
