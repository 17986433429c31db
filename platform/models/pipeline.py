"""Edit pipeline: source video + instruction -> edited video (also image edit and text-to-video).

Defaults are the public SAMA release's: flow-match Euler with shift 5 and its "extra one
step" grid (``sama.models.scheduling``), 50 steps, text CFG 5, prompts tagged
"[Video edit] ..." and the tag alone as the negative prompt; UniPC / diffusers' Euler are
options. The semantic anchor tokens are sampled jointly: they start as pure noise and are
stepped like the latents (a second scheduler instance, same sigmas). The head's output is
their flow velocity (``semantic_prediction="velocity"``, the release) or clean tokens
(``"sample"``), turned into a velocity by v = (s_sigma - s0_pred) / sigma.

Every input can also come precomputed, as diffusers pipelines allow: ``prompt_embeds`` /
``negative_prompt_embeds``, ``source_latents``, and the initial noise ``latents`` /
``semantic_latents``. Seeded noise: the latents from ``Generator().manual_seed(seed)``
(the release's draw), the semantic tokens from ``seed + 1``.

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
from typing import Callable, Optional

import numpy as np
import torch

from sama.buckets import Bucket, BucketConfig, fit_to_bucket, frames_4k1, make_buckets, nearest_bucket
from sama.models.edit_parallel import EditParallel
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
from sama.models.loading import load_transformer
from sama.models.scheduling import SAMPLERS, make_scheduler
from sama.models.transformer import SamaModelConfig, SamaTransformer3DModel
from sama.pretexts import IMAGE_EDIT_TAG, VIDEO_EDIT_TAG, compose_prompt

__all__ = ["SAMPLERS", "make_scheduler", "PipelineConfig", "EditModelConfig", "SamaPipeline", "EditStopped"]


@dataclass
class PipelineConfig:
    sampler: str = "flow_euler"  # flow_euler (the release) | unipc | euler (diffusers)
    num_inference_steps: int = 50
    shift: float = 5.0  # flow shift (the release: 5)
    guidance_scale: float = 5.0  # text CFG; 1.0 disables it
    source_guidance_scale: Optional[float] = None  # set: dual text/source CFG
    negative_prompt: Optional[str] = None  # None: the task's tag alone ("[Video edit]"), as the release
    num_semantic_tokens: Optional[int] = None  # None: the model's num_semantic_tokens; 0: off
    video_tag: str = VIDEO_EDIT_TAG  # task tags prepended to the instruction, as in training
    image_tag: str = IMAGE_EDIT_TAG
    t2v_tag: str = ""
    # Step cache (TeaCache family, measured on the latents the model sees): reuse the last computed
    # guided velocity while the input's accumulated relative L1 change since then stays below this.
    # 0: off (the release: every step computed). The first and last steps are always computed.
    step_cache: float = 0.0
    # Evaluate the guidance branches that share a source in one batched forward (B x 2) instead of
    # one after another: the same velocities; faster where one branch leaves the device idle
    # (short sequences), twice the activations. Off: the release evaluates them one by one.
    cfg_batch: bool = False
    # torch.compile each transformer block (diffusers' regional compilation: one compile serves all
    # 40 blocks) with this backend, e.g. "inductor" on GPUs; None: eager, as the release runs.
    compile: Optional[str] = None
    # The release's script edits at most 49 frames; training buckets keep 81.
    buckets: BucketConfig = field(default_factory=lambda: BucketConfig(max_frames=49))


@dataclass
class EditModelConfig:
    """A whole editor (transformer, VAE, text encoder, sampling) as serving and evaluation load it.

    ``checkpoint`` fills ``pretrained`` of any part that has none, so one exported SAMA
    folder configures everything; a part can still point elsewhere. ``checkpoint`` may also
    be a DiT alone in the original Wan / SAMA-release format (the released SAMA-14B): then
    ``base``, a Wan2.1 diffusers folder, gives the VAE, text encoder and tokenizer.
    """

    checkpoint: Optional[str] = None  # a SAMA pipeline folder or a release DiT (local or s3://); null: tiny models
    base: Optional[str] = None  # a Wan2.1 diffusers folder for the VAE and text encoder (default: checkpoint)
    transformer: SamaModelConfig = field(default_factory=SamaModelConfig)
    vae: VaeConfig = field(default_factory=VaeConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)

    def resolved(self) -> tuple[SamaModelConfig, VaeConfig, TextEncoderConfig]:
        parts = []
        for part, default in (
            (self.transformer, self.checkpoint),
            (self.vae, self.base or self.checkpoint),
            (self.text, self.base or self.checkpoint),
        ):
            if part.pretrained is None and default:
                part = dataclasses.replace(part, pretrained=default)
            parts.append(part)
        return tuple(parts)  # type: ignore[return-value]

    def check_parts(self) -> None:
        """Every part's folder exists: a release DiT given as ``checkpoint`` has no VAE or text
        encoder, and says so before anything loads."""
        from sama import storage

        _, vae, text = self.resolved()
        for key, part, sub in (("vae", vae, vae.subfolder), ("text", text, text.text_encoder_subfolder)):
            if (
                part.pretrained
                and sub
                and part.pretrained == self.checkpoint
                and not storage.exists(storage.join(part.pretrained, sub))
            ):
                raise ValueError(
                    f"checkpoint {self.checkpoint} has no {sub}/ (a DiT alone, e.g. the SAMA-14B "
                    f"release): set base (or {key}.pretrained) to a Wan2.1 diffusers folder such as "
                    "Wan2.1-T2V-14B-Diffusers"
                )

    def load(self, device: str | torch.device = "cpu") -> "SamaPipeline":
        self.check_parts()
        return SamaPipeline.from_configs(*self.resolved(), self.pipeline, device=device)


@dataclass
class SamaPipelineOutput:
    video: torch.Tensor  # (B, T, H, W, C) uint8 (or float (B, 3, T, H, W) in [-1, 1] for output_type="tensor")
    latents: torch.Tensor  # (B, C, F, h, w) final normalised latents
    semantic: Optional[torch.Tensor]  # (B, N_m, D_sig) final semantic tokens
    computed_steps: int = 0  # transformer evaluations per CFG branch (fewer than the steps with a step cache)


class StepCache:
    """Reuse the last computed velocities while the model's input has changed little since: the
    relative L1 change between consecutive steps' latents, accumulated since the last computed
    step, must stay below ``threshold`` (0: never reuse, so the output is the uncached one)."""

    def __init__(self, threshold: float):
        self.threshold, self.acc = threshold, 0.0
        self.prev: torch.Tensor | None = None
        self.saved: tuple | None = None

    def reuse(self, x: torch.Tensor, last: bool) -> tuple | None:
        if self.threshold <= 0 or self.saved is None or self.prev is None or last:
            self.prev = x
            return None
        self.acc += ((x - self.prev).abs().mean() / self.prev.abs().mean().clamp_min(1e-8)).item()
        self.prev = x
        return self.saved if self.acc < self.threshold else None

    def store(self, velocities: tuple) -> None:
        self.saved, self.acc = velocities, 0.0


class SamaPipeline:
    def __init__(
        self,
        transformer: SamaTransformer3DModel,
        vae: WanVAE,
        text_encoder: TextEncoder,
        config: PipelineConfig = PipelineConfig(),
    ):
        self.transformer = transformer.eval()
        self.vae = vae
        self.text_encoder = text_encoder
        self.config = config
        self.buckets = make_buckets(config.buckets)
        self.parallel: EditParallel | None = None
        if config.compile:
            self.transformer.compile_repeated_blocks(backend=config.compile, fullgraph=False)

    @classmethod
    def from_configs(
        cls,
        model: SamaModelConfig,
        vae: VaeConfig,
        text: TextEncoderConfig,
        config: PipelineConfig = PipelineConfig(),
        device: str | torch.device = "cpu",
    ):
        return cls(load_transformer(model, device), load_vae(vae), load_text_encoder(text), config).to(device)

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

    def configure(self, config: PipelineConfig) -> None:
        """New sampling settings (steps, guidance, step cache, buckets, ...)."""
        self.config, self.buckets = config, make_buckets(config.buckets)

    def enable_parallel(self, parallel: EditParallel | None) -> None:
        """Share every edit with the other processes of ``parallel`` (None: this one alone). Each
        of them must call the pipeline with the same arguments; each gets the whole output."""
        self.transformer.enable_sequence_parallel(parallel.sp if parallel else None)
        self.parallel = parallel

    # ------------------------------------------------------------------ sampling

    @staticmethod
    def _branches(text, null, source, use_cfg: bool, dual: bool) -> list[tuple]:
        """The guidance branches of a step, as (text, source): conditional, null, source-free."""
        return [(text, source)] + ([(null, source)] if use_cfg else []) + ([(null, None)] if dual else [])

    def _evaluate(self, x, s, tt, sigma, branches: list[tuple]) -> list[tuple]:
        """Velocities of every branch: this process's share (CFG parallel) evaluated one forward
        per branch, or per source with ``cfg_batch``; the rest from the other groups."""
        par = self.parallel
        mine = par.mine(len(branches)) if par is not None else list(range(len(branches)))
        out: dict[int, tuple] = {}
        for group in self._forwards([branches[j] for j in mine]):
            idx = [mine[k] for k in group]
            k = len(group)
            text = torch.cat([branches[j][0] for j in idx])
            v, vs = self._velocity(_rep(x, k), _rep(s, k), _rep(tt, k), sigma, text, _rep(branches[idx[0]][1], k))
            for j, vj, vsj in zip(idx, v.chunk(k), vs.chunk(k) if vs is not None else [None] * k):
                out[j] = (vj, vsj)
        if par is None or par.cfg_world == 1 or len(branches) == 1:
            return [out[j] for j in range(len(branches))]
        v_all = par.exchange([out[j][0] for j in mine], len(branches))
        vs_all = par.exchange([out[j][1] for j in mine], len(branches)) if s is not None else [None] * len(branches)
        return list(zip(v_all, vs_all))

    def _forwards(self, branches: list[tuple]) -> list[list[int]]:
        """Branch indices per transformer forward: batched when they share a source (``cfg_batch``)."""
        if not self.config.cfg_batch:
            return [[k] for k in range(len(branches))]
        groups: list[list[int]] = []
        for k, (_, src) in enumerate(branches):
            same = next((g for g in groups if branches[g[0]][1] is src), None)
            if same is not None:
                same.append(k)
            else:
                groups.append([k])
        return groups

    def forwards_per_step(self, guidance_scale: float | None = None, source_guidance_scale: float | None = None) -> int:
        """Transformer forwards this process makes per computed step (progress reporting)."""
        g_txt = self.config.guidance_scale if guidance_scale is None else guidance_scale
        g_src = self.config.source_guidance_scale if source_guidance_scale is None else source_guidance_scale
        src = object()
        branches = self._branches(None, None, src, g_txt != 1.0 or g_src is not None, g_src is not None)
        par = self.parallel
        mine = [branches[j] for j in par.mine(len(branches))] if par is not None else branches
        return len(self._forwards(mine))

    def _velocity(self, latents, sem, t, sigma, text, source):
        """Flow velocities of the latents and of the semantic tokens for one CFG branch."""
        out = self.transformer(latents, t, text, source_latents=source, semantic_tokens=sem)
        v_sem = None
        if sem is not None:
            v_sem = out.semantic.float()
            if self.transformer.config.semantic_prediction == "sample":  # clean tokens: v = (s - s0) / sigma
                v_sem = (sem.float() - v_sem) / max(sigma, 1e-6)
        return out.sample.float(), v_sem

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
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
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        source_latents: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
        semantic_latents: torch.Tensor | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> SamaPipelineOutput:
        """Edit ``source`` (a (T, H, W, C) clip, an (H, W, C) image) following ``prompt``;
        without a source, generate a ``num_frames`` x ``height`` x ``width`` video from text.

        Precomputed inputs replace their raw counterparts: ``prompt_embeds`` /
        ``negative_prompt_embeds`` (B, L, D_txt) the (tagged) prompts, ``source_latents``
        (B, C, F, h, w) the source clip, ``latents`` / ``semantic_latents`` the seeded noise.
        ``stop`` is asked before every step; true raises :class:`EditStopped` (a cancelled request).
        """
        cfg = self.config
        if prompt_embeds is not None:
            batch = prompt_embeds.shape[0]
        elif prompt is not None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            batch = len(prompts)
        else:
            raise ValueError("give a prompt or prompt_embeds")
        steps = num_inference_steps or cfg.num_inference_steps
        g_txt = cfg.guidance_scale if guidance_scale is None else guidance_scale
        g_src = cfg.source_guidance_scale if source_guidance_scale is None else source_guidance_scale
        device, dtype = self.device, self.transformer.dtype

        # 1. Source clip -> bucket -> latents.                      (B, C, F, h, w)
        if source_latents is None and source is not None:
            src = self.prepare_source(source, height, width).to(device)
            source_latents = self.vae.encode(src)
            _, _, num_frames, height, width = src.shape
        if source_latents is not None:
            source_latents = source_latents.to(device, dtype).expand(batch, -1, -1, -1, -1)
            if source is None:  # given as latents: the output takes their shape
                num_frames = (source_latents.shape[2] - 1) * self.vae.temporal_factor + 1
                height = source_latents.shape[3] * self.vae.spatial_factor
                width = source_latents.shape[4] * self.vae.spatial_factor
            tag = cfg.image_tag if num_frames == 1 else cfg.video_tag
        else:
            if height is None or width is None:  # default: the bucket nearest 16:9 (480x832)
                height, width = nearest_bucket(9, 16, self.buckets, cfg.buckets.match)
            num_frames = frames_4k1(num_frames or cfg.buckets.max_frames)
            tag = cfg.t2v_tag
            g_src = None  # nothing to guide with

        # 2. Text embeddings: conditional and negative (the tag alone by default).  (B, L, D_txt)
        if prompt_embeds is None:
            prompt_embeds = self.text_encoder([compose_prompt(p, tag) for p in prompts])
        if negative_prompt_embeds is None:
            neg = negative_prompt if negative_prompt is not None else cfg.negative_prompt
            negative_prompt_embeds = self.text_encoder([tag if neg is None else neg] * batch)
        text, null = prompt_embeds.to(device, dtype), negative_prompt_embeds.to(device, dtype)
        use_cfg = g_txt != 1.0 or g_src is not None

        # 3. Initial noise for latents and semantic tokens (seeded on CPU: same on any device).
        c, f, h, w = self.vae.latent_shape(num_frames, height, width)
        if latents is None:
            latents = torch.randn((batch, c, f, h, w), generator=torch.Generator().manual_seed(seed))
        latents = latents.to(device, torch.float32)
        n_sem = (
            self.transformer.config.num_semantic_tokens if cfg.num_semantic_tokens is None else cfg.num_semantic_tokens
        )
        sem = semantic_latents
        if sem is None and n_sem:
            sem = torch.randn(
                (batch, n_sem, self.transformer.config.semantic_dim), generator=torch.Generator().manual_seed(seed + 1)
            )
        sem = sem.to(device, torch.float32) if sem is not None else None

        # 4. One scheduler per state, on the same sigmas.
        scheduler = make_scheduler(cfg.sampler, cfg.shift)
        scheduler.set_timesteps(steps, device=device)
        sem_scheduler = copy.deepcopy(scheduler) if sem is not None else None

        # 5. Denoising loop with text or dual CFG. The timestep goes in the model's dtype,
        #    as the release feeds it (bf16 rounds it; fp32 keeps it).
        cache, computed = StepCache(cfg.step_cache), 0
        for i, t in enumerate(scheduler.timesteps):
            stopped = bool(stop and stop())
            if self.parallel is not None:  # only rank 0 hears of a cancel; all stop at the same step
                stopped = self.parallel.agree(stopped, device)
            if stopped:
                raise EditStopped(f"stopped before step {i + 1} of {steps}")
            tt = t.expand(batch).to(device, dtype)
            sigma = float(scheduler.sigmas[i])
            x, s = latents.to(dtype), (sem.to(dtype) if sem is not None else None)
            reused = cache.reuse(latents, last=i == len(scheduler.timesteps) - 1)
            if reused is not None:
                v, vs = reused
                latents = scheduler.step(v, t, latents, return_dict=False)[0]
                if sem is not None:
                    sem = sem_scheduler.step(vs, t, sem, return_dict=False)[0]
                continue
            computed += 1
            branches = self._branches(text, null, source_latents, use_cfg, g_src is not None)
            vel = self._evaluate(x, s, tt, sigma, branches)
            v, vs = vel[0]
            if use_cfg:
                v_null, vs_null = vel[1]
                if g_src is None:  # text CFG
                    v = v_null + g_txt * (v - v_null)
                    vs = vs_null + g_txt * (vs - vs_null) if vs is not None else None
                else:  # dual text/source CFG
                    v_none, vs_none = vel[2]
                    v = v_none + g_src * (v_null - v_none) + g_txt * (v - v_null)
                    if vs is not None:
                        vs = vs_none + g_src * (vs_null - vs_none) + g_txt * (vs - vs_null)
            cache.store((v, vs))
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
        return SamaPipelineOutput(video=video, latents=latents, semantic=sem, computed_steps=computed)


class EditStopped(Exception):
    """The pipeline's ``stop`` said so (a cancelled request): no output."""


def _rep(t: torch.Tensor | None, k: int) -> torch.Tensor | None:
    return torch.cat([t] * k) if t is not None and k > 1 else t


def as_numpy_video(video: torch.Tensor) -> np.ndarray:
    """One (T, H, W, C) uint8 clip of a pipeline output, for writing with PyAV."""
    return video.cpu().numpy()
