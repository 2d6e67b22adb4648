"""Pure Flax Linen models. Nothing here knows about meshes beyond logical axis names."""

from jaxlm.models.attention import MultiHeadAttention, dot_product_attention
from jaxlm.models.flops import flops_per_token, param_count
from jaxlm.models.transformer import DecoderLM

__all__ = [
    "DecoderLM",
    "MultiHeadAttention",
    "dot_product_attention",
    "flops_per_token",
    "param_count",
]
