"""Hugging Face weights in and out: ``config.json`` + safetensors ⇄ jaxlm, one module per family.

- ``spec.py``: how a jaxlm tensor maps to an HF tensor (:class:`Rule`), what a family declares;
- ``gpt2.py``, ``llama.py``, ``bert.py``: the names, layouts and config translation of each;
- ``checkpoint.py``: reading an HF directory (single or sharded safetensors; never pickle);
- ``load.py``: HF weights straight into a sharded jaxlm parameter tree, tensor by tensor;
- ``tokenizer.py``: the directory's tokenizer (tokenizer.json, or rebuilt from vocab files);
- ``convert.py``: ``jaxlm convert`` both ways; ``safetensors_stream.py``: its writer.

Reading and loading import jaxlm's config and models only; ``jaxlm.checkpoint.export`` and the
fine-tuning and training entry points call into them. ``convert.py`` (the CLI's) also reads
jaxlm exports and checkpoints.
"""

from jaxlm.hf.checkpoint import FAMILIES, hf_model_config, is_hf_dir, read_config
from jaxlm.hf.spec import HFError

__all__ = ["FAMILIES", "HFError", "hf_model_config", "is_hf_dir", "read_config"]
