"""The base of every config section: unknown keys are errors, so a typo is caught at once."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section (pydantic model) that forbids keys it does not define."""

    model_config = ConfigDict(extra="forbid")
