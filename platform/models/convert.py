"""Checkpoint formats: the original Wan / SAMA-release key names <-> ours (diffusers).

The authors' SAMA-14B is a DiT state dict in the original Wan (DiffSynth) key names, and
Wan2.1's own release ships its transformer in those names too. This module converts them
to a diffusers folder that ``SamaTransformer3DModel.from_pretrained`` loads (and back), so
serving, evaluation and training take a release checkpoint directly.

Formats:
- ``release``    original names + the SAMA modules (``segment_embedding``, ``siglip_feat_mlp``,
                 ``semantic_head``): converts to a ``SamaTransformer3DModel`` carrying the
                 release's numerics in its config (zero q/k semantic RoPE, velocity
                 semantic head, LayerNorm eps 1e-6, no slot embedding, no source mask);
- ``wan``        original names, no SAMA keys (Wan2.1-T2V): converts to a plain diffusers
                 ``WanTransformer3DModel`` (SAMA's new parameters are initialised on load);
- ``diffusers``  our folders: ``config.json`` + safetensors shards (+ index).

Conversion streams one tensor at a time: safetensors inputs are read by byte range (local
or ``s3://``, never materialised whole), ``.pt/.pth/.bin`` inputs are memory-mapped, and
outputs are written tensor by tensor after a header planned from the input headers. Host
memory stays at about one tensor, whatever the model's size.

Sizes come from the tensor shapes; what shapes cannot tell (``num_attention_heads``:
Wan's ``config.json`` beside the weights, else dim / 128; ``num_semantic_tokens``: 65) is
a ``key=value`` override (:func:`convert`'s ``overrides``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Any, Optional

import torch

from sama import storage
from sama.models.transformer import SamaTransformer3DModel, legacy_numerics, torch_dtype
from sama.tensorfiles import (
    DEFAULT_SHARD_BYTES,
    WEIGHT_SUFFIXES,
    TensorFileError,
    TensorReader,
    is_file,
    numel,
    weight_files,
    write_safetensors,
    write_sharded,
)

log = logging.getLogger(__name__)

FORMATS = ("release", "wan", "diffusers")
# A checkpoint cannot be converted or loaded; the message names the key and file.
CheckpointError = TensorFileError


# ---------------------------------------------------------------------- key names

# Inside ``blocks.N.``: release name -> ours. A rule ending in "." renames a prefix, any
# other rule an exact name.
_BLOCK_RULES = [
    *[
        (f"self_attn.{a}.", f"attn1.{b}.")
        for a, b in (
            ("q", "to_q"),
            ("k", "to_k"),
            ("v", "to_v"),
            ("o", "to_out.0"),
            ("norm_q", "norm_q"),
            ("norm_k", "norm_k"),
        )
    ],
    *[
        (f"cross_attn.{a}.", f"attn2.{b}.")
        for a, b in (
            ("q", "to_q"),
            ("k", "to_k"),
            ("v", "to_v"),
            ("o", "to_out.0"),
            ("norm_q", "norm_q"),
            ("norm_k", "norm_k"),
        )
    ],
    ("norm3.", "norm2."),  # the cross-attention norm (the release's norm1/norm2 have no weights)
    ("ffn.0.", "ffn.net.0.proj."),
    ("ffn.2.", "ffn.net.2."),
    ("modulation", "scale_shift_table"),
]
_TOP_RULES = [
    ("patch_embedding.", "patch_embedding."),
    ("text_embedding.0.", "condition_embedder.text_embedder.linear_1."),
    ("text_embedding.2.", "condition_embedder.text_embedder.linear_2."),
    ("time_embedding.0.", "condition_embedder.time_embedder.linear_1."),
    ("time_embedding.2.", "condition_embedder.time_embedder.linear_2."),
    ("time_projection.1.", "condition_embedder.time_proj."),
    ("head.head.", "proj_out."),
    ("head.modulation", "scale_shift_table"),
    # SAMA
    ("segment_embedding.", "type_embed."),
    ("siglip_feat_mlp.norm.", "semantic_projector.0."),
    ("siglip_feat_mlp.fc1.", "semantic_projector.1."),
    ("siglip_feat_mlp.fc2.", "semantic_projector.3."),
    ("semantic_head.norm.", "semantic_head.0."),
    ("semantic_head.proj.", "semantic_head.1."),
]
SAMA_RELEASE_PREFIXES = ("segment_embedding.", "siglip_feat_mlp.", "semantic_head.")
# Row order of the role embedding: the release's segment_embedding is (source, semantic,
# target), our type_embed (source, target, semantic). The permutation is its own inverse.
TYPE_ROWS = [0, 2, 1]
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _apply(rules: list[tuple[str, str]], name: str, reverse: bool) -> Optional[str]:
    for src, dst in rules:
        a, b = (dst, src) if reverse else (src, dst)
        if a.endswith(".") and name.startswith(a):
            return b + name[len(a) :]
        if name == a:
            return b
    return None


def _rename(name: str, reverse: bool) -> Optional[str]:
    m = _BLOCK.match(name)
    if m:
        rest = _apply(_BLOCK_RULES, m.group(2), reverse)
        return f"blocks.{m.group(1)}.{rest}" if rest else None
    return _apply(_TOP_RULES, name, reverse)


def release_to_ours(name: str) -> Optional[str]:
    """Our (diffusers) name of an original Wan / release tensor, or None if it has none."""
    return _rename(name, reverse=False)


def ours_to_release(name: str) -> Optional[str]:
    """The original Wan / release name of one of our tensors, or None if it has none."""
    return _rename(name, reverse=True)


# ---------------------------------------------------------------------- configs

# Conversion options that are not model config keys.
OPTION_KEYS = ("dtype", "max_shard_size", "base")
# What the release computes (recorded in a converted checkpoint's config.json).
RELEASE_NUMERICS = dict(
    semantic_rope="zero_qk",
    semantic_prediction="velocity",
    semantic_norm_eps=1e-6,
    semantic_slot_embed=False,
    source_attention_mask=False,
    source_timestep="shared",
)


def _wan_config(uri: str) -> dict[str, Any]:
    """Wan's own ``config.json`` beside the weights (``num_heads``, ``eps``, ...), if any."""
    folder = uri if not uri.endswith(WEIGHT_SUFFIXES) else storage.parent(uri)
    path = storage.join(folder, "config.json")
    try:
        data = json.loads(storage.read_text(path))
    except (OSError, RuntimeError, ValueError):
        return {}
    return data if isinstance(data, dict) and "dim" in data else {}


