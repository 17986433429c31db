"""The one attention dispatch point of the SAMA model.

Every attention call of the SAMA transformer (self- and cross-attention) goes through
:func:`attention`. Backends:

- ``"sdpa"``  PyTorch ``scaled_dot_product_attention`` (CPU and GPU; picks its own kernel).
- ``"flash"`` ``flash_attn.flash_attn_func`` (CUDA, fp16/bf16, no mask) when installed.
- ``"math"``  explicit softmax(QK^T)V in fp32: slow, the reference for tests.
- ``"auto"``  (default) flash where it applies, else sdpa.

Choose one with :func:`set_attention_backend` (process-wide, e.g. from a job config) or
the :func:`attention_backend` context manager (tests). Layout everywhere is diffusers'
``(batch, seq, heads, head_dim)``.

The in-context "source attends only to source + semantic" mask is never materialised as
an S x S tensor (65k^2 booleans at 480p): because the allowed keys of the source rows are
a *prefix* of the sequence, :func:`prefix_restricted_attention` computes it exactly as two
unmasked calls, which also keeps flash attention usable.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "sdpa", "flash", "math")
_backend = "auto"


def set_attention_backend(name: str) -> None:
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {BACKENDS}")
    if name == "flash" and _flash_fn() is None:
        raise ValueError("attention backend 'flash' requested but flash_attn is not installed")
    _backend = name


def get_attention_backend() -> str:
    return _backend


@contextlib.contextmanager
def attention_backend(name: str) -> Iterator[None]:
    previous = _backend
    set_attention_backend(name)
    try:
        yield
    finally:
        set_attention_backend(previous)


@functools.lru_cache(maxsize=1)
def _flash_fn():
    try:
        from flash_attn import flash_attn_func  # type: ignore[import-not-found]
    except Exception:  # not installed, or built for another torch/CUDA
        return None
    return flash_attn_func


def _resolve(q: torch.Tensor, mask: torch.Tensor | None) -> str:
    if _backend != "auto":
        return _backend
    if q.is_cuda and mask is None and q.dtype in (torch.float16, torch.bfloat16) and _flash_fn() is not None:
        return "flash"
    return "sdpa"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v. q: (B, Sq, H, D), k/v: (B, Sk, H, D) -> (B, Sq, H, D).

    ``mask``: optional boolean, broadcastable to (B, H, Sq, Sk); True = may attend.
    """
    backend = _resolve(q, mask)
    if backend == "flash":
        if mask is not None:
            raise ValueError("flash attention takes no mask; use prefix_restricted_attention")
        return _flash_fn()(q, k, v)
    if backend == "math":
        return _math_attention(q, k, v, mask)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)


def _math_attention(q, k, v, mask):
    scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    out = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(dim=-1), v.float())
    return out.to(q.dtype)


def prefix_restricted_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_restricted: int, kv_prefix: int
) -> torch.Tensor:
    """Attention where the first ``num_restricted`` queries see only the first ``kv_prefix`` keys.

    Equals :func:`attention` with the boolean mask ``mask[i, j] = i >= num_restricted or
    j < kv_prefix`` (tested), without building it.
    """
    if num_restricted == 0 or kv_prefix >= k.shape[1]:
        return attention(q, k, v)
    head = attention(q[:, :num_restricted], k[:, :kv_prefix], v[:, :kv_prefix])
    tail = attention(q[:, num_restricted:], k, v)
    return torch.cat([head, tail], dim=1)


def prefix_restricted_mask(seq_len: int, num_restricted: int, kv_prefix: int) -> torch.Tensor:
    """The explicit (S, S) boolean mask that :func:`prefix_restricted_attention` implements."""
    i = torch.arange(seq_len)[:, None]
    j = torch.arange(seq_len)[None, :]
    return (i >= num_restricted) | (j < kv_prefix)
