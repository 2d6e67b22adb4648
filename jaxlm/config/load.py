"""Building a config: a YAML preset plus dotted overrides, with one-line errors.

``load_config("configs/pretrain/tiny.yaml", ["train.steps=200", "model.n_layers=4"])`` parses
the YAML, applies the overrides (values parsed as YAML), and validates against the schema in
``jaxlm.config.schema``. Every problem is one :class:`ConfigError` line naming the key and
what would be valid. Checks that need the device count (:func:`check_devices`) run once jax
is up, still before anything is compiled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from jaxlm.config.runtime import MeshConfig
from jaxlm.config.schema import Config
from jaxlm.errors import UserError


class ConfigError(UserError):
    """A bad configuration; the message is one line naming the key and the valid choices."""


# ------------------------------------------------------------------------- building a config


def _format_error(err: ValidationError) -> str:
    """One line for the first pydantic error: the dotted key, the problem, what is valid."""
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        section = _section_at(e["loc"][:-1])
        valid = ", ".join(section.model_fields) if section else ""
        return f"unknown key '{loc}'" + (f"; valid keys here: {valid}" if valid else "")
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "value_error" or not loc:  # our own checks already name their keys
        return msg
    return f"{loc}={e.get('input')!r}: {msg}"


def _section_at(loc: tuple) -> type[BaseModel] | None:
    cls: Any = Config
    for part in loc:
        field = cls.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None if isinstance(part, str) else cls
        ann = field.annotation
        cls = next(
            (
                a
                for a in getattr(ann, "__args__", (ann,))
                if isinstance(a, type) and issubclass(a, BaseModel)
            ),
            None,
        )
        if cls is None:
            return None
    return cls


def _is_text_field(parts: list[str]) -> bool:
    """Whether the dotted key names a plain string setting (e.g. ``train.sample_prompt``),
    whose value is taken as written rather than parsed as YAML (``ROMEO:``, ``,``)."""
    section = _section_at(tuple(p for p in parts[:-1] if not p.isdigit()))
    field = section.model_fields.get(parts[-1]) if section is not None else None
    if field is None or getattr(field.annotation, "__origin__", None) in (list, dict):
        return False  # (list[str]'s __args__ are its items' types)
    kinds = set(getattr(field.annotation, "__args__", (field.annotation,)))
    return str in kinds and not kinds & {int, float, bool} and not any(
        getattr(k, "__origin__", None) in (list, dict) for k in kinds)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's error in one line, with where it is (1-based line and column) and what
    construct it was reading, e.g. ``line 4, column 1: expected ',' or ']', but got '<block
    mapping start>' (in the flow sequence started at line 3, column 13)``."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    context, start = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and start is not None:
        context = context.removeprefix("while ").replace("parsing a", "in the").replace(
            "scanning a", "in the")
        problem += f" ({context} started at line {start.line + 1}, column {start.column + 1})"
    return " ".join(f"{where}{problem}".split())


def _parse_value(key: str, parts: list[str], value: str) -> Any:
    if value == "":
        return None
    if _is_text_field(parts):
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"override '{key}={value}': the value is not valid YAML ({problem}); "
                          "quote it") from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a nested dict, in place. Values are parsed as YAML
    (``[10,12]``, ``true``, ``3e-4``), except for plain string settings, taken as written."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not of the form section.key=value")
        parts = key.split(".")
        node: Any = raw
        default: Any = Config().model_dump(mode="json")  # fills in lists the YAML left out
        for i, p in enumerate(parts):
            default = default.get(p) if isinstance(default, dict) else None
            last = i == len(parts) - 1
            parsed = _parse_value(key, parts, value)
            if isinstance(node, list):  # data.train.0.path=...: index into a list of sections
                if not p.isdigit() or int(p) >= len(node):
                    raise ConfigError(f"override '{key}': '{p}' is not an index below {len(node)}")
                if last:
                    node[int(p)] = parsed
                else:
                    node = node[int(p)]
            elif isinstance(node, dict):
                if last:
                    node[p] = parsed
                else:
                    node = node.setdefault(p, default if isinstance(default, list) else {})
            else:
                raise ConfigError(f"override '{key}': '{parts[i - 1]}' is a value, not a section")
    return raw


def from_dict(raw: dict[str, Any], objective: str = "train") -> Config:
    """A validated config; ``objective="finetune"`` for a fine-tuning run's saved config
    (its model is the backbone's, so pretraining's data settings are not checked against
    it)."""
    try:
        return Config.model_validate(raw, context={"objective": objective})
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Build a config from an optional YAML file plus dotted overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file '{path}' not found (see configs/ for presets)")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file '{path}' is not valid YAML: {_yaml_problem(err)}") \
                from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file '{path}' must hold a mapping of sections")
    return from_dict(apply_overrides(raw, overrides or []))


def resolve_mesh_shape(mesh: MeshConfig, n_devices: int) -> tuple[int, int, int]:
    """The concrete (data, fsdp, tensor) sizes for ``n_devices``, with -1 filled in."""
    sizes = [mesh.data, mesh.fsdp, mesh.tensor]
    fixed = 1
    for s in sizes:
        fixed *= s if s != -1 else 1
    if -1 in sizes:
        if n_devices % fixed:
            raise ConfigError(
                f"mesh sizes {sizes} need the device count {n_devices} to be a multiple of {fixed}"
            )
        sizes[sizes.index(-1)] = n_devices // fixed
    elif fixed != n_devices:
        raise ConfigError(
            f"mesh data*fsdp*tensor = {'*'.join(map(str, sizes))} = {fixed} but there are "
            f"{n_devices} devices; make the product {n_devices} or set one axis to -1"
        )
    return tuple(sizes)  # type: ignore[return-value]


def check_devices(cfg: Config, n_devices: int,
                  batch: tuple[str, int] | None = None) -> tuple[int, int, int]:
    """Checks that need the device count; returns the resolved mesh shape. ``batch``:
    (setting, examples per step) of the section being run; default ``train.global_batch``."""
    data, fsdp, tensor = resolve_mesh_shape(cfg.mesh, n_devices)
    dp = data * fsdp
    if batch is None:
        micro = cfg.train.global_batch // cfg.train.grad_accum
        per = f" (per microbatch {micro})" if cfg.train.grad_accum > 1 else ""
        setting, size = "train.global_batch", cfg.train.global_batch
    else:
        (setting, size), micro, per = batch, batch[1], ""
    if micro % dp:
        raise ConfigError(
            f"{setting}={size}{per} is not "
            f"divisible by the data-parallel size data*fsdp={dp}; use a multiple of {dp}"
        )
    m = cfg.model
    for key, size in [
        ("n_heads", m.n_heads),
        ("n_kv_heads", m.n_kv_heads),
        ("d_ff", m.d_ff),
        ("vocab_size", m.vocab_size),
    ]:
        if size % tensor:
            raise ConfigError(f"model.{key}={size} is not divisible by mesh.tensor={tensor}")
    if m.d_model % fsdp:
        raise ConfigError(f"model.d_model={m.d_model} is not divisible by mesh.fsdp={fsdp}")
    return data, fsdp, tensor
