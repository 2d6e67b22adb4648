"""The base of every config section: unknown keys are errors, so a typo is caught at once."""

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
