"""SAMA training objective: L = L_FM + lambda * L_SA (paper Eq. 4, lambda = 0.1).

Flow matching (rectified flow, as Wan): with sigma in (0, 1) and noise e ~ N(0, I),

    x_sigma = (1 - sigma) * x0 + sigma * e,     target velocity v = e - x0,
    L_FM    = mean || v_pred - v ||^2            over the target latents only.

Semantic anchoring: the SigLIP anchor tokens s0 go through the *same* forward process at
the *same* sigma (in SigLIP feature space, before the projector), and the semantic head
predicts, as the model's ``semantic_prediction`` says, their flow velocity (the release)
or the clean tokens:

    velocity:  L_SA = mean | s_pred - (e_s - s0) |      (L1, e_s the semantic noise)
    sample:    L_SA = mean | s_pred - s0 |

The anchor tokens are layer-normalised per token first (``semantic_layernorm``): SigLIP
features are not at unit scale, and the noise is N(0, I); normalising matches the
signal-to-noise ratio of the semantic stream to the latent one at every sigma.

Timesteps: u ~ U(0, 1) (or logit-normal), shifted as the sampler shifts its grid,
sigma = shift * u / (1 + (shift - 1) * u) with the release sampler's shift 5 by default;
the transformer sees t = 1000 * sigma.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F


@dataclass
class LossConfig:
    semantic_weight: float = 0.1  # lambda
    semantic_loss: str = "l1"  # l1 | mse
    semantic_layernorm: bool = True
    timestep_sampling: str = "uniform"  # uniform | logit_normal
    timestep_shift: float = 5.0  # the release's sampler shift (Wan's own: 3.0 at 480p, 5.0 at 720p)
    num_train_timesteps: int = 1000


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar: fm + semantic_weight * semantic
    fm: torch.Tensor  # scalar
    semantic: Optional[torch.Tensor]  # scalar, or None without semantic tokens
    sigma: torch.Tensor  # (B,)


def shift_sigma(u: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * u / (1 + (shift - 1) * u)


def sample_sigmas(
    batch: int, cfg: LossConfig, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(B,) noise levels in (0, 1), drawn on CPU from ``generator`` for reproducibility."""
    if cfg.timestep_sampling == "uniform":
        u = torch.rand(batch, generator=generator)
    elif cfg.timestep_sampling == "logit_normal":
        u = torch.sigmoid(torch.randn(batch, generator=generator))
    else:
        raise ValueError(f"timestep_sampling={cfg.timestep_sampling!r}: uniform | logit_normal")
    u = u.clamp(1e-4, 1 - 1e-4)
    return shift_sigma(u, cfg.timestep_shift).to(device)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_sigma = (1 - sigma) x0 + sigma noise, sigma (B,) broadcast over the other dims."""
    s = sigma.view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return (1 - s) * x0 + s * noise


def flow_matching_loss(pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred.float(), (noise - x0).float())


def semantic_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    if kind == "l1":
        return F.l1_loss(pred.float(), target.float())
    if kind == "mse":
        return F.mse_loss(pred.float(), target.float())
    raise ValueError(f"semantic_loss={kind!r}: l1 | mse")


def normalize_semantic(tokens: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(tokens.float(), tokens.shape[-1:])


def sama_loss(
    model,
    target_latents: torch.Tensor,
    text_embeds: torch.Tensor,
    source_latents: torch.Tensor | None = None,
    semantic_tokens: torch.Tensor | None = None,
    cfg: LossConfig = LossConfig(),
    generator: torch.Generator | None = None,
    sigma: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    semantic_noise: torch.Tensor | None = None,
    semantic_prediction: str = "velocity",
) -> LossOutput:
    """One training loss evaluation on a batch.

    target_latents (B, C, F, H, W) clean; text_embeds (B, L, D); source_latents clean or
    None (text-to-video); semantic_tokens (B, N_m, D_sig) clean SigLIP anchor tokens or None.
    ``sigma`` / ``noise`` / ``semantic_noise`` may be given (tests); otherwise drawn from
    ``generator`` on CPU. ``semantic_prediction``: what the model's semantic head predicts
    (its config's ``semantic_prediction``: velocity | sample).
    """
    if semantic_prediction not in ("velocity", "sample"):
        raise ValueError(f"semantic_prediction={semantic_prediction!r}: velocity | sample")
    b, device = target_latents.shape[0], target_latents.device
    # 1. Noise level per sample, shared by latents and semantic tokens.   (B,)
    if sigma is None:
        sigma = sample_sigmas(b, cfg, generator, device)
    if noise is None:
        noise = torch.randn(target_latents.shape, generator=generator).to(device, target_latents.dtype)
    # 2. Forward process on the target latents.                             (B, C, F, H, W)
    noisy = add_noise(target_latents, noise, sigma)
    # 3. Same forward process on the (normalised) semantic anchor tokens.    (B, N_m, D_sig)
    noisy_sem = s0 = None
    if semantic_tokens is not None:
        s0 = normalize_semantic(semantic_tokens) if cfg.semantic_layernorm else semantic_tokens.float()
        if semantic_noise is None:
            semantic_noise = torch.randn(s0.shape, generator=generator).to(device)
        noisy_sem = add_noise(s0, semantic_noise, sigma)
    # 4. Denoiser: velocity for the target; velocity or clean tokens for the semantic slots.
    out = model(
        noisy,
        sigma * cfg.num_train_timesteps,
        text_embeds,
        source_latents=source_latents,
        semantic_tokens=noisy_sem,
    )
    # 5. L = L_FM + lambda * L_SA.
    fm = flow_matching_loss(out.sample, target_latents, noise)
    sa = None
    if s0 is not None:
        sem_target = (semantic_noise - s0) if semantic_prediction == "velocity" else s0
        sa = semantic_loss(out.semantic, sem_target, cfg.semantic_loss)
    loss = fm + cfg.semantic_weight * sa if sa is not None else fm
    return LossOutput(loss=loss, fm=fm, semantic=sa, sigma=sigma)
