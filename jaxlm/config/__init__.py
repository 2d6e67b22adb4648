"""Typed configuration: the schema (``schema.py``, ``runtime.py``, ``finetune.py``) and how a
config is built (``load.py``)."""

from jaxlm.config.finetune import FinetuneConfig, LabeledDataConfig
from jaxlm.config.load import (
    ConfigError,
    apply_overrides,
    check_devices,
    from_dict,
    load_config,
    resolve_mesh_shape,
)
from jaxlm.config.runtime import (
    DEFAULT_RULES,
    CheckpointConfig,
    DistributedConfig,
    LoggingConfig,
    MeshConfig,
)
from jaxlm.config.schema import Config, DataConfig, ModelConfig, SourceConfig, TrainConfig
from jaxlm.config.section import LoraConfig

__all__ = [
    "DEFAULT_RULES",
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "DistributedConfig",
    "FinetuneConfig",
    "LabeledDataConfig",
    "LoggingConfig",
    "LoraConfig",
    "MeshConfig",
    "ModelConfig",
    "SourceConfig",
    "TrainConfig",
    "apply_overrides",
    "check_devices",
    "from_dict",
    "load_config",
    "resolve_mesh_shape",
]
