"""What a family module declares: how each jaxlm tensor maps to a Hugging Face tensor.

A :class:`Rule` names one jaxlm parameter (``backbone/block_0/attn/query/kernel``), the
Hugging Face tensor it comes from (named as in the *base* model, ``h.0.attn.c_attn.weight``;
the task-model prefix such as ``transformer.`` is handled in :mod:`jaxlm.hf.checkpoint`) and
the layout of that tensor:

- ``same``: identical shape (embedding tables, norms);
- ``flat``: a 1-D HF bias that jaxlm keeps per head, (H·Dh,) ⇄ (H, Dh);
- ``linear``: ``torch.nn.Linear``'s weight, (out, in), which jaxlm keeps as (in..., out...);
- ``conv1d``: GPT-2's ``Conv1D`` weight, already (in, out).

``part=(i, n)``: the jaxlm tensor is the i-th of n equal pieces of the HF tensor's last axis
(GPT-2's fused query/key/value ``c_attn``). A :class:`Family` bundles the rules with the
translation of ``config.json`` both ways.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from jaxlm.errors import UserError

Layout = Literal["same", "flat", "linear", "conv1d"]


class HFError(UserError):
    """A Hugging Face directory or config that jaxlm cannot use as asked (one line)."""


@dataclass(frozen=True)
class Rule:
    """One jaxlm tensor ⇄ (a piece of) one Hugging Face tensor."""

    jax: str  # jaxlm parameter path, "backbone/block_0/attn/query/kernel"
    hf: str  # HF tensor name in the base model, "h.0.attn.c_attn.weight"
    layout: Layout = "same"
    n_in: int = 1  # leading jaxlm kernel axes that form the HF input axis (2: attention out)
    part: tuple[int, int] = (0, 1)  # (i, n): the i-th of n pieces of the HF last axis

    def hf_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The whole HF tensor's shape, given the jaxlm tensor's ``shape``."""
        n_in, n = math.prod(shape[: self.n_in]), self.part[1]
        out = math.prod(shape[self.n_in :])
        hf = {"same": shape, "flat": (math.prod(shape),), "linear": (out, n_in),
              "conv1d": (n_in, out)}[self.layout]
        return (*hf[:-1], hf[-1] * n)

    def to_jax(self, hf: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """The jaxlm tensor (``shape``) from the whole HF tensor."""
        i, n = self.part
        if n > 1:
            hf = np.split(hf, n, axis=-1)[i]
        if self.layout == "linear":
            hf = hf.T
        return hf.reshape(shape)

    def to_hf(self, x: np.ndarray) -> np.ndarray:
        """This rule's piece of the HF tensor from the jaxlm tensor ``x``."""
        if self.layout == "same":
            return x
        if self.layout == "flat":
            return x.reshape(-1)
        kernel = x.reshape(math.prod(x.shape[: self.n_in]), -1)  # (in, out)
        return kernel.T if self.layout == "linear" else kernel


@dataclass(frozen=True)
class Family:
    """A Hugging Face model family jaxlm reads and writes.

    ``architectures``: the HF classes whose checkpoints it reads; ``base`` is the one with
    no head, whose tensors carry no prefix, while task models nest it under ``prefix``
    (``transformer``, ``model``, ``bert``). ``ignored``: HF tensors that carry nothing
    (buffers, tied copies); ``unused``: real weights jaxlm has no place for. ``fixed``: the
    ModelConfig flags the HF model can represent, checked before writing one.
    """

    name: str  # jaxlm model.family
    model_type: str  # HF config.json model_type
    architectures: tuple[str, ...]
    base: str
    prefix: str
    config_from_hf: Callable[[dict[str, Any]], dict[str, Any]]  # → ModelConfig fields
    config_to_hf: Callable[[Any], dict[str, Any]]  # ModelConfig → config.json fields
    rules: Callable[[Any], list[Rule]]  # every tensor of every head, for a ModelConfig
    architecture: Callable[[Any, set[str]], str]  # (ModelConfig, jaxlm heads) → HF class
    fixed: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    ignored: tuple[str, ...] = ()  # regexes (full match) over base-relative HF names
    unused: tuple[str, ...] = ()


def setting(config: dict[str, Any], key: str, default: Any, allowed: tuple[Any, ...],
            family: str) -> Any:
    """``config[key]`` (or ``default``), refused with one line unless it is ``allowed``."""
    value = config.get(key, default)
    if value not in allowed:
        shown = ", ".join(repr(a) for a in allowed)
        raise HFError(f"config.json sets {key}={value!r}, which jaxlm's {family} model cannot "
                      f"represent (supported: {shown}); refusing to import it wrongly")
    return value


def require(config: dict[str, Any], *keys: str) -> None:
    missing = [k for k in keys if k not in config]
    if missing:
        raise HFError(f"config.json lacks {', '.join(missing)}")
