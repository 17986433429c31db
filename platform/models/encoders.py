"""Frozen encoders around the SAMA transformer: Wan VAE, SigLIP semantic tokenizer, UMT5 text.

All three are ``nn.Module`` wrappers (so ``.to(device)`` works) over Hugging Face /
diffusers models loaded from a local folder or ``s3://`` (materialised to a local cache),
or built tiny and random when ``pretrained`` is None (tests, demo). Used offline by the
precompute job and online by the pipeline.

Video tensors here are model-ready: float, (B, C, T, H, W), values in [-1, 1]. Convert a
decoded uint8 (T, H, W, C) clip with :func:`video_to_tensor` and back with
:func:`tensor_to_video`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from sama.models.transformer import torch_dtype


def _resolve(uri: str, subfolder: Optional[str]) -> tuple[str, dict]:
    """(local path, from_pretrained kwargs). From s3:// only the subfolder is fetched."""
    from sama import storage

    if storage.is_s3(uri):
        return storage.materialize(storage.join(uri, subfolder) if subfolder else uri), {}
    return uri, ({"subfolder": subfolder} if subfolder else {})


def _cast(model, dtype: str):
    # Only cast when needed: diffusers warns on any .to(dtype) of models with fp32-kept modules.
    return model if torch_dtype(dtype) == torch.float32 else model.to(torch_dtype(dtype))


# ---------------------------------------------------------------------- video <-> tensor


def video_to_tensor(video) -> torch.Tensor:
    """uint8 (T, H, W, C) array/tensor -> float (C, T, H, W) in [-1, 1]."""
    v = torch.as_tensor(video)
    if v.ndim != 4:
        raise ValueError(f"expected a (T, H, W, C) video, got shape {tuple(v.shape)}")
    v = v.permute(3, 0, 1, 2).float()
    return v / 127.5 - 1.0 if video_is_uint8(video) else v


def video_is_uint8(video) -> bool:
    return str(getattr(video, "dtype", "")).endswith("uint8")


def tensor_to_video(x: torch.Tensor) -> torch.Tensor:
    """float (..., C, T, H, W) in [-1, 1] -> uint8 (..., T, H, W, C)."""
    x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-4, -1)


# ---------------------------------------------------------------------- Wan VAE


@dataclass
class VaeConfig:
    pretrained: Optional[str] = None  # None: tiny random VAE
    subfolder: Optional[str] = "vae"
    dtype: str = "float32"  # Wan's VAE is usually run in fp32 (bf16 costs quality)
    tiling: bool = False  # spatial tiles: bounded memory at high resolution
    slicing: bool = True  # one sample of the batch at a time
    sample_posterior: bool = False  # False: the posterior mean (deterministic precompute)


