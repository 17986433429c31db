"""A training checkpoint's weights -> a diffusers folder that serving and diffusers load.

Writes ``<output>/transformer/`` (``config.json`` + safetensors) with the EMA weights by
default: ``SamaTransformer3DModel.from_pretrained(<output>, subfolder="transformer")``,
``SamaModelConfig(pretrained=<output>)`` and plain diffusers
``WanTransformer3DModel.from_pretrained`` (which skips the SAMA-only parameters) all load it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile

import torch

from sama import storage
from sama.models.transformer import SamaTransformer3DModel

from . import checkpoint as C
from .config import ExportJobConfig

log = logging.getLogger(__name__)


def build_model(model_config: dict, weights: dict[str, torch.Tensor]) -> SamaTransformer3DModel:
    from accelerate import init_empty_weights

    config = {k: v for k, v in model_config.items() if not k.startswith("_")}
    with init_empty_weights():  # no random init of a model we overwrite whole
        model = SamaTransformer3DModel.from_config(config)
    missing, unexpected = model.load_state_dict(weights, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"checkpoint weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()


def export_checkpoint(ckpt_uri: str, output: str, weights: str = "ema", dtype: torch.dtype | None = None) -> str:
    """Write ``<output>/transformer`` from the checkpoint at (or newest under) ``ckpt_uri``."""
    ckpt = C.resolve(ckpt_uri)
    state = C.ema_weights(ckpt) if weights == "ema" else C.raw_weights(ckpt)
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    model = build_model(json.loads(storage.read_text(storage.join(ckpt, "model_config.json"))), state)
    dest = storage.join(output, "transformer")
    if storage.is_s3(output):
        with tempfile.TemporaryDirectory(prefix="sama-export-") as tmp:
            model.save_pretrained(tmp)
            for name in os.listdir(tmp):
                storage.write_bytes(storage.join(dest, name), open(os.path.join(tmp, name), "rb").read())
    else:
        model.save_pretrained(dest)
    meta = {**C.read_meta(ckpt), "checkpoint": ckpt, "weights": weights}
    storage.write_text(storage.join(output, "export.json"), json.dumps(meta, indent=2))
    log.info("exported %s weights of %s to %s", weights, ckpt, dest)
    return output


def run(cfg: ExportJobConfig) -> str:
    out = export_checkpoint(cfg.checkpoint, cfg.output, cfg.weights)
    print(f"exported {cfg.weights} weights of {C.resolve(cfg.checkpoint)} -> {storage.join(out, 'transformer')}")
    return out