def _shape(shapes: dict[str, tuple[int, ...]], name: str, src: str) -> tuple[int, ...]:
    if name not in shapes:
        raise CheckpointError(f"{src}: missing {name} (needed to size the model)")
    return shapes[name]


def infer_config(
    shapes: dict[str, tuple[int, ...]],
    src: str,
    sama: bool,
    wan_config: Optional[dict[str, Any]] = None,
    overrides: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """The diffusers config of a checkpoint in original names, from its tensor shapes."""
    wan_config, overrides = wan_config or {}, dict(overrides or {})
    if any(k.startswith("img_emb.") or ".k_img." in k for k in shapes) or wan_config.get("model_type") == "i2v":
        raise CheckpointError(f"{src}: an image-conditioned (I2V) Wan checkpoint; SAMA builds on Wan2.1 T2V")
    dim, in_channels, *patch = _shape(shapes, "patch_embedding.weight", src)
    layers = sorted({int(m.group(1)) for k in shapes if (m := _BLOCK.match(k))})
    if not layers:
        raise CheckpointError(f"{src}: no transformer blocks (blocks.N.*) found")
    heads = int(overrides.pop("num_attention_heads", wan_config.get("num_heads", max(1, dim // 128))))
    if dim % heads:
        raise CheckpointError(f"{src}: model dim {dim} is not a multiple of num_attention_heads={heads}")
    cfg: dict[str, Any] = dict(
        patch_size=tuple(patch),
        num_attention_heads=heads,
        attention_head_dim=dim // heads,
        in_channels=in_channels,
        out_channels=_shape(shapes, "head.head.weight", src)[0] // numel(tuple(patch)),
        text_dim=_shape(shapes, "text_embedding.0.weight", src)[1],
        freq_dim=_shape(shapes, "time_embedding.0.weight", src)[1],
        ffn_dim=_shape(shapes, "blocks.0.ffn.0.weight", src)[0],
        num_layers=layers[-1] + 1,
        cross_attn_norm="blocks.0.norm3.weight" in shapes,
        qk_norm="rms_norm_across_heads" if "blocks.0.self_attn.norm_q.weight" in shapes else None,
        eps=float(wan_config.get("eps", 1e-6)),
        image_dim=None,
        added_kv_proj_dim=None,
        rope_max_seq_len=1024,
        pos_embed_seq_len=None,
    )
    if sama:
        fc1 = _shape(shapes, "siglip_feat_mlp.fc1.weight", src)
        cfg.update(semantic_dim=fc1[1], semantic_hidden_dim=fc1[0], num_semantic_tokens=65, **RELEASE_NUMERICS)
    unknown = sorted(set(overrides) - set(cfg) - {"type_embed_init_std"})
    if unknown:
        raise CheckpointError(f"unknown config override(s) {unknown}; known: {sorted(cfg)}")
    cfg.update(overrides)
    return cfg


def _meta_model(cfg: dict[str, Any], sama: bool):
    from diffusers import WanTransformer3DModel

    cls = SamaTransformer3DModel if sama else WanTransformer3DModel
    with torch.device("meta"):
        return cls(**cfg)


def _wan_style_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Wan's own ``config.json`` for a model in original names (what its tools read)."""
    out = {
        "_class_name": "WanModel",
        "model_type": "t2v",
        "patch_size": list(cfg["patch_size"]),
        "dim": cfg["num_attention_heads"] * cfg["attention_head_dim"],
        "ffn_dim": cfg["ffn_dim"],
        "freq_dim": cfg["freq_dim"],
        "in_dim": cfg["in_channels"],
        "out_dim": cfg["out_channels"],
        "num_heads": cfg["num_attention_heads"],
        "num_layers": cfg["num_layers"],
        "eps": cfg["eps"],
        "text_dim": cfg["text_dim"],
        "text_len": 512,
    }
    if "semantic_dim" in cfg:
        out["sama"] = {k: cfg[k] for k in ("semantic_dim", "semantic_hidden_dim", "num_semantic_tokens")}
    return out


# ---------------------------------------------------------------------- conversion


def _parse_bytes(value: Any) -> int:
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", str(value), re.IGNORECASE)
    if not m:
        raise CheckpointError(f"max_shard_size={value!r}: use bytes or e.g. 5GB / 500MB")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " "))


def _dtype_option(value: Any) -> Optional[torch.dtype]:
    if value in (None, "", "keep"):
        return None

    return torch_dtype(str(value))


@dataclass
class ConversionResult:
    dst: str
    fmt: str
    config: dict[str, Any]
    tensors: int
    files: list[str]


def convert(
    src: str, dst: str, from_format: str, to_format: str = "diffusers", *, overrides: Optional[dict[str, Any]] = None
) -> ConversionResult:
    """Convert a checkpoint between formats (see the module docstring).

    ``overrides``: model config keys (``num_attention_heads``, ``num_semantic_tokens``,
    ``semantic_rope``, ...) and options: ``dtype`` (cast, e.g. bfloat16), ``max_shard_size``
    (e.g. 5GB), ``base`` (original-format weights that fill keys ``src`` lacks).
    ``dst`` may be local or ``s3://`` (staged locally, then uploaded file by file).
    """
    if from_format not in FORMATS or to_format not in FORMATS or from_format == to_format:
        raise CheckpointError(f"convert from {from_format!r} to {to_format!r}: choose two of {FORMATS}")
    if "diffusers" not in (from_format, to_format):
        raise CheckpointError("one side of a conversion is the diffusers format")
    if storage.is_s3(dst):
        with tempfile.TemporaryDirectory(prefix="sama-convert-") as tmp:
            stage = os.path.join(tmp, storage.basename(dst))
            result = convert(src, stage, from_format, to_format, overrides=overrides)
            uploaded = []
            for root, _, names in os.walk(stage) if os.path.isdir(stage) else [(tmp, [], [os.path.basename(stage)])]:
                for name in names:
                    local = os.path.join(root, name)
                    rel = os.path.relpath(local, stage) if os.path.isdir(stage) else ""
                    target = storage.join(dst, rel) if rel else dst
                    storage.upload_file(local, target)
                    uploaded.append(target)
            result.dst, result.files = dst, uploaded
            return result
    options = dict(overrides or {})
    opts = {k: options.pop(k) for k in OPTION_KEYS if k in options}
    if from_format == "diffusers":
        return _to_original(src, dst, to_format, options, opts)
    return _from_original(src, dst, from_format, options, opts)


def _from_original(src: str, dst: str, fmt: str, overrides: dict, opts: dict) -> ConversionResult:
    files = weight_files(src)
    base_files = weight_files(opts["base"]) if opts.get("base") else []
    reader = TensorReader(files)
    reader.strip_prefix()
    if base_files:
        base = TensorReader(base_files)
        base.strip_prefix()
        reader.merge(base)
    where = src if len(files) == 1 else f"{src} ({len(files)} files)"
    sama_keys = [k for k in reader.entries if k.startswith(SAMA_RELEASE_PREFIXES)]
    if fmt == "release" and not sama_keys:
        raise CheckpointError(
            f"{where}: no SAMA keys (segment_embedding, siglip_feat_mlp, semantic_head): "
            "a plain Wan checkpoint, convert it with --from wan"
        )
    if fmt == "wan" and sama_keys:
        raise CheckpointError(f"{where}: has SAMA keys ({sama_keys[0]}, ...): convert it with --from release")
    shapes = {k: e.shape for k, e in reader.entries.items()}
    cfg = infer_config(shapes, where, sama=fmt == "release", wan_config=_wan_config(src), overrides=overrides)
    model = _meta_model(cfg, sama=fmt == "release")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if fmt == "release":
        expected.pop("semantic_pos_embed", None)  # no counterpart: left zero / absent

    # Every expected tensor present with its shape; nothing left over.
    ours_to_file = {}
    for name, entry in reader.entries.items():
        ours = release_to_ours(name)
        if ours is None or ours not in expected:
            raise CheckpointError(
                f"{entry.file}: unexpected key {name} (no counterpart in "
                f"{type(model).__name__} with {cfg['num_layers']} layers)"
            )
        if entry.shape != expected[ours]:
            raise CheckpointError(
                f"{entry.file}: {name} has shape {list(entry.shape)}, expected "
                f"{list(expected[ours])} (set num_attention_heads=... if the head count differs)"
            )
        ours_to_file[ours] = name
    missing = [ours_to_release(k) or k for k in expected if k not in ours_to_file]
    if missing:
        raise CheckpointError(
            f"{where}: missing {missing[0]}"
            + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
            + " (a partial state dict? pass base=<original Wan folder> to fill it)"
        )

    dtype = _dtype_option(opts.get("dtype"))

    def get(ours: str) -> torch.Tensor:
        t = reader.get(ours_to_file[ours])
        return t[TYPE_ROWS] if ours == "type_embed.weight" else t

    # In file order, so each input file is read front to back once.
    order = {f: i for i, f in enumerate(reader.files + base_files)}
    keys = sorted(
        expected,
        key=lambda k: (order.get(reader.entries[ours_to_file[k]].file, 0), reader.entries[ours_to_file[k]].offset),
    )
    items = [(k, expected[k], dtype or reader.entries[ours_to_file[k]].dtype) for k in keys]
    os.makedirs(dst, exist_ok=True)
    try:
        names = write_sharded(dst, items, get, _parse_bytes(opts.get("max_shard_size", DEFAULT_SHARD_BYTES)))
    finally:
        reader.close()
    model.save_config(dst)
    _write_card(src, dst, fmt, dict(model.config), len(items), overrides)
    return ConversionResult(dst, "diffusers", dict(model.config), len(items), names)


def _write_card(src: str, dst: str, fmt: str, config: dict[str, Any], tensors: int, overrides: dict) -> None:
    """A model card for a converted checkpoint: where it came from and what the conversion set."""
    from sama.lineage import write_card
    from sama.provenance import record

    numerics = {k: v for k, v in config.items() if not k.startswith("_")}
    digest = storage.content_digest(json.dumps(overrides, sort_keys=True, default=str), n=12)
    write_card(
        dst,
        {
            "title": f"SAMA transformer converted from the {fmt} format",
            "summary": f"`sama convert --from {fmt}` of `{src}` ({tensors} tensors). Training data: as published "
            "with the source weights (this conversion adds none).",
            "base_model": src,
            "conversion": {"from": fmt, "source": src, "tensors": tensors, "overrides": overrides, "config": numerics},
            "provenance": record("convert", digest, [src]),
            "data": [],
            "evaluations": [],
        },
    )


def _read_diffusers_config(src: str) -> dict[str, Any]:
    path = storage.join(src, "config.json")
    try:
        return json.loads(storage.read_text(path))
    except FileNotFoundError:
        raise CheckpointError(f"{src}: no config.json (not a diffusers model folder)") from None


def _to_original(src: str, dst: str, fmt: str, overrides: dict, opts: dict) -> ConversionResult:
    if overrides:
        raise CheckpointError(
            f"--to {fmt} takes no config overrides ({sorted(overrides)}); the source's config is used"
        )
    if not is_file(storage.join(src, "config.json")) and is_file(storage.join(src, "transformer", "config.json")):
        src = storage.join(src, "transformer")  # a pipeline folder: its transformer
    cfg = _read_diffusers_config(src)
    sama = "semantic_dim" in cfg
    if fmt == "release" and not sama:
        raise CheckpointError(f"{src}: a plain Wan model (no SAMA config): convert it --to wan")
    if fmt == "wan" and sama:
        raise CheckpointError(f"{src}: a SAMA model: convert it --to release (--to wan would drop its SAMA modules)")
    if sama:
        # The release's tools compute the release numerics; another model would run there wrongly.
        legacy = legacy_numerics(cfg)
        differs = {
            k: cfg.get(k, legacy.get(k))
            for k, v in RELEASE_NUMERICS.items()
            if k not in ("semantic_slot_embed",) and cfg.get(k, legacy.get(k)) != v
        }
        if differs:
            raise CheckpointError(
                f"{src}: config {differs} differs from the release's numerics {RELEASE_NUMERICS}; "
                "the release's tools would compute a different model"
            )
    reader = TensorReader(weight_files(src))
    items, to_ours = [], {}
    dtype = _dtype_option(opts.get("dtype"))
    for name, entry in sorted(reader.entries.items()):
        if name == "semantic_pos_embed":
            if reader.get(name).abs().max() > 0:
                raise CheckpointError(
                    f"{entry.file}: semantic_pos_embed is non-zero; the release format has no "
                    "semantic slot embedding, so its tools would compute a different model"
                )
            continue
        theirs = ours_to_release(name)
        if theirs is None:
            raise CheckpointError(f"{entry.file}: {name} has no counterpart in the original Wan format")
        to_ours[theirs] = name
        items.append((theirs, entry.shape, dtype or entry.dtype))

    def get(theirs: str) -> torch.Tensor:
        t = reader.get(to_ours[theirs])
        return t[TYPE_ROWS] if theirs == "segment_embedding.weight" else t

    order = {f: i for i, f in enumerate(reader.files)}
    items.sort(key=lambda it: (order[reader.entries[to_ours[it[0]]].file], reader.entries[to_ours[it[0]]].offset))
    try:
        if dst.endswith(".safetensors"):  # one file, as the release's --state-dict takes it
            write_safetensors(dst, items, get)
            names = [dst]
        else:
            os.makedirs(dst, exist_ok=True)
            names = write_sharded(dst, items, get, _parse_bytes(opts.get("max_shard_size", DEFAULT_SHARD_BYTES)))
            with open(os.path.join(dst, "config.json"), "w") as f:
                json.dump(_wan_style_config(cfg), f, indent=2)
    finally:
        reader.close()
    return ConversionResult(dst, fmt, cfg, len(items), names)


# ---------------------------------------------------------------------- loading any format


def detect_format(uri: str) -> str:
    """``diffusers`` (a folder with a diffusers config), ``release`` or ``wan`` (original
    names, told apart by the SAMA keys)."""
    if not uri.endswith(WEIGHT_SUFFIXES) or not is_file(uri):
        try:
            cfg = json.loads(storage.read_text(storage.join(uri, "config.json")))
        except (OSError, RuntimeError, ValueError):
            cfg = {}
        if isinstance(cfg, dict) and str(cfg.get("_class_name", "")).endswith("Transformer3DModel"):
            return "diffusers"
    reader = TensorReader(weight_files(uri))
    reader.strip_prefix()
    if any(k.startswith(SAMA_RELEASE_PREFIXES) for k in reader.entries):
        return "release"
    if any(k.startswith("condition_embedder.") for k in reader.entries):
        raise CheckpointError(f"{uri}: diffusers weights without a diffusers config.json")
    return "wan"


def _source_key(uri: str, files: list[str]) -> str:
    """Identifies a checkpoint's current contents cheaply: URIs, sizes and (local) mtimes."""
    parts = [uri]
    for f in files:
        parts.append(f"{f}:{storage.size(f)}")
        if not storage.is_s3(f):
            parts.append(str(os.path.getmtime(storage.filesystem(f)[1])))
    return storage.content_digest(*parts, n=16)


def as_diffusers(
    uri: str,
    subfolder: Optional[str] = None,
    overrides: Optional[dict[str, Any]] = None,
    cache_dir: Optional[str] = None,
) -> tuple[str, Optional[str]]:
    """(path, subfolder) that ``from_pretrained`` loads, converting an original-format
    checkpoint into the local cache on first use (one process converts, the others wait).

    ``uri`` is a diffusers model / pipeline folder (returned as is) or an original Wan /
    SAMA-release checkpoint (a weight file or a folder of shards, local or s3://).
    """
    if subfolder and _exists_dir(storage.join(uri, subfolder)):
        return uri, subfolder
    fmt = detect_format(uri)
    if fmt == "diffusers":
        return uri, None
    files = weight_files(uri)
    root = cache_dir or os.environ.get("SAMA_CACHE") or os.path.expanduser("~/.cache/sama")
    key = _source_key(uri, files) + (storage.content_digest(json.dumps(overrides, sort_keys=True)) if overrides else "")
    dst = os.path.join(root, "converted", key)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with open(dst + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # ranks of one node convert once; the rest wait here
        if not os.path.exists(dst + ".complete"):
            log.info("converting %s checkpoint %s -> %s", fmt, uri, dst)
            if os.path.exists(dst):
                import shutil

                shutil.rmtree(dst)
            convert(uri, dst, fmt, "diffusers", overrides=overrides)
            open(dst + ".complete", "w").close()
    return dst, None


def _exists_dir(uri: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = storage.filesystem(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory
