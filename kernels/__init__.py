"""Fused ops for the ranker: jagged Hybrid-Target attention with the dynamic mask, and Group LayerNorm.

Each op has, in order: math docstring, ``<op>_reference`` in plain PyTorch, Triton kernels, launcher,
``autograd.Function`` and a dispatcher with the reference's signature (``Kernel.AUTO`` picks Triton on CUDA).
``group_norm.py`` holds them in one file; ``attention/`` is a package with one module per part.
"""

from kernels.attention import AttentionKind, TokenGroup, hta_attention, hta_attention_reference
from kernels.dispatch import Kernel, get_kernel, set_kernel
from kernels.group_norm import group_layer_norm, group_layer_norm_reference

__all__ = [
    "AttentionKind",
    "Kernel",
    "TokenGroup",
    "get_kernel",
    "group_layer_norm",
    "group_layer_norm_reference",
    "hta_attention",
    "hta_attention_reference",
    "set_kernel",
]
