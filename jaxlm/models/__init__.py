"""Pure Flax Linen models. Nothing here knows about meshes beyond logical axis names.

``backbone.py`` (embeddings → blocks → hidden states), ``heads.py`` (LM, masked-LM and task
heads), ``lm.py`` (a backbone with one head), ``attention.py``, ``layers.py``, ``flops.py``.
"""

from jaxlm.models.attention import MultiHeadAttention, dot_product_attention
from jaxlm.models.backbone import Backbone
from jaxlm.models.flops import flops_per_token, param_count
from jaxlm.models.lm import DecoderLM, MaskedLM, SequenceClassifier, TokenClassifier

__all__ = [
    "Backbone",
    "DecoderLM",
    "MaskedLM",
    "MultiHeadAttention",
    "SequenceClassifier",
    "TokenClassifier",
    "dot_product_attention",
    "flops_per_token",
    "param_count",
]
