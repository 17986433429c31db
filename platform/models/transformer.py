"""The SAMA transformer: Wan2.1's DiT run in context over [source][semantic][target] tokens.

``SamaTransformer3DModel`` subclasses diffusers' ``WanTransformer3DModel``, so it keeps
``from_pretrained`` / ``save_pretrained``, gradient checkpointing and PEFT, and loads the
real Wan2.1 T2V checkpoints (1.3B, 14B) with only the new parameters initialised, the
authors' SAMA-14B release, and original-format Wan weights (``sama.models.convert``):

- ``type_embed``           learned embedding per token role (source / target / semantic),
                           used instead of shifted RoPE (paper Sec. 3.1);
- ``semantic_projector``   LayerNorm -> Linear(semantic_dim -> semantic_hidden_dim) -> GELU
                           -> Linear(-> model dim): SigLIP anchor tokens into the token space;
- ``semantic_head``        LayerNorm -> Linear(model dim -> semantic_dim) on the final layer;
- ``semantic_pos_embed``   optional (``semantic_slot_embed=True``): one learned vector per
                           semantic slot, zero-initialised; the release has none.

Token layout and positions (from the public SAMA release):

    sequence   [ source (N_s) | semantic (N_m) | target (N_t) ]
    RoPE       source and target each on their own grid starting at frame 0 (shared positions);
               semantic tokens: see ``semantic_rope``
    output     flow velocity read from the last N_t positions; semantic head on N_m positions

Numerics (config keys, recorded in ``config.json``):

- ``semantic_rope``: ``"zero_qk"`` (default, the release): semantic tokens get complex-zero
  rotary frequencies, so their queries and keys are exactly 0 after RoPE: they attend
  uniformly to every token and every token gives them logit 0. ``"identity"``: zero phase
  (cos 1, sin 0), i.e. unrotated queries and keys.
- ``semantic_prediction``: ``"velocity"`` (default, the release): the semantic head predicts
  the flow velocity of the semantic tokens (noise - clean), trained with L1 to it and
  stepped by the scheduler like the latents. ``"sample"``: it predicts the clean tokens.
- ``semantic_norm_eps``: eps of the projector's and head's LayerNorms (release: 1e-6).
- The timestep sinusoid is computed in float64, as the original Wan code does (diffusers'
  float32 version is off by up to ~1e-4 at t ~ 1000).

Why the release's numerics are our training default too: SAMA-14B is the only trained SAMA
model, and fine-tuning it (stage 1 from the release) or comparing against it is only
meaningful with the numerics it was trained under; a model trained here then also runs in
the release's own tools (``sama convert --to release``). The measured alternative
(``bench/semantic_numerics.py``: a 3-layer width-64 model, a synthetic edit the semantic
stream must carry, 1500 steps, 4 seeds) favours ``identity`` RoPE slightly: held-out edit
error 0.87x (velocity) and 0.85x (sample) of the release's, inside the seed-to-seed spread
(0.11-0.18) but lower in most seeds; velocity vs sample made no consistent difference. That
is too small and too toy to give up compatibility; ``semantic_rope=identity`` stays one key
away for a run from plain Wan. Configs written before these keys existed load with their
old behaviour (identity, sample, eps 1e-5, slot embedding): see :func:`legacy_numerics`.

Timestep of the clean source tokens (``source_timestep`` in the config):

- ``"shared"`` (default, the release): the whole sequence uses the target's scalar
  timestep, the 1-D path Wan2.1 was pre-trained with. diffusers 0.42.1 does support a 2-D
  (batch, seq) timestep (the Wan2.2-TI2V path), but it materialises a (B, S, 6, dim) fp32
  modulation tensor in every block: at 480p x 81 frames with the source (S ~ 65.6k) and
  dim 5120 that is ~8 GB per block for the 14B model. The source tokens are told apart by
  their type embedding instead.
- ``"zero"``: source tokens get t = 0 (they are clean) through that per-token path;
  semantic and target tokens get t. Use it at small scale or with a checkpoint trained so.

Optional source mask (``source_attention_mask``, off in the release, whose mask is built
but never applied): source queries attend only to source and semantic keys, so the source
stream never reads the noisy target directly. Implemented without an S x S mask
(``attention.prefix_restricted_attention``).

Paths: video edit (source + semantic + target), image edit (1-frame latents), text-to-video
(no source), and any of them without semantic tokens.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

import torch
import torch.nn as nn
from diffusers import WanTransformer3DModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.transformers.transformer_wan import WanAttention, _get_qkv_projections
from diffusers.utils import BaseOutput
from diffusers.utils.peft_utils import apply_lora_scale

from sama.models import attention as attn_dispatch
from sama.models.sequence_parallel import SequenceParallel

# Type-embedding ids, as in the paper: 0 source, 1 target, 2 semantic.
SOURCE, TARGET, SEMANTIC = 0, 1, 2
SOURCE_TIMESTEP_MODES = ("shared", "zero")
SEMANTIC_ROPE_MODES = ("zero_qk", "identity")
SEMANTIC_PREDICTIONS = ("velocity", "sample")


class SamaRotary(NamedTuple):
    """What the Wan block hands to self-attention as ``rotary_emb``.

    diffusers' ``WanTransformerBlock`` passes self-attention only ``rotary_emb`` (its
    ``attention_mask`` argument is always None), so the in-context restriction rides along
    here; being a block argument it also survives gradient-checkpointing recomputation.
    """

    cos: torch.Tensor  # (1, S, 1, head_dim)
    sin: torch.Tensor  # (1, S, 1, head_dim)
    num_restricted: int = 0  # the first num_restricted queries (source tokens) ...
    kv_prefix: int = 0  # ... see only the first kv_prefix keys (source + semantic)
    sp: Optional[SequenceParallel] = None  # set: cos/sin and the hidden states are this rank's slice
    length: int = 0  # with sp: the unpadded sequence length (keys beyond it are padding)


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # Same arithmetic as diffusers' WanAttnProcessor (interleaved pairs).
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class Float64Timesteps(nn.Module):
    """Wan's sinusoidal timestep features, [cos | sin], computed in float64 as the original
    Wan code computes them (t up to 1000 loses ~1e-4 in float32), returned as float32."""

    def __init__(self, num_channels: int):
        super().__init__()
        self.num_channels = num_channels

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=timesteps.device) / half)
        args = timesteps.to(torch.float64)[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).float()


class SamaAttnProcessor:
    """Wan attention with every kernel call routed through ``sama.models.attention``."""

    def __call__(
        self,
        attn: WanAttention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple | None = None,
    ) -> torch.Tensor:
        if attn.add_k_proj is not None:
            raise NotImplementedError("SAMA builds on Wan T2V; image cross-attention (I2V) is not supported")
        q, k, v = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        q, k = attn.norm_q(q), attn.norm_k(k)
        q, k, v = (t.unflatten(2, (attn.heads, -1)) for t in (q, k, v))  # (B, S, H, Dh)
        restricted, sp = 0, None
        if rotary_emb is not None:
            q = _apply_rotary(q, rotary_emb[0], rotary_emb[1])
            k = _apply_rotary(k, rotary_emb[0], rotary_emb[1])
            if isinstance(rotary_emb, SamaRotary):
                restricted, kv_prefix, sp = rotary_emb.num_restricted, rotary_emb.kv_prefix, rotary_emb.sp
        if sp is not None:  # Ulysses: this rank's tokens x all heads -> all tokens x this rank's heads
            q, k, v = (sp.seq_to_heads(t) for t in (q, k, v))
            k, v = k[:, : rotary_emb.length], v[:, : rotary_emb.length]  # no key is padding
        if restricted:
            out = attn_dispatch.prefix_restricted_attention(q, k, v, restricted, kv_prefix)
        else:
            out = attn_dispatch.attention(q, k, v, mask=attention_mask)
        if sp is not None:
            out = sp.heads_to_seq(out)
        out = out.flatten(2, 3).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))


@dataclass
class SamaTransformerOutput(BaseOutput):
    sample: torch.Tensor  # (B, C, F, H, W) predicted flow velocity of the target latents
    semantic: Optional[torch.Tensor] = None  # (B, N_m, semantic_dim): velocity or clean tokens (semantic_prediction)


class SamaTransformer3DModel(WanTransformer3DModel):
    """Wan2.1 DiT + SAMA in-context conditioning. See the module docstring."""

    # Capabilities.
    supports_source: bool = True
    supports_semantic_tokens: bool = True
    supports_source_attention_mask: bool = True
    token_roles = ("source", "target", "semantic")  # index = type-embedding id
    # The base class's context-parallel plan splits a target-only sequence; ours differs
    # (sequence_parallel.py splits the whole in-context sequence instead).
    _cp_plan = None
    sequence_parallel: Optional[SequenceParallel] = None  # runtime state, not config: see enable_...
    _skip_layerwise_casting_patterns = [
        *WanTransformer3DModel._skip_layerwise_casting_patterns,
        "type_embed",
        "semantic_",
    ]

    # diffusers builds the config from this signature: every base argument is spelled out.
    @register_to_config
    def __init__(
        self,
        patch_size: tuple[int, ...] = (1, 2, 2),
        num_attention_heads: int = 40,
        attention_head_dim: int = 128,
        in_channels: int = 16,
        out_channels: int = 16,
        text_dim: int = 4096,
        freq_dim: int = 256,
        ffn_dim: int = 13824,
        num_layers: int = 40,
        cross_attn_norm: bool = True,
        qk_norm: str | None = "rms_norm_across_heads",
        eps: float = 1e-6,
        image_dim: int | None = None,
        added_kv_proj_dim: int | None = None,
        rope_max_seq_len: int = 1024,
        pos_embed_seq_len: int | None = None,
        # --- SAMA ---
        semantic_dim: int = 1152,
        semantic_hidden_dim: int = 1024,
        num_semantic_tokens: int = 65,
        source_timestep: str = "shared",
        source_attention_mask: bool = False,
        type_embed_init_std: float = 0.02,
        semantic_rope: str = "zero_qk",
        semantic_prediction: str = "velocity",
        semantic_norm_eps: float = 1e-6,
        semantic_slot_embed: bool = False,
    ) -> None:
        super().__init__(
            patch_size=patch_size,
            num_attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim,
            in_channels=in_channels,
            out_channels=out_channels,
            text_dim=text_dim,
            freq_dim=freq_dim,
            ffn_dim=ffn_dim,
            num_layers=num_layers,
            cross_attn_norm=cross_attn_norm,
            qk_norm=qk_norm,
            eps=eps,
            image_dim=image_dim,
            added_kv_proj_dim=added_kv_proj_dim,
            rope_max_seq_len=rope_max_seq_len,
            pos_embed_seq_len=pos_embed_seq_len,
        )
        for name, value, choices in (
            ("source_timestep", source_timestep, SOURCE_TIMESTEP_MODES),
            ("semantic_rope", semantic_rope, SEMANTIC_ROPE_MODES),
            ("semantic_prediction", semantic_prediction, SEMANTIC_PREDICTIONS),
        ):
            if value not in choices:
                raise ValueError(f"{name}={value!r}; choose one of {choices}")
        dim = num_attention_heads * attention_head_dim
        # Wan's timestep features in float64 (no parameters: checkpoints are unaffected).
        self.condition_embedder.timesteps_proj = Float64Timesteps(freq_dim)
        self.type_embed = nn.Embedding(len(self.token_roles), dim)
        self.semantic_projector = nn.Sequential(
            nn.LayerNorm(semantic_dim, eps=semantic_norm_eps),
            nn.Linear(semantic_dim, semantic_hidden_dim),
            nn.GELU(),
            nn.Linear(semantic_hidden_dim, dim),
        )
        self.semantic_pos_embed = nn.Parameter(torch.zeros(num_semantic_tokens, dim)) if semantic_slot_embed else None
        self.semantic_head = nn.Sequential(nn.LayerNorm(dim, eps=semantic_norm_eps), nn.Linear(dim, semantic_dim))
        self._init_sama_parameters()
        for module in self.modules():
            if isinstance(module, WanAttention):
                module.set_processor(SamaAttnProcessor())

    # ------------------------------------------------------------------ parameters

    def sama_modules(self) -> dict[str, nn.Module]:
        return {
            "type_embed": self.type_embed,
            "semantic_projector": self.semantic_projector,
            "semantic_head": self.semantic_head,
        }

    def sama_parameter_names(self) -> list[str]:
        """Names of the parameters SAMA adds to Wan (what a plain Wan checkpoint lacks)."""
        names = ["semantic_pos_embed"] if self.semantic_pos_embed is not None else []
        for prefix, module in self.sama_modules().items():
            names += [f"{prefix}.{n}" for n, _ in module.named_parameters()]
        return names

    @torch.no_grad()
    def _init_sama_parameters(self) -> None:
        # Through Module.apply: under DeepSpeed's zero.Init (parameters partitioned as they are
        # built) apply gathers each module's parameters, runs this, and re-partitions.
        std = self.config.type_embed_init_std

        def init(m: nn.Module) -> None:
            if m is self.type_embed:
                nn.init.normal_(m.weight, std=std)
            elif hasattr(m, "reset_parameters") and not any(True for _ in m.children()):
                m.reset_parameters()

        for module in self.sama_modules().values():
            module.apply(init)
        if self.semantic_pos_embed is not None:
            self.semantic_pos_embed.zero_()

    @torch.no_grad()
    def _materialize_meta_parameters(self) -> list[str]:
        """Give real storage to parameters left on the meta device and initialise them.

        diffusers' ``from_pretrained`` (low_cpu_mem_usage) builds the model on meta and
        fills it from the checkpoint; parameters the checkpoint lacks (all SAMA parameters
        when loading a plain Wan checkpoint) stay on meta. Returns their names.
        """
        meta = [n for n, p in self.named_parameters() if p.is_meta]
        meta += [n for n, b in self.named_buffers() if b.is_meta]
        if not meta:
            return []
        unknown = sorted(set(meta) - set(self.sama_parameter_names()))
        if unknown:
            raise RuntimeError(f"checkpoint is missing base Wan weights: {unknown[:8]}")
        ref = self.patch_embedding.weight
        for module in [*self.sama_modules().values()]:
            module.to_empty(device=ref.device)
        if self.semantic_pos_embed is not None and self.semantic_pos_embed.is_meta:
            self.semantic_pos_embed = nn.Parameter(torch.empty_like(self.semantic_pos_embed, device=ref.device))
        self._init_sama_parameters()
        for name in meta:
            param = self.get_parameter(name)
            param.data = param.data.to(ref.dtype)
        return meta

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        """Load a SAMA checkpoint, or a plain Wan2.1 transformer (new parameters initialised).

        ``pretrained_model_name_or_path``: a diffusers folder (model or pipeline), local or
        ``s3://`` (original-format Wan / SAMA-release files: ``sama.models.loading``, which
        converts them first). ``kwargs`` go to diffusers (``subfolder``, ``torch_dtype``, and
        config overrides such as ``semantic_dim=...``).
        """
        from sama import storage

        path = str(pretrained_model_name_or_path)
        subfolder = kwargs.pop("subfolder", None)
        if subfolder:
            path = storage.join(path, subfolder)
        path = storage.materialize(path)  # s3: fetch only the transformer's folder
        # A SAMA config from before the numerics were recorded keeps its old behaviour.
        with open(os.path.join(path, "config.json")) as f:
            for key, value in legacy_numerics(json.load(f)).items():
                kwargs.setdefault(key, value)
        model = super().from_pretrained(path, **kwargs)
        model._materialize_meta_parameters()
        return model

    # ------------------------------------------------------------------ pieces

    def enable_sequence_parallel(self, sp: Optional[SequenceParallel]) -> None:
        """Split every forward's sequence over ``sp``'s ranks (None: off). Every rank of the
        group must call forward with the same inputs; the output is the whole, on each."""
        if sp is not None and self.config.num_attention_heads % sp.world:
            raise ValueError(
                f"sequence parallelism over {sp.world} ranks needs the head count "
                f"({self.config.num_attention_heads}) to be a multiple of it"
            )
        self.sequence_parallel = sp

    def _embed_conditions(self, timestep: torch.Tensor, text: torch.Tensor, seq_len: int | None):
        """diffusers' WanTimeTextImageEmbedding (T2V part), with the time embedder's dtype read
        from its weight: in bf16 training its parameters live outside the module's parameter
        list (``pipelines.train.weights.Fp32Params``), which diffusers' own lookup relies on."""
        ce = self.condition_embedder
        features = ce.timesteps_proj(timestep)
        if seq_len is not None:
            features = features.unflatten(0, (-1, seq_len))
        temb = ce.time_embedder(features.to(ce.time_embedder.linear_1.weight.dtype)).type_as(text)
        return temb, ce.time_proj(ce.act_fn(temb)), ce.text_embedder(text)

    def _read_out(self, tokens: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """Target tokens -> latent patches: modulated norm + projection.  (B, N, p*C)"""
        if temb.ndim == 3:  # per-token timestep: every target token carries the target's t
            temb = temb[:, -1]
        shift, scale = (self.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
        out = (self.norm_out(tokens.float()) * (1 + scale) + shift).type_as(tokens)
        return self.proj_out(out)

    def _patchify(self, latents: torch.Tensor) -> torch.Tensor:
        # (B, C, F, H, W) -> (B, F/p_t * H/p_h * W/p_w, dim)
        return self.patch_embedding(latents).flatten(2).transpose(1, 2).contiguous()

    def build_rotary(
        self,
        target_latents: torch.Tensor,
        source_latents: torch.Tensor | None = None,
        num_semantic: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each (1, N_s + N_m + N_t, 1, head_dim), in sequence order.

        Source and target each start at frame 0 of the same grid. Semantic tokens get
        cos = sin = 0 (``semantic_rope="zero_qk"``: their queries and keys become exactly 0,
        the release's complex-zero frequencies) or cos = 1, sin = 0 (``"identity"``).
        """
        cos_t, sin_t = self.rope(target_latents)  # (1, N_t, 1, Dh)
        cos, sin = [], []
        if source_latents is not None:
            cos_s, sin_s = self.rope(source_latents)
            cos.append(cos_s)
            sin.append(sin_s)
        if num_semantic:
            shape = (1, num_semantic, 1, cos_t.shape[-1])
            fill = 1.0 if self.config.semantic_rope == "identity" else 0.0
            cos.append(torch.full(shape, fill, dtype=cos_t.dtype, device=cos_t.device))
            sin.append(torch.zeros(shape, dtype=sin_t.dtype, device=sin_t.device))
        cos.append(cos_t)
        sin.append(sin_t)
        return torch.cat(cos, dim=1), torch.cat(sin, dim=1)

    def build_timestep(
        self, timestep: torch.Tensor, num_source: int, num_rest: int, mode: str | None = None
    ) -> torch.Tensor:
        """The timestep fed to Wan's condition embedder: (B,) for "shared", (B, S) for "zero"."""
        mode = mode or self.config.source_timestep
        if mode not in SOURCE_TIMESTEP_MODES:
            raise ValueError(f"source_timestep={mode!r}; choose one of {SOURCE_TIMESTEP_MODES}")
        if mode == "shared" or num_source == 0:
            return timestep
        zeros = timestep.new_zeros(timestep.shape[0], num_source)
        return torch.cat([zeros, timestep[:, None].expand(-1, num_rest)], dim=1)

    # ------------------------------------------------------------------ forward

    @apply_lora_scale("attention_kwargs")
    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        *,
        source_latents: torch.Tensor | None = None,
        semantic_tokens: torch.Tensor | None = None,
        source_attention_mask: bool | None = None,
        source_timestep: str | None = None,
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
    ) -> SamaTransformerOutput | tuple:
        """One denoising step.

        hidden_states:         (B, C, F, H, W) noisy target latents (F = 1 for images)
        timestep:              (B,) or scalar, in [0, num_train_timesteps)
        encoder_hidden_states: (B, L, text_dim) text embeddings
        source_latents:        (B, C, F_s, H, W) clean source latents, or None (text-to-video)
        semantic_tokens:       (B, N_m, semantic_dim) noisy SigLIP anchor tokens, or None
        source_attention_mask / source_timestep: override the config for this call
        """
        batch, _, frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.config.patch_size
        if timestep.ndim == 0:
            timestep = timestep.expand(batch)
        use_mask = self.config.source_attention_mask if source_attention_mask is None else source_attention_mask

        # 1. Target latents -> tokens.                       (B, N_t, D)
        target = self._patchify(hidden_states)
        n_tgt = target.shape[1]
        parts = []

        # 2. Source latents -> tokens (same patch embedding). (B, N_s, D)
        n_src = 0
        if source_latents is not None:
            source = self._patchify(source_latents.to(hidden_states.dtype))
            n_src = source.shape[1]
            parts.append(source + self.type_embed.weight[SOURCE])

        # 3. Semantic tokens -> projector + slot embedding.  (B, N_m, D)
        n_sem = 0
        if semantic_tokens is not None:
            n_sem = semantic_tokens.shape[1]
            if self.semantic_pos_embed is not None and n_sem > self.semantic_pos_embed.shape[0]:
                raise ValueError(f"{n_sem} semantic tokens > num_semantic_tokens={self.semantic_pos_embed.shape[0]}")
            semantic = self.semantic_projector(semantic_tokens.to(target.dtype))
            if self.semantic_pos_embed is not None:
                semantic = semantic + self.semantic_pos_embed[:n_sem]
            parts.append(semantic + self.type_embed.weight[SEMANTIC])

        # 4. In-context sequence [source][semantic][target] with type embeddings.  (B, S, D)
        parts.append(target + self.type_embed.weight[TARGET])
        hidden = torch.cat(parts, dim=1)

        # 5. RoPE: source/target share positions, semantic zero phase.  (1, S, 1, Dh) x 2
        cos, sin = self.build_rotary(hidden_states, source_latents, n_sem)

        # 6. Timestep and text conditioning.  temb (B, D) or (B, S, D); proj (B, 6, D) or (B, S, 6, D)
        t = self.build_timestep(timestep, n_src, n_sem + n_tgt, source_timestep)
        ts_seq_len = t.shape[1] if t.ndim == 2 else None
        temb, timestep_proj, text = self._embed_conditions(t.flatten(), encoder_hidden_states, ts_seq_len)
        timestep_proj = timestep_proj.unflatten(-1, (6, -1))

        # 6b. Sequence parallel: this rank keeps its slice of every per-token input.  (B, S/P, D)
        sp, length = self.sequence_parallel, hidden.shape[1]
        if sp is not None:
            hidden, cos, sin = (sp.shard(x, length) for x in (hidden, cos, sin))
            if timestep_proj.ndim == 4:
                timestep_proj = sp.shard(timestep_proj, length)
        rotary = SamaRotary(cos, sin, n_src if (use_mask and n_src) else 0, n_src + n_sem, sp, length)

        # 7. Transformer blocks over the whole sequence (or this rank's slice).  (B, S, D)
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden = self._gradient_checkpointing_func(block, hidden, text, timestep_proj, rotary)
            else:
                hidden = block(hidden, text, timestep_proj, rotary)

        if sp is None:
            # 8. Semantic head on the semantic positions.  (B, N_m, semantic_dim)
            semantic_pred = self.semantic_head(hidden[:, n_src : n_src + n_sem]) if n_sem else None
            # 9. Target read-out from the last N_t positions.  (B, N_t, p*C)
            out = self._read_out(hidden[:, -n_tgt:], temb)
        else:
            # 8-9 on this rank's slice (both are per token), then gathered: nothing after the
            # gather has parameters, so each rank's parameter gradients stay its tokens' share.
            out = sp.gather(self._read_out(hidden, temb), length)[:, -n_tgt:]
            semantic_pred = sp.gather(self.semantic_head(hidden), length)[:, n_src : n_src + n_sem] if n_sem else None

        # 10. Unpatchify.  (B, C, F, H, W)
        out = out.reshape(batch, frames // p_t, height // p_h, width // p_w, p_t, p_h, p_w, -1)
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)

        if not return_dict:
            return (out, semantic_pred)
        return SamaTransformerOutput(sample=out, semantic=semantic_pred)


# ---------------------------------------------------------------------- job config


@dataclass
class SamaModelConfig:
    """How a job builds the SAMA transformer.

    ``pretrained``: a SAMA checkpoint or a plain Wan2.1 checkpoint, in diffusers format or
    the original Wan / SAMA-release format (local or s3://; see ``sama.models.loading``). None
    builds the tiny random model (``sama.models.tiny``) for tests and demos; it then ignores
    ``semantic_dim`` / ``semantic_hidden_dim`` (tiny SigLIP sizes).
    """

    pretrained: Optional[str] = None
    subfolder: Optional[str] = "transformer"  # the transformer's folder inside a pipeline checkpoint
    architecture: Optional[str] = None  # wan2.1-1.3b | wan2.1-14b: sizes the model offline (dry runs)
    dtype: str = "float32"  # float32 | bfloat16 | float16
    # The SAMA hyper-parameters below: None takes the checkpoint's own value (a SAMA export),
    # else the model's default (a plain Wan2.1 release: SigLIP so400m width 1152, 1024, 65
    # tokens = M anchor frames x (K local + 1 global), the release's numerics, std 0.02).
    semantic_dim: Optional[int] = None
    semantic_hidden_dim: Optional[int] = None
    num_semantic_tokens: Optional[int] = None
    source_timestep: Optional[str] = None  # shared | zero (see the transformer module docstring)
    source_attention_mask: Optional[bool] = None
    type_embed_init_std: Optional[float] = None
    semantic_rope: Optional[str] = None  # zero_qk | identity (see the module docstring)
    semantic_prediction: Optional[str] = None  # velocity | sample
    semantic_norm_eps: Optional[float] = None
    semantic_slot_embed: Optional[bool] = None
    attention_backend: str = "auto"  # auto | sdpa | flash | math
    gradient_checkpointing: bool = False

    def sama_kwargs(self) -> dict[str, Any]:
        """The SAMA hyper-parameters set here (overrides of the checkpoint's config)."""
        names = (
            "semantic_dim",
            "semantic_hidden_dim",
            "num_semantic_tokens",
            "source_timestep",
            "source_attention_mask",
            "type_embed_init_std",
            "semantic_rope",
            "semantic_prediction",
            "semantic_norm_eps",
            "semantic_slot_embed",
        )
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


def legacy_numerics(cfg: dict[str, Any]) -> dict[str, Any]:
    """What a SAMA config written before the numerics were configurable computed: identity
    semantic RoPE, clean-token semantic head, eps 1e-5, a slot embedding. Empty for configs
    that record them (or are not SAMA configs)."""
    if "semantic_dim" not in cfg or "semantic_rope" in cfg:
        return {}
    return dict(
        semantic_rope="identity", semantic_prediction="sample", semantic_norm_eps=1e-5, semantic_slot_embed=True
    )


def torch_dtype(name: str) -> torch.dtype:
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"dtype {name!r}: choose one of {sorted(dtypes)}")
    return dtypes[name]


def num_tokens(latent_shape: tuple[int, ...], patch_size: tuple[int, ...] = (1, 2, 2)) -> int:
    """Tokens for one latent video of shape (C, F, H, W)."""
    return math.prod(s // p for s, p in zip(latent_shape[1:], patch_size))
