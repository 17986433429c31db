"""Loading the SAMA transformer from whatever a config names: nothing (the tiny random model
of tests and the demo), a diffusers folder, or an original-format Wan / SAMA-release
checkpoint (converted into the local cache on first use, under a lock); local or ``s3://``."""

from __future__ import annotations

from typing import Any

from sama.models import attention as attn_dispatch
from sama.models.convert import as_diffusers
from sama.models.tiny import tiny_transformer
from sama.models.transformer import SamaModelConfig, SamaTransformer3DModel, torch_dtype


def load_transformer(cfg: SamaModelConfig) -> SamaTransformer3DModel:
    attn_dispatch.set_attention_backend(cfg.attention_backend)
    if cfg.pretrained is None:
        # Tiny shapes throughout: semantic_dim / semantic_hidden_dim follow the tiny SigLIP.
        kwargs = {k: v for k, v in cfg.sama_kwargs().items() if k not in ("semantic_dim", "semantic_hidden_dim")}
        model = tiny_transformer(**kwargs).to(torch_dtype(cfg.dtype))
    else:
        path, subfolder = as_diffusers(cfg.pretrained, cfg.subfolder)
        kwargs: dict[str, Any] = dict(torch_dtype=torch_dtype(cfg.dtype), **cfg.sama_kwargs())
        if subfolder:
            kwargs["subfolder"] = subfolder
        model = SamaTransformer3DModel.from_pretrained(path, **kwargs)
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model
