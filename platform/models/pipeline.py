"""Edit pipeline: source video + instruction -> edited video (also image edit and text-to-video).

Sampling is flow matching with diffusers' schedulers (UniPC as Wan's default, or Euler).
The semantic anchor tokens are sampled jointly: they start as pure noise and are stepped
by a second copy of the same scheduler (same sigmas). The transformer predicts *clean*
semantic tokens, turned into the flow velocity the scheduler expects by
v = (s_sigma - s0_pred) / sigma.

Guidance (applied to the latent and the semantic velocity alike):

- text CFG:      v = v(src, null) + g_txt * (v(src, text) - v(src, null))
- dual CFG (``source_guidance_scale`` set, InstructPix2Pix style):
                 v = v(-, null) + g_src * (v(src, null) - v(-, null))
                                + g_txt * (v(src, text) - v(src, null))
  where "-" runs the text-to-video path without source tokens.

Frame count and resolution come from the buckets: a source clip is put into its nearest
bucket and its frames made 4k+1 (``sama.buckets.fit_to_bucket``).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from sama.buckets import Bucket, BucketConfig, fit_to_bucket, frames_4k1, make_buckets, nearest_bucket
from sama.models.encoders import (
    TextEncoder,
    TextEncoderConfig,
    VaeConfig,
    WanVAE,
    load_text_encoder,
    load_vae,
    tensor_to_video,
    video_to_tensor,
)
from sama.models.transformer import SamaModelConfig, SamaTransformer3DModel, load_transformer
from sama.pretexts import IMAGE_EDIT_TAG, VIDEO_EDIT_TAG, compose_prompt

SAMPLERS = ("unipc", "euler")


@dataclass
class PipelineConfig:
    sampler: str = "unipc"  # unipc | euler
    num_inference_steps: int = 50
    shift: float = 3.0  # flow shift: 3.0 for 480p, 5.0 for 720p (Wan)
    guidance_scale: float = 5.0  # text CFG; 1.0 disables it
    source_guidance_scale: Optional[float] = None  # set: dual text/source CFG
    negative_prompt: str = ""
    num_semantic_tokens: Optional[int] = None  # None: the model's num_semantic_tokens; 0: off
    video_tag: str = VIDEO_EDIT_TAG  # task tags prepended to the instruction, as in training
    image_tag: str = IMAGE_EDIT_TAG
    t2v_tag: str = ""
    buckets: BucketConfig = field(default_factory=BucketConfig)


@dataclass
class EditModelConfig:
    """A whole editor (transformer, VAE, text encoder, sampling) as serving and evaluation load it.

    ``checkpoint`` fills ``pretrained`` of any part that has none, so one exported SAMA
    folder configures everything; a part can still point elsewhere.
    """

    checkpoint: Optional[str] = None  # a SAMA pipeline folder (local or s3://); null: tiny random models
    transformer: SamaModelConfig = field(default_factory=SamaModelConfig)
    vae: VaeConfig = field(default_factory=VaeConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)

    def resolved(self) -> tuple[SamaModelConfig, VaeConfig, TextEncoderConfig]:
        parts = []
        for part in (self.transformer, self.vae, self.text):
            if part.pretrained is None and self.checkpoint:
                part = dataclasses.replace(part, pretrained=self.checkpoint)
            parts.append(part)
        return tuple(parts)  # type: ignore[return-value]

    def load(self, device: str | torch.device = "cpu") -> "SamaPipeline":
        return SamaPipeline.from_configs(*self.resolved(), self.pipeline, device=device)


@dataclass
class SamaPipelineOutput:
    video: torch.Tensor  # (B, T, H, W, C) uint8 (or float (B, 3, T, H, W) in [-1, 1] for output_type="tensor")
    latents: torch.Tensor  # (B, C, F, h, w) final normalised latents
    semantic: Optional[torch.Tensor]  # (B, N_m, D_sig) final semantic tokens


def make_scheduler(sampler: str, shift: float, num_train_timesteps: int = 1000):
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if sampler == "euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=shift)
    if sampler == "unipc":
        return UniPCMultistepScheduler(
            num_train_timesteps=num_train_timesteps, prediction_type="flow_prediction",
            use_flow_sigmas=True, flow_shift=shift,
        )
    raise ValueError(f"sampler={sampler!r}: choose one of {SAMPLERS}")


class SamaPipeline:
    def __init__(self, transformer: SamaTransformer3DModel, vae: WanVAE, text_encoder: TextEncoder,
                 config: PipelineConfig = PipelineConfig()):
        self.transformer = transformer.eval()
        self.vae = vae
        self.text_encoder = text_encoder
        self.config = config
        self.buckets = make_buckets(config.buckets)

    @classmethod
    def from_configs(cls, model: SamaModelConfig, vae: VaeConfig, text: TextEncoderConfig,
                     config: PipelineConfig = PipelineConfig(), device: str | torch.device = "cpu"):
        return cls(load_transformer(model), load_vae(vae), load_text_encoder(text), config).to(device)

    def to(self, device: str | torch.device) -> "SamaPipeline":
        for m in (self.transformer, self.vae, self.text_encoder):
            m.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.transformer.patch_embedding.weight.device

    # ------------------------------------------------------------------ inputs

    def prepare_source(self, source, height: int | None = None, width: int | None = None) -> torch.Tensor:
        """uint8/float (T, H, W, C) or (H, W, C) clip -> (1, 3, T', h, w) in [-1, 1], bucketed."""
        bucket = Bucket(height, width) if height is not None and width is not None else None
        clip, _ = fit_to_bucket(source, self.config.buckets, self.buckets, bucket)
        return video_to_tensor(clip)[None]

    # ------------------------------------------------------------------ sampling

    def _velocity(self, latents, sem, t, sigma, text, source):
        """Flow velocities of the latents and of the semantic tokens for one CFG branch."""
        out = self.transformer(latents, t, text, source_latents=source, semantic_tokens=sem)
        v_sem = None
        if sem is not None:  # the head predicts clean tokens: v = (s_sigma - s0) / sigma
            v_sem = (sem.float() - out.semantic.float()) / max(sigma, 1e-6)
        return out.sample.float(), v_sem

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        source=None,
        *,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        source_guidance_scale: float | None = None,
        negative_prompt: str | None = None,
        seed: int = 0,
        output_type: str = "uint8",
    ) -> SamaPipelineOutput:
        """Edit ``source`` (a (T, H, W, C) clip, an (H, W, C) image) following ``prompt``;
        without ``source``, generate a ``num_frames`` x ``height`` x ``width`` video from text."""
        cfg = self.config
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        batch = len(prompts)
        steps = num_inference_steps or cfg.num_inference_steps
        g_txt = cfg.guidance_scale if guidance_scale is None else guidance_scale
        g_src = cfg.source_guidance_scale if source_guidance_scale is None else source_guidance_scale
        device, dtype = self.device, self.transformer.dtype

        # 1. Source clip -> bucket -> latents.                      (B, C, F, h, w)
        source_latents = None
        if source is not None:
            src = self.prepare_source(source, height, width).to(device)
            source_latents = self.vae.encode(src).to(dtype).expand(batch, -1, -1, -1, -1)
            _, _, num_frames, height, width = src.shape
            tag = cfg.image_tag if num_frames == 1 else cfg.video_tag
        else:
            if height is None or width is None:  # default: the bucket nearest 16:9 (480x832)
                height, width = nearest_bucket(9, 16, self.buckets)
            num_frames = frames_4k1(num_frames or cfg.buckets.max_frames)
            tag = cfg.t2v_tag
            g_src = None  # nothing to guide with

        # 2. Text embeddings: conditional and null.                 (B, L, D_txt)
        text = self.text_encoder([compose_prompt(p, tag) for p in prompts]).to(device, dtype)
        null = self.text_encoder([negative_prompt if negative_prompt is not None else cfg.negative_prompt] * batch)
        null = null.to(device, dtype)
        use_cfg = g_txt != 1.0 or g_src is not None

        # 3. Initial noise for latents and semantic tokens (seeded on CPU: same on any device).
        gen = torch.Generator().manual_seed(seed)
        c, f, h, w = self.vae.latent_shape(num_frames, height, width)
        latents = torch.randn((batch, c, f, h, w), generator=gen).to(device)
        n_sem = self.transformer.config.num_semantic_tokens if cfg.num_semantic_tokens is None else cfg.num_semantic_tokens
        sem = torch.randn((batch, n_sem, self.transformer.config.semantic_dim), generator=gen).to(device) if n_sem else None

        # 4. One scheduler per state, on the same sigmas.
        scheduler = make_scheduler(cfg.sampler, cfg.shift)
        scheduler.set_timesteps(steps, device=device)
        sem_scheduler = copy.deepcopy(scheduler) if sem is not None else None

        # 5. Denoising loop with text or dual CFG.
        for i, t in enumerate(scheduler.timesteps):
            tt = t.expand(batch).to(device)
            sigma = float(scheduler.sigmas[i])
            x, s = latents.to(dtype), (sem.to(dtype) if sem is not None else None)
            v, vs = self._velocity(x, s, tt, sigma, text, source_latents)
            if use_cfg:
                v_null, vs_null = self._velocity(x, s, tt, sigma, null, source_latents)
                if g_src is None:  # text CFG
                    v = v_null + g_txt * (v - v_null)
                    vs = vs_null + g_txt * (vs - vs_null) if vs is not None else None
                else:  # dual text/source CFG
                    v_none, vs_none = self._velocity(x, s, tt, sigma, null, None)
                    v = v_none + g_src * (v_null - v_none) + g_txt * (v - v_null)
                    if vs is not None:
                        vs = vs_none + g_src * (vs_null - vs_none) + g_txt * (vs - vs_null)
            latents = scheduler.step(v, t, latents, return_dict=False)[0]
            if sem is not None:
                sem = sem_scheduler.step(vs, t, sem, return_dict=False)[0]

        # 6. Decode.                                               (B, 3, T, H, W) -> (B, T, H, W, 3)
        if output_type == "latent":
            video = latents
        else:
            video = self.vae.decode(latents)
            if output_type == "uint8":
                video = tensor_to_video(video)
            elif output_type != "tensor":
                raise ValueError(f"output_type={output_type!r}: uint8 | tensor | latent")
        return SamaPipelineOutput(video=video, latents=latents, semantic=sem)


def as_numpy_video(video: torch.Tensor) -> np.ndarray:
    """One (T, H, W, C) uint8 clip of a pipeline output, for writing with PyAV."""
    return video.cpu().numpy()
