"""Loading the SAMA transformer from whatever a config names: nothing (the tiny random model
of tests and the demo), an architecture alone (random weights at that real size, for
benchmarks), a diffusers folder, or an original-format Wan / SAMA-release checkpoint
(converted into the local cache on first use, under a lock); local or ``s3://``."""

from __future__ import annotations

from typing import Any

import torch

from sama.models import attention as attn_dispatch
from sama.models.convert import as_diffusers
from sama.models.tiny import tiny_transformer
from sama.models.transformer import SamaModelConfig, SamaTransformer3DModel, torch_dtype


def load_transformer(cfg: SamaModelConfig, device: str | torch.device | None = None) -> SamaTransformer3DModel:
    """The model on the CPU, or built on ``device`` when its weights are random at a real size
    (a 14B in fp32 does not fit a host's memory eight times over)."""
    attn_dispatch.set_attention_backend(cfg.attention_backend)
    if cfg.pretrained is None and cfg.architecture is not None:
        from sama.models.sizing import architecture_config

        kwargs, _ = architecture_config(cfg, cfg.architecture)
        dtype, default = torch_dtype(cfg.dtype), torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # built in its dtype: a 14B in fp32 is 56 GB before any cast
        try:
            with torch.device(device or "cpu"):
                model = SamaTransformer3DModel(**kwargs, **cfg.sama_kwargs())
        finally:
            torch.set_default_dtype(default)
        for name, module in model.named_modules():  # as from_pretrained(torch_dtype=...) keeps them
            if set(name.split(".")) & set(model._keep_in_fp32_modules or ()):
                module.float()
    elif cfg.pretrained is None:
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
