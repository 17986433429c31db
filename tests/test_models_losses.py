"""Flow-matching + semantic-anchoring loss: hand computation, schedule, over-fitting one batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from sama.models.losses import LossConfig, add_noise, sama_loss, sample_sigmas, shift_sigma
from sama.models.tiny import tiny_transformer
from sama.models.transformer import SamaTransformerOutput


class RecordingModel(nn.Module):
    """Returns fixed predictions and records what it was called with."""

    def __init__(self, sample, semantic):
        super().__init__()
        self.sample, self.semantic, self.calls = sample, semantic, []

    def forward(self, x, t, text, source_latents=None, semantic_tokens=None):
        self.calls.append(dict(x=x, t=t, text=text, source=source_latents, sem=semantic_tokens))
        return SamaTransformerOutput(sample=self.sample, semantic=self.semantic)


def test_loss_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 1, 2, 2, generator=g)
    noise = torch.randn(2, 4, 1, 2, 2, generator=g)
    s0 = torch.randn(2, 3, 6, generator=g) * 5 + 2
    s_noise = torch.randn(2, 3, 6, generator=g)
    sigma = torch.tensor([0.25, 0.8])
    pred, sem_pred = torch.randn(2, 4, 1, 2, 2, generator=g), torch.randn(2, 3, 6, generator=g)
    model = RecordingModel(pred, sem_pred)
    src, text = torch.randn(2, 4, 1, 2, 2), torch.randn(2, 5, 8)
    out = sama_loss(model, x0, text, src, s0, LossConfig(), sigma=sigma, noise=noise, semantic_noise=s_noise)

    # the model saw x_sigma = (1 - sigma) x0 + sigma noise, at t = 1000 sigma
    call = model.calls[0]
    for i, s in enumerate(sigma.tolist()):
        torch.testing.assert_close(call["x"][i], (1 - s) * x0[i] + s * noise[i])
    torch.testing.assert_close(call["t"], sigma * 1000)
    assert call["source"] is src and call["text"] is text
    # semantic tokens: per-token layer norm, then the same forward process at the same sigma
    mu, sd = s0.mean(-1, keepdim=True), s0.var(-1, unbiased=False, keepdim=True).add(1e-5).sqrt()
    s0n = (s0 - mu) / sd
    torch.testing.assert_close(call["sem"], (1 - sigma.view(2, 1, 1)) * s0n + sigma.view(2, 1, 1) * s_noise)
    # L = mean (pred - (noise - x0))^2 + 0.1 * mean |sem_pred - (s_noise - s0n)|  (velocity head, the release)
    fm = ((pred - (noise - x0)) ** 2).mean()
    sa = (sem_pred - (s_noise - s0n)).abs().mean()
    torch.testing.assert_close(out.fm, fm)
    torch.testing.assert_close(out.semantic, sa)
    torch.testing.assert_close(out.loss, fm + 0.1 * sa)
    # a head predicting clean tokens: L_SA = mean |sem_pred - s0n|
    clean = sama_loss(
        model,
        x0,
        text,
        src,
        s0,
        LossConfig(),
        sigma=sigma,
        noise=noise,
        semantic_noise=s_noise,
        semantic_prediction="sample",
    )
    torch.testing.assert_close(clean.semantic, (sem_pred - s0n).abs().mean())
    with pytest.raises(ValueError, match="semantic_prediction"):
        sama_loss(model, x0, text, src, s0, semantic_prediction="eps")
    # without semantic tokens: L = L_FM; MSE semantic variant
    assert sama_loss(model, x0, text, src, None, sigma=sigma, noise=noise).semantic is None
    mse = sama_loss(
        model,
        x0,
        text,
        src,
        s0,
        LossConfig(semantic_loss="mse", semantic_layernorm=False),
        sigma=sigma,
        noise=noise,
        semantic_noise=s_noise,
        semantic_prediction="sample",
    )
    torch.testing.assert_close(mse.semantic, F.mse_loss(sem_pred, s0))


def test_shifted_timestep_schedule():
    u = torch.tensor([0.0, 0.25, 0.5, 1.0])
    torch.testing.assert_close(shift_sigma(u, 1.0), u)
    torch.testing.assert_close(shift_sigma(u, 3.0), torch.tensor([0.0, 0.5, 0.75, 1.0]))
    g = torch.Generator().manual_seed(0)
    s = sample_sigmas(20000, LossConfig(timestep_shift=3.0), g)
    assert 0 < s.min() and s.max() < 1
    # P(sigma < 0.5) = P(u < 0.25) with shift 3: the shift puts more mass on high noise
    assert abs((s < 0.5).float().mean().item() - 0.25) < 0.02
    ln = sample_sigmas(1000, LossConfig(timestep_sampling="logit_normal", timestep_shift=1.0), g)
    assert abs(ln.median().item() - 0.5) < 0.05
    with pytest.raises(ValueError):
        sample_sigmas(2, LossConfig(timestep_sampling="beta"))
    torch.testing.assert_close(
        add_noise(torch.ones(2, 3), torch.zeros(2, 3), torch.tensor([0.0, 1.0])), torch.tensor([[1.0] * 3, [0.0] * 3])
    )


def test_gradient_steps_overfit_one_batch():
    torch.manual_seed(0)
    model = tiny_transformer(seed=0).train()
    g = torch.Generator().manual_seed(1)
    batch = dict(
        target_latents=torch.randn(2, 16, 2, 8, 8, generator=g),
        text_embeds=torch.randn(2, 4, 32, generator=g),
        source_latents=torch.randn(2, 16, 2, 8, 8, generator=g),
        semantic_tokens=torch.randn(2, 5, 32, generator=g),
    )
    fixed = dict(
        sigma=torch.tensor([0.3, 0.7]),
        noise=torch.randn(2, 16, 2, 8, 8, generator=g),
        semantic_noise=torch.randn(2, 5, 32, generator=g),
    )
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        out = sama_loss(model, **batch, **fixed)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append((out.loss.item(), out.semantic.item()))
    assert losses[-1][0] < 0.7 * losses[0][0]
    assert losses[-1][1] < losses[0][1]  # the semantic head learns too
