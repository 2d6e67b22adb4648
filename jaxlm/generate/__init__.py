"""Text generation with a KV cache: ``jaxlm generate`` and the training run's samples.

- :mod:`~jaxlm.generate.sampling`: greedy, temperature, top-k, top-p;
- :mod:`~jaxlm.generate.engine`: left-padded batches, a jitted prefill and a jitted decode
  loop over the model's KV cache, on the mesh (token ids in and out);
- :mod:`~jaxlm.generate.generator`: text in and out, stop strings, streaming;
- :mod:`~jaxlm.generate.source`: a run, checkpoint or export → config, params, tokenizer.
"""

from jaxlm.generate.engine import DecodeEngine, PaddedBatch, left_pad
from jaxlm.generate.generator import Completion, Generator
from jaxlm.generate.sampling import DEFAULT, GREEDY, GenerationError, Sampling, sample_logits
from jaxlm.generate.source import LoadedModel, load_source, param_shardings, place_params

__all__ = [
    "DEFAULT",
    "GREEDY",
    "Completion",
    "DecodeEngine",
    "GenerationError",
    "Generator",
    "LoadedModel",
    "PaddedBatch",
    "Sampling",
    "left_pad",
    "load_source",
    "param_shardings",
    "place_params",
    "sample_logits",
]
