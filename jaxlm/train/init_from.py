"""``model.init_from``: continued pretraining from a run, checkpoint, export or HF model.

The run takes the source's architecture and tokenizer (only runtime model settings may be
changed, as in fine-tuning), always — so that a resumed run's config still matches the
checkpoints it wrote. At a fresh start the whole pretraining model is then loaded from the
source, subtree by subtree, straight into the sharded train state: the backbone always, a
head where the source has one (a ``BertModel`` checkpoint has no masked-LM head, a
``LlamaModel`` no LM head: those keep their fresh initialisation, and the report says so).
A resumed run loads nothing from it: its own checkpoint is newer.
"""

from __future__ import annotations

from typing import Any

from jaxlm.checkpoint.checkpointer import abstract_like
from jaxlm.checkpoint.export import load_params
from jaxlm.checkpoint.pretrained import (
    Pretrained,
    pretrained_model_config,
    resolve_pretrained,
    saved_shapes,
)
from jaxlm.config import Config, ConfigError, from_dict

SETTING = "model.init_from"


def apply_init_from(cfg: Config) -> tuple[Config, Pretrained | None]:
    """``cfg`` with the architecture and tokenizer of ``model.init_from`` (and masked-LM
    data for an encoder), and the resolved source; ``(cfg, None)`` when it is not set."""
    if cfg.model.init_from is None:
        return cfg, None
    source = resolve_pretrained(cfg.model.init_from, SETTING)
    model = pretrained_model_config(source, cfg, SETTING)
    mode = "mlm" if model.is_encoder else cfg.data.mode  # (mlm of a decoder: refused below)
    config = cfg.to_dict()
    config["model"] = model.model_dump(mode="json")
    config["data"].update(tokenizer=source.tokenizer, mode=mode)
    try:
        resolved = from_dict(config)
        resolved.check_pretraining_data()
    except (ConfigError, ValueError) as e:
        raise ConfigError(f"{SETTING}={cfg.model.init_from} (its architecture): {e}") from None
    return resolved, source


def load_init_from(source: Pretrained, params: Any, shardings: Any) -> tuple[Any, str]:
    """``params`` (their shapes: the abstract state's) with every subtree the source holds
    loaded in place as ``shardings`` say (the others stay shapes, drawn later),
    and a report of what was loaded and what kept its initialisation."""
    saved = saved_shapes(source)
    loaded, fresh = [], []
    params = dict(params)
    for name in params:
        if name != "backbone" and not any(k.startswith(f"{name}/") for k in saved):
            fresh.append(name)
            continue
        target = abstract_like(params[name], shardings[name])
        params[name] = load_params(source.path, target, step=source.step, subtree=name)
        loaded.append(name)
    report = f"{SETTING}: loaded {', '.join(loaded)} from {source.describe()}"
    if fresh:
        report += f"; freshly initialised (not in the source): {', '.join(fresh)}"
    return params, report
