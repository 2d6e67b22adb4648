"""Objectives, one module each: what is trained, its loss sums and its metrics.

``causal_lm`` (next-token, decoders), ``masked_lm`` (encoders), ``classification``
(fine-tuning heads: single-/multi-label, regression, token), ``span`` (extractive QA:
start/end over the context). The train and eval steps in
:mod:`jaxlm.train.step` take any :class:`~jaxlm.tasks.base.Task`.
"""

from jaxlm.config import Config
from jaxlm.tasks.base import Task, add_sums
from jaxlm.tasks.causal_lm import CausalLM
from jaxlm.tasks.classification import Classification
from jaxlm.tasks.masked_lm import MaskedLM
from jaxlm.tasks.span import SpanExtraction

__all__ = ["CausalLM", "Classification", "MaskedLM", "SpanExtraction", "Task", "add_sums",
           "pretraining_task"]


def pretraining_task(cfg: Config) -> Task:
    """The pretraining objective a config asks for: masked LM for ``data.mode=mlm`` (an
    encoder, checked by the config), next-token prediction otherwise."""
    if cfg.data.mode == "mlm":
        return MaskedLM(cfg.model, cfg.train.z_loss, cfg.data.mlm_probability)
    return CausalLM(cfg.model, z_loss=cfg.train.z_loss)
