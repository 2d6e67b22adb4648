"""``jaxlm finetune``: the objective ``finetune.problem`` names, run by epochs.

``generate`` is :mod:`.generative` (prompt → completion with a decoder's LM head), ``span`` is
:mod:`.extractive` (extractive QA with an encoder); every other problem is :mod:`.classify` (a
fresh head on the backbone). Both run on
:func:`jaxlm.finetune.epochs.run_epochs`, which runs the one trainer.
"""

from __future__ import annotations

from typing import Any

from jaxlm.config import Config
from jaxlm.finetune import extractive, generative
from jaxlm.finetune.classify import Classify
from jaxlm.finetune.epochs import Objective, run_epochs
from jaxlm.finetune.run import setup


def objective(cfg: Config) -> Objective:
    """The objective of ``cfg.finetune.problem``, its run and data built (see the modules)."""
    if cfg.finetune.problem == "generate":
        return generative.Generate(*generative.setup(cfg))
    if cfg.finetune.problem == "span":
        return extractive.Extract(*extractive.setup(cfg))
    return Classify(*setup(cfg))


def finetune(cfg: Config) -> dict[str, Any]:
    """Fine-tune per ``cfg.finetune``; returns the final (test) metrics and the best epoch."""
    return run_epochs(objective(cfg))