class WanVAE(nn.Module):
    """``AutoencoderKLWan`` with Wan's per-channel latent normalisation applied.

    Latents out of :meth:`encode` are ``(z - latents_mean) / latents_std``, the space the
    Wan transformer was trained in; :meth:`decode` undoes it.
    """

    def __init__(self, vae, tiling: bool = False, slicing: bool = True, sample_posterior: bool = False):
        super().__init__()
        self.vae = vae
        self.sample_posterior = sample_posterior
        if tiling:
            vae.enable_tiling()
        vae.use_slicing = slicing
        cfg = vae.config
        self.z_dim = cfg.z_dim
        # From the architecture: diffusers' scale_factor_* config entries default to Wan's 8 / 4
        # whatever the down-sampling stages are, so a VAE of another shape would be misread.
        self.spatial_factor = 2 ** (len(cfg.dim_mult) - 1)
        self.temporal_factor = 2 ** sum(cfg.temperal_downsample)
        shape = (1, cfg.z_dim, 1, 1, 1)
        self.register_buffer("latents_mean", torch.tensor(cfg.latents_mean).view(shape), persistent=False)
        self.register_buffer("latents_std", torch.tensor(cfg.latents_std).view(shape), persistent=False)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, F, H, W) of the latents of a (frames, height, width) clip; frames = 4k+1."""
        if (frames - 1) % self.temporal_factor:
            raise ValueError(f"{frames} frames: the Wan VAE needs {self.temporal_factor}k+1")
        f = (frames - 1) // self.temporal_factor + 1
        return (self.z_dim, f, height // self.spatial_factor, width // self.spatial_factor)

    @torch.no_grad()
    def encode(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, T, H, W) in [-1, 1] -> normalised latents (B, z, (T-1)/4+1, H/8, W/8)."""
        dtype = next(self.vae.parameters()).dtype
        dist = self.vae.encode(video.to(dtype)).latent_dist
        z = dist.sample(generator) if self.sample_posterior else dist.mode()
        return (z.float() - self.latents_mean) / self.latents_std

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> (B, 3, T, H, W) in [-1, 1]."""
        dtype = next(self.vae.parameters()).dtype
        z = latents.float() * self.latents_std + self.latents_mean
        return self.vae.decode(z.to(dtype)).sample.float().clamp(-1, 1)


def load_vae(cfg: VaeConfig) -> WanVAE:
    if cfg.pretrained is None:
        from sama.models.tiny import tiny_vae

        vae = _cast(tiny_vae(), cfg.dtype)
    else:
        from diffusers import AutoencoderKLWan

        path, kw = _resolve(cfg.pretrained, cfg.subfolder)
        vae = AutoencoderKLWan.from_pretrained(path, torch_dtype=torch_dtype(cfg.dtype), **kw)
    vae = vae.eval().requires_grad_(False)
    return WanVAE(vae, tiling=cfg.tiling, slicing=cfg.slicing, sample_posterior=cfg.sample_posterior)


# ---------------------------------------------------------------------- SigLIP semantic tokens


@dataclass
class SemanticConfig:
    pretrained: Optional[str] = None  # SigLIP (vision or full) folder, e.g. siglip-so400m-patch14-384; None: tiny
    subfolder: Optional[str] = None
    num_anchor_frames: int = 1  # M
    num_local_tokens: int = 64  # K, a square: adaptive pooling to sqrt(K) x sqrt(K)
    global_token: str = "pooler"  # pooler (SigLIP's attention-pool head) | mean (of patch features)
    dtype: str = "float32"


def anchor_indices(num_frames: int, num_anchors: int) -> list[int]:
    """M frame indices uniformly spread over the clip: the centre of each of M equal segments."""
    if num_frames < 1 or num_anchors < 1:
        raise ValueError("need at least one frame and one anchor")
    return [min(num_frames - 1, int((i + 0.5) * num_frames / num_anchors)) for i in range(num_anchors)]


class SemanticTokenizer(nn.Module):
    """Video -> SigLIP anchor tokens: per anchor frame [global, K local], (B, M * (K + 1), D).

    Steps: pick M anchor frames -> resize to SigLIP's input size (its preprocessing is a
    plain resize and mean/std 0.5, i.e. exactly our [-1, 1] range) -> patch features
    (g x g grid) -> adaptive average pooling to sqrt(K) x sqrt(K) local tokens, plus one
    global token. An image is a 1-frame video (all M anchors are that frame).
    """

    def __init__(self, model, num_anchor_frames: int = 1, num_local_tokens: int = 64, global_token: str = "pooler"):
        super().__init__()
        side = math.isqrt(num_local_tokens)
        if side * side != num_local_tokens:
            raise ValueError(f"num_local_tokens={num_local_tokens} must be a square")
        if global_token not in ("pooler", "mean"):
            raise ValueError(f"global_token={global_token!r}: pooler | mean")
        self.model = model
        self.num_anchor_frames = num_anchor_frames
        self.pool_side = side
        self.global_token = global_token
        self.image_size = model.config.image_size
        self.dim = model.config.hidden_size

    @property
    def num_tokens(self) -> int:
        return self.num_anchor_frames * (self.pool_side**2 + 1)

    @torch.no_grad()
    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) in [-1, 1] -> (B, M * (K + 1), D) float32."""
        b, _, t, _, _ = video.shape
        # 1. Anchor frames.                                   (B*M, 3, H, W)
        idx = anchor_indices(t, self.num_anchor_frames)
        frames = video[:, :, idx].transpose(1, 2).flatten(0, 1)
        # 2. SigLIP input size.                               (B*M, 3, S, S)
        dtype = next(self.model.parameters()).dtype
        frames = F.interpolate(
            frames.float(), size=(self.image_size,) * 2, mode="bilinear", align_corners=False, antialias=True
        ).to(dtype)
        # 3. Patch features on a g x g grid.                  (B*M, g*g, D)
        out = self.model(pixel_values=frames)
        patches = out.last_hidden_state.float()
        g = math.isqrt(patches.shape[1])
        # 4. K local tokens by adaptive average pooling.      (B*M, K, D)
        grid = patches.transpose(1, 2).unflatten(2, (g, g))
        local = F.adaptive_avg_pool2d(grid, self.pool_side).flatten(2).transpose(1, 2)
        # 5. One global token.                                (B*M, 1, D)
        pooled = getattr(out, "pooler_output", None)
        glob = pooled.float() if self.global_token == "pooler" and pooled is not None else patches.mean(1)
        tokens = torch.cat([glob[:, None], local], dim=1)
        return tokens.reshape(b, -1, self.dim)  # (B, M*(K+1), D)


