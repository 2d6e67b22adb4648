"""Parameters only: ``jaxlm export`` and :func:`load_params`.

An export is a directory with ``model.safetensors`` (the parameters, keyed by their path in
the parameter tree, e.g. ``block_0/attn/query/kernel``; float32 or bfloat16; no pickle),
``config.json`` (the run's resolved config) and, when the tokenizer could be loaded,
``tokenizer.json``. It is what fine-tuning and generation need, without the optimizer state
(two thirds of a checkpoint with AdamW).

:func:`load_params` reads parameters from an export *or* from a full checkpoint (a run
directory, its ``checkpoints`` directory or one step directory), checks them against the
expected tree and places every array with the sharding the caller asks for, so it works on
any mesh and process count; it reads Hugging Face model directories too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxlm.checkpoint.compat import (
    CheckpointError,
    describe_mismatch,
    flat_shapes,
    locate,
    mismatches,
)
from jaxlm.checkpoint.frozen import read_params, require_base
from jaxlm.checkpoint.reader import SavedRun, tokenizer_name
from jaxlm.config import LoraConfig
from jaxlm.data.tokenizer import load_tokenizer
from jaxlm.hf import is_hf_dir
from jaxlm.hf.load import load_hf_params
from jaxlm.models.lora import is_adapter

WEIGHTS = "model.safetensors"
DTYPES = ("float32", "bfloat16")


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def export(path: str | Path, out: str | Path, dtype: str = "float32",
           step: int | None = None, overwrite: bool = False) -> Path:
    """Write the parameters of the latest (or ``step``'s) checkpoint under ``path`` to ``out``.

    Runs in one process; each array is gathered to host memory, cast to ``dtype`` and written
    with safetensors (to a temporary name, renamed when complete). A non-empty ``out`` is
    refused unless ``overwrite``. Returns the path of the weights file.
    """
    import ml_dtypes
    from safetensors.numpy import save_file

    if dtype not in DTYPES:
        raise CheckpointError(f"--dtype {dtype} is not one of {', '.join(DTYPES)}")
    directory, found = locate(path)
    with SavedRun(directory) as run:
        step, config = _step_to_write(run, step if step is not None else found, out, overwrite)
        out = Path(out)
        shapes = merged_shapes(run, step, config)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = _unflatten({k: jax.ShapeDtypeStruct(shape, np.float32, sharding=device)
                         for k, shape in shapes.items()})
    params = load_params(directory, target, step=step)  # adapters merged, frozen part read
    config = merged_config(config)
    np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float32
    flat = {k: np.asarray(v).astype(np_dtype) for k, v in _flat_arrays(params).items()}
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{WEIGHTS}.tmp"
    save_file(flat, str(tmp), metadata={"format": "jaxlm", "step": str(step), "dtype": dtype})
    tmp.replace(out / WEIGHTS)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    _copy_tokenizer(tokenizer_name(config), out)
    return out / WEIGHTS


def _step_to_write(run: SavedRun, step: int | None, out: str | Path,
                   overwrite: bool) -> tuple[int, dict[str, Any]]:
    """(the complete step to export, its config), once ``out`` is known to be writable."""
    step = run.step(step)
    _refuse_nonempty(Path(out), overwrite)
    return step, run.config(step)


def _refuse_nonempty(out: Path, overwrite: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        held = ", ".join(sorted(p.name for p in out.iterdir())[:4]) if out.is_dir() else "a file"
        raise CheckpointError(f"export directory {out} is not empty ({held}); pass "
                              "--overwrite to replace its contents, or choose another directory")


def export_adapters(path: str | Path, out: str | Path, step: int | None = None,
                    overwrite: bool = False) -> list[str]:
    """Write the LoRA adapters (and the trained head, where Hugging Face has one) of a
    checkpoint under ``path`` as a Hugging Face PEFT adapter directory
    (:mod:`jaxlm.hf.peft`); returns the files written."""
    from jaxlm.hf.peft import write_peft

    directory, found = locate(path)
    with SavedRun(directory) as run:
        step, config = _step_to_write(run, step if step is not None else found, out, overwrite)
        out = Path(out)
        if not ((config.get("model") or {}).get("lora") or {}).get("rank"):
            raise CheckpointError(f"--adapters-only: {path} was not fine-tuned with LoRA "
                                  "(finetune.lora.rank=0), so it has no adapters; export it "
                                  "without --adapters-only")
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, np.float32,
                                                             sharding=device),
                              run.param_metadata(step))
        params = run.params(step, target)
    return write_peft({k: np.asarray(v) for k, v in _flat_arrays(params).items()}, config, out)


def merged_shapes(run: SavedRun, step: int, config: dict[str, Any]) -> dict[str, tuple]:
    """Path → shape of every parameter of ``step``'s model with any LoRA adapters merged:
    the saved ones but the adapters, and the frozen subtrees (``finetune.frozen``) as its
    base holds them."""
    from jaxlm.checkpoint.pretrained import resolve_pretrained, saved_shapes  # (imports this)

    shapes = {k: s for k, s in flat_shapes(run.param_metadata(step)).items()
              if not is_adapter(k)}
    f = config.get("finetune") or {}
    if f.get("frozen") and f.get("base"):
        require_base(run.directory / str(step), f["base"])
        base = saved_shapes(resolve_pretrained(f["base"], "finetune.base (of the run)"))
        shapes.update({k: s for k, s in base.items()
                       if k.split("/")[0] in f["frozen"] and not is_adapter(k)})
    return shapes


def merged_config(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config as an export with merged adapters records it: no LoRA, nothing
    frozen (its weights stand alone)."""
    config = json.loads(json.dumps(config))
    if "model" in config:
        config["model"]["lora"] = LoraConfig().model_dump()
    if "finetune" in config:
        config["finetune"].update(frozen=None, base=None)
    return config


def _name(keypath: Any) -> str:
    return jax.tree_util.keystr(keypath, simple=True, separator="/")


def _flat_arrays(tree: Any) -> dict[str, Any]:
    """``{"block_0/attn/query/kernel": array}``: the safetensors keys of a parameter tree."""
    return {_name(kp): x for kp, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _copy_tokenizer(spec: str, out: Path) -> None:
    """Save the run's tokenizer next to the weights, so the export stands alone."""

    try:
        load_tokenizer(spec).save(str(out / "tokenizer.json"))
    except Exception:  # noqa: BLE001 - optional: the config still names the tokenizer
        pass


def _load_export(path: Path, abstract_params: Any, subtree: str | None = None) -> Any:
    """Read an export lazily: each process reads only the slices its devices hold."""
    import ml_dtypes  # noqa: F401 - registers bfloat16 with numpy, for bf16 exports
    from safetensors import safe_open

    file = path if path.suffix == ".safetensors" else path / WEIGHTS
    with safe_open(str(file), "np") as f:
        slices = {k: f.get_slice(k) for k in f.keys()}  # noqa: SIM118 - not a dict
        if subtree is not None:
            prefix = subtree + "/"
            slices = {k[len(prefix):]: v for k, v in slices.items() if k.startswith(prefix)}
        saved = _unflatten({k: jax.ShapeDtypeStruct(tuple(v.get_shape()), np.float32)
                            for k, v in slices.items()})
        diffs = mismatches(saved, abstract_params)
        if diffs:
            raise CheckpointError(describe_mismatch(f"export {path}", diffs))
        leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_params)
        arrays = [_place(slices[_name(kp)], like) for kp, like in leaves]
    return jax.tree.unflatten(treedef, arrays)


def _place(source: Any, like: jax.ShapeDtypeStruct) -> jax.Array:
    """A global array shaped, typed and sharded like ``like``, whose shards are read from
    ``source`` (a safetensors slice) by the process that holds them."""
    return jax.make_array_from_callback(like.shape, like.sharding,
                                        lambda idx: np.asarray(source[idx], like.dtype))


def is_export(path: str | Path) -> bool:
    """A jaxlm export (a Hugging Face directory also holds a model.safetensors: not one)."""

    p = Path(path)
    return p.suffix == ".safetensors" or ((p / WEIGHTS).is_file() and not is_hf_dir(p))


def load_params(path: str | Path, abstract_params: Any, step: int | None = None,
                subtree: str | None = None) -> Any:
    """Parameters from an export or a full checkpoint, placed as ``abstract_params`` says.

    ``subtree`` (e.g. ``"backbone"``) reads only that part of the saved parameters, which
    ``abstract_params`` then describes: fine-tuning loads a backbone this way and leaves
    the pretraining head on disk.

    ``abstract_params`` is the expected parameter tree of ``jax.ShapeDtypeStruct`` leaves
    with shardings (e.g. ``abstract_like(params, param_shardings)``); values are cast to its
    dtypes. A different tree or shapes raise :class:`CheckpointError` naming the paths.
    Fine-tuning and generation load their starting weights with this. A Hugging Face model
    directory is read too, translated tensor by tensor (:mod:`jaxlm.hf`).
    """

    if is_hf_dir(path):

        return load_hf_params(path, abstract_params, subtree)
    if is_export(path):
        return _load_export(Path(path), abstract_params, subtree)
    directory, found = locate(path)
    with SavedRun(directory) as run:
        return read_params(run, run.step(step if step is not None else found),
                           abstract_params, subtree, load_params)
