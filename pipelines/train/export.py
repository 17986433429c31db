"""A training checkpoint's weights -> a diffusers folder that serving and diffusers load.

Writes ``<output>/transformer/`` (``config.json`` + safetensors shards) with the EMA weights
by default: ``SamaTransformer3DModel.from_pretrained(<output>, subfolder="transformer")``,
``SamaModelConfig(pretrained=<output>)`` and plain diffusers ``WanTransformer3DModel``
(which skips the SAMA-only parameters) all load it.

Streamed: each parameter is rebuilt from its slices in every rank's EMA shard (safetensors
read by byte range, local or s3://) or from DeepSpeed's memory-mapped fp32 partitions, cast,
and appended to the output file under a header planned from the model's shapes; no process
holds more than one parameter. It runs as a Ray task declaring ``memory_gb`` (one node,
never the driver when Ray is up), so the scheduler places it where that memory is.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile

import torch

from sama import storage
from sama.config import JobEntry
from sama.models.transformer import SamaTransformer3DModel, torch_dtype
from sama.tensorfiles import DEFAULT_SHARD_BYTES, write_sharded

from . import checkpoint as checkpoints
from .config import ExportJobConfig

log = logging.getLogger(__name__)


def model_on_meta(model_config: dict) -> SamaTransformer3DModel:
    config = {k: v for k, v in model_config.items() if not k.startswith("_")}
    with torch.device("meta"):
        return SamaTransformer3DModel.from_config(config)


def export_checkpoint(
    ckpt_uri: str, output: str, weights: str = "ema", dtype: str = "float32", max_shard_bytes: int = DEFAULT_SHARD_BYTES
) -> str:
    """Write ``<output>/transformer`` from the checkpoint at (or newest under) ``ckpt_uri``."""
    ckpt = checkpoints.resolve(ckpt_uri)
    model = model_on_meta(json.loads(storage.read_text(storage.join(ckpt, "model_config.json"))))
    expected = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    out_dtype = torch_dtype(dtype)
    with tempfile.TemporaryDirectory(prefix="sama-export-") as tmp:
        if weights == "ema":
            source = checkpoints.ema_shards(ckpt)
            names, get, close = set(source.names()), source.__getitem__, source.close
        elif weights == "raw":
            raw = checkpoints.raw_weights(ckpt, lazy=True)
            names, close = set(raw), (lambda: None)

            def get(n: str) -> torch.Tensor:
                t = raw[n]
                return t.contiguous() if not isinstance(t, torch.Tensor) else t
        else:
            raise ValueError(f"weights={weights!r}: ema | raw")
        missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
        if missing or extra:
            close()
            raise ValueError(
                f"{ckpt}: {weights} weights do not fit the model: missing {missing[:5]}, unexpected {extra[:5]}"
            )
        dest = storage.join(output, "transformer")
        stage = os.path.join(tmp, "transformer") if storage.is_s3(output) else storage.filesystem(dest)[1]
        os.makedirs(stage, exist_ok=True)
        try:
            files = write_sharded(
                stage,
                [(n, s, out_dtype) for n, s in expected.items()],
                lambda n: get(n).view(expected[n]),
                max_shard_bytes,
            )
        finally:
            close()
        model.save_config(stage)
        if storage.is_s3(output):
            for name in [*files, "config.json", *[f for f in os.listdir(stage) if f.endswith(".index.json")]]:
                storage.upload_file(os.path.join(stage, name), storage.join(dest, name))
    meta = {**checkpoints.read_meta(ckpt), "checkpoint": ckpt, "weights": weights, "dtype": dtype}
    storage.write_text(storage.join(output, "export.json"), json.dumps(meta, indent=2))
    log.info("exported %s weights of %s to %s", weights, ckpt, dest)
    return output


def export_as_task(
    ckpt_uri: str, output: str, weights: str = "ema", dtype: str = "float32", memory_gb: float = 4.0
) -> str:
    """``export_checkpoint`` in a Ray task that declares ``memory_gb`` (in-process without Ray)."""
    import ray

    if not ray.is_initialized():
        return export_checkpoint(ckpt_uri, output, weights, dtype)
    task = ray.remote(export_checkpoint).options(num_cpus=1, memory=int(memory_gb * 2**30), max_retries=1)
    return ray.get(task.remote(ckpt_uri, output, weights, dtype))


def run(cfg: ExportJobConfig) -> str:
    out = export_as_task(cfg.checkpoint, cfg.output, cfg.weights, cfg.dtype, cfg.memory_gb)
    print(
        f"exported {cfg.weights} weights of {checkpoints.resolve(cfg.checkpoint)} -> {storage.join(out, 'transformer')}"
    )
    return out


JOB = JobEntry(ExportJobConfig, run)