def load_semantic_tokenizer(cfg: SemanticConfig) -> SemanticTokenizer:
    if cfg.pretrained is None:
        from sama.models.tiny import tiny_siglip

        model = _cast(tiny_siglip(), cfg.dtype)
    else:
        from transformers import SiglipVisionModel

        path, kw = _resolve(cfg.pretrained, cfg.subfolder)
        model = SiglipVisionModel.from_pretrained(path, dtype=torch_dtype(cfg.dtype), **kw)
    model = model.eval().requires_grad_(False)
    return SemanticTokenizer(model, cfg.num_anchor_frames, cfg.num_local_tokens, cfg.global_token)


# ---------------------------------------------------------------------- UMT5 text encoder


@dataclass
class TextEncoderConfig:
    pretrained: Optional[str] = None  # a Wan2.1 diffusers folder (text_encoder/ + tokenizer/); None: tiny
    text_encoder_subfolder: Optional[str] = "text_encoder"
    tokenizer_subfolder: Optional[str] = "tokenizer"
    max_length: int = 512  # Wan pads/truncates prompts to 512 tokens
    dtype: str = "float32"


class TextEncoder(nn.Module):
    """Prompts -> UMT5 embeddings (B, max_length, D), zero beyond each prompt's length (as Wan)."""

    def __init__(self, model, tokenizer, max_length: int = 512):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.dim = model.config.d_model

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (embeddings (B, max_length, D) float32, lengths (B,))."""
        device = next(self.model.parameters()).device
        tok = self.tokenizer(
            list(prompts), padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        ids, mask = tok.input_ids.to(device), tok.attention_mask.to(device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        hidden = hidden * mask[..., None]  # Wan zeroes the padded positions
        return hidden, mask.sum(1)

    def forward(self, prompts: list[str]) -> torch.Tensor:
        return self.encode(prompts)[0]


def load_text_encoder(cfg: TextEncoderConfig) -> TextEncoder:
    if cfg.pretrained is None:
        from sama.models.tiny import tiny_text_encoder, tiny_tokenizer

        model, tokenizer = _cast(tiny_text_encoder(), cfg.dtype), tiny_tokenizer()
    else:
        from transformers import AutoTokenizer, UMT5EncoderModel

        path, kw = _resolve(cfg.pretrained, cfg.tokenizer_subfolder)
        tokenizer = AutoTokenizer.from_pretrained(path, **kw)
        path, kw = _resolve(cfg.pretrained, cfg.text_encoder_subfolder)
        model = UMT5EncoderModel.from_pretrained(path, dtype=torch_dtype(cfg.dtype), **kw)
    model = model.eval().requires_grad_(False)
    return TextEncoder(model, tokenizer, cfg.max_length)
