"""SAMA transformer on tiny configs: paths, positions, type embeddings, mask, timesteps."""

from __future__ import annotations

import pytest
import torch

from sama.models import attention as A
from sama.models.tiny import tiny_transformer, tiny_wan_transformer
from sama.models.transformer import SEMANTIC, SOURCE, TARGET, SamaTransformer3DModel, num_tokens

B, C, TXT, SIG = 2, 16, 32, 32


@pytest.fixture(scope="module")
def model() -> SamaTransformer3DModel:
    return tiny_transformer(seed=0)


def inputs(frames=3, src_frames=3, n_sem=5, seed=0, h=8, w=8):
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(B, C, frames, h, w, generator=g),
        timestep=torch.tensor([700.0, 250.0]),
        encoder_hidden_states=torch.randn(B, 6, TXT, generator=g),
        source_latents=torch.randn(B, C, src_frames, h, w, generator=g) if src_frames else None,
        semantic_tokens=torch.randn(B, n_sem, SIG, generator=g) if n_sem else None,
    )


@pytest.mark.parametrize(
    "frames,src_frames,n_sem",
    [(3, 3, 5), (1, 1, 5), (3, 0, 5), (3, 3, 0), (3, 0, 0), (3, 2, 10)],
    ids=["video-edit", "image-edit", "t2v", "no-semantic", "plain", "short-source-2-anchors"],
)
def test_forward_shapes(model, frames, src_frames, n_sem):
    x = inputs(frames, src_frames, n_sem)
    with torch.no_grad():
        out = model(**x)
    assert out.sample.shape == x["hidden_states"].shape
    assert torch.isfinite(out.sample).all()
    if n_sem:
        assert out.semantic.shape == (B, n_sem, SIG)
    else:
        assert out.semantic is None
    sample, semantic = model(**x, return_dict=False)
    assert torch.equal(sample, out.sample)


def test_without_new_inputs_equals_plain_wan():
    """No source, no semantic, zero type embedding: exactly diffusers' Wan forward."""
    wan = tiny_wan_transformer(seed=3)
    sama = tiny_transformer(seed=3)
    sama.load_state_dict(wan.state_dict(), strict=False)
    with torch.no_grad():
        sama.type_embed.weight.zero_()
    x = inputs(src_frames=0, n_sem=0)
    x.pop("source_latents"), x.pop("semantic_tokens")
    with torch.no_grad():
        ref = wan(**x).sample
        out = sama(**x).sample
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_rotary_shared_positions_and_zero_phase(model):
    x = inputs(frames=3, src_frames=3, n_sem=5)
    n = num_tokens(x["hidden_states"].shape[1:])
    cos, sin = model.build_rotary(x["hidden_states"], x["source_latents"], 5)
    assert cos.shape == sin.shape == (1, n + 5 + n, 1, 16)
    # source and target share positions (both start at frame 0)
    torch.testing.assert_close(cos[:, :n], cos[:, -n:])
    torch.testing.assert_close(sin[:, :n], sin[:, -n:])
    # and they are real positions: not all tokens have the same phase
    assert not torch.allclose(cos[:, 0], cos[:, n - 1])
    # semantic tokens: the release's complex-zero frequencies (queries and keys become 0) ...
    assert torch.all(cos[:, n : n + 5] == 0) and torch.all(sin[:, n : n + 5] == 0)
    # ... or, as an option, zero phase = identity rotation
    cos_i, sin_i = tiny_transformer(semantic_rope="identity").build_rotary(x["hidden_states"], x["source_latents"], 5)
    assert torch.all(cos_i[:, n : n + 5] == 1) and torch.all(sin_i[:, n : n + 5] == 0)
    torch.testing.assert_close(cos_i[:, :n], cos[:, :n])
    # a shorter source (e.g. 2 latent frames) takes the target's first positions
    short = x["source_latents"][:, :, :2]
    m = num_tokens(short.shape[1:])
    cos2, _ = model.build_rotary(x["hidden_states"], short, 0)
    torch.testing.assert_close(cos2[:, :m], cos2[:, m : 2 * m])


def test_type_embeddings_per_role(model):
    """The sequence entering block 0 is [source][semantic][target] + the role's type embedding."""
    x = inputs()
    seen = {}
    hook = model.blocks[0].register_forward_pre_hook(lambda m, args: seen.update(h=args[0]))
    try:
        with torch.no_grad():
            model(**x)
    finally:
        hook.remove()
    h = seen["h"]
    with torch.no_grad():
        tgt = model._patchify(x["hidden_states"])
        src = model._patchify(x["source_latents"])
        sem = model.semantic_projector(x["semantic_tokens"])  # no slot embedding (the release has none)
        te = model.type_embed.weight
    n = tgt.shape[1]
    assert h.shape == (B, n + 5 + n, 32)
    torch.testing.assert_close(h[:, :n], src + te[SOURCE])
    torch.testing.assert_close(h[:, n : n + 5], sem + te[SEMANTIC])
    torch.testing.assert_close(h[:, n + 5 :], tgt + te[TARGET])
    # the type embedding changes the prediction (it is not a no-op)
    m2 = tiny_transformer(seed=0)
    with torch.no_grad():
        m2.type_embed.weight[SOURCE] += 1.0
        assert not torch.allclose(m2(**x).sample, model(**x).sample)


def test_prefix_restricted_attention_equals_explicit_mask():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 11, 2, 8, generator=g) for _ in range(3))
    mask = A.prefix_restricted_mask(11, num_restricted=4, kv_prefix=6)
    assert mask[:4, :6].all() and not mask[:4, 6:].any() and mask[4:].all()
    with A.attention_backend("math"):
        ref = A.attention(q, k, v, mask=mask)
    for backend in ("sdpa", "math"):
        with A.attention_backend(backend):
            out = A.prefix_restricted_attention(q, k, v, 4, 6)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def _block_hidden(model, x, block=-1, **kw):
    seen = {}
    hook = model.blocks[block].register_forward_hook(lambda m, a, out: seen.update(h=out))
    try:
        with torch.no_grad():
            model(**x, **kw)
    finally:
        hook.remove()
    return seen["h"]


def test_source_mask_restricts_source_queries(model):
    """Masked: source tokens attend to source + semantic keys only, never to the target."""
    x = inputs()
    n = num_tokens(x["hidden_states"].shape[1:])
    y = dict(x, hidden_states=torch.randn_like(x["hidden_states"]))  # another noisy target
    # one block: the source stream does not see the target at all
    a = _block_hidden(model, x, block=0, source_attention_mask=True)
    b = _block_hidden(model, y, block=0, source_attention_mask=True)
    torch.testing.assert_close(a[:, :n], b[:, :n])
    assert not torch.allclose(a[:, n:], b[:, n:])  # semantic and target tokens do
    # unmasked, the target leaks into the source stream in the first block already
    a = _block_hidden(model, x, block=0, source_attention_mask=False)
    b = _block_hidden(model, y, block=0, source_attention_mask=False)
    assert not torch.allclose(a[:, :n], b[:, :n])
    # without semantic tokens the masked source stream is target-independent through all blocks
    # (with them, target information reaches it via the semantic tokens from block 2 on)
    x0, y0 = dict(x, semantic_tokens=None), dict(y, semantic_tokens=None)
    a = _block_hidden(model, x0, source_attention_mask=True)
    b = _block_hidden(model, y0, source_attention_mask=True)
    torch.testing.assert_close(a[:, :n], b[:, :n])


def test_build_timestep_modes(model):
    t = torch.tensor([700.0, 250.0])
    assert torch.equal(model.build_timestep(t, 4, 6, "shared"), t)
    z = model.build_timestep(t, 4, 6, "zero")
    assert z.shape == (2, 10)
    assert torch.all(z[:, :4] == 0) and torch.equal(z[:, 4:], t[:, None].expand(2, 6))
    assert torch.equal(model.build_timestep(t, 0, 6, "zero"), t)  # t2v: nothing to zero
    with pytest.raises(ValueError):
        model.build_timestep(t, 4, 6, "bogus")


def test_per_token_timestep_path_matches_scalar_path(model, monkeypatch):
    """diffusers' 2-D timestep path with every token at t == the 1-D path (our read-out of it is right)."""
    x = inputs()
    with torch.no_grad():
        ref = model(**x, source_timestep="shared")
        real = model.build_timestep
        monkeypatch.setattr(
            model, "build_timestep", lambda t, ns, nr, mode=None: t[:, None].expand(-1, ns + nr).contiguous()
        )
        per_token = model(**x)
    monkeypatch.setattr(model, "build_timestep", real)
    torch.testing.assert_close(per_token.sample, ref.sample, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(per_token.semantic, ref.semantic, atol=1e-5, rtol=1e-5)


def test_zero_source_timestep_changes_only_source_conditioning(model):
    x = inputs()
    with torch.no_grad():
        shared = model(**x, source_timestep="shared").sample
        zero = model(**x, source_timestep="zero").sample
        assert not torch.allclose(shared, zero)  # source tokens now modulated with t=0
        x0 = dict(x, timestep=torch.zeros(2))
        torch.testing.assert_close(
            model(**x0, source_timestep="zero").sample,
            model(**x0, source_timestep="shared").sample,
            atol=1e-5,
            rtol=1e-5,
        )
        # zero mode from the config
        m = tiny_transformer(seed=0, source_timestep="zero")
        torch.testing.assert_close(m(**x).sample, zero)
    with pytest.raises(ValueError):
        tiny_transformer(source_timestep="half")


def test_semantic_head_and_new_parameters_get_gradients():
    model = tiny_transformer(seed=1, semantic_slot_embed=True).train()
    out = model(**inputs())
    (out.sample.square().mean() + out.semantic.abs().mean()).backward()
    for name in [
        "semantic_head.1.weight",
        "semantic_projector.1.weight",
        "semantic_projector.3.weight",
        "type_embed.weight",
        "semantic_pos_embed",
        "blocks.0.attn1.to_q.weight",
    ]:
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    # all three role embeddings receive gradient
    assert (model.type_embed.weight.grad.abs().sum(1) > 0).all()


def test_gradient_checkpointing_keeps_outputs_and_mask():
    x = inputs()
    grads = []
    for ckpt in (False, True):
        model = tiny_transformer(seed=2, source_attention_mask=True).train()
        if ckpt:
            model.enable_gradient_checkpointing()
        out = model(**x)
        loss = out.sample.square().mean() + out.semantic.square().mean()
        loss.backward()
        grads.append((loss.detach(), model.blocks[0].attn1.to_q.weight.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-6, rtol=1e-5)


def test_attention_backend_override(model):
    x = inputs()
    with torch.no_grad():
        with A.attention_backend("math"):
            ref = model(**x).sample
        with A.attention_backend("sdpa"):
            out = model(**x).sample
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert A.get_attention_backend() == "auto"
    with pytest.raises(ValueError):
        A.set_attention_backend("nope")


def test_too_many_semantic_tokens_rejected():
    """Only a model with slot embeddings has a fixed number of semantic slots."""
    with pytest.raises(ValueError, match="num_semantic_tokens"):
        tiny_transformer(semantic_slot_embed=True)(**inputs(n_sem=11))
    with torch.no_grad():
        assert tiny_transformer()(**inputs(n_sem=11)).semantic.shape[1] == 11


@pytest.mark.parametrize("variant,expected_b", [("1.3B", 1.3), ("14B", 14.0)])
def test_real_size_configs_on_meta(variant, expected_b):
    """Wan2.1 T2V shapes build on the meta device (no memory) with the expected size."""
    cfg = {
        "1.3B": dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30),
        "14B": dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40),
    }[variant]
    with torch.device("meta"):
        model = SamaTransformer3DModel(**cfg)
    total = sum(p.numel() for p in model.parameters())
    new = sum(model.get_parameter(n).numel() for n in model.sama_parameter_names())
    assert expected_b * 1e9 < total < expected_b * 1.15e9
    dim = cfg["num_attention_heads"] * 128
    # projector + head + role embeddings, as specified (1152 -> 1024 -> dim; dim -> 1152); no slot embedding
    assert new == (2 * 1152 + 1152 * 1024 + 1024 + 1024 * dim + dim) + (2 * dim + dim * 1152 + 1152) + 3 * dim


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_forward_on_gpu():
    model = tiny_transformer(seed=0).to("cuda", torch.bfloat16)
    x = {k: (v.to("cuda", torch.bfloat16) if v is not None else None) for k, v in inputs().items()}
    with torch.no_grad():
        out = model(**x)
        with A.attention_backend("math"):
            ref = model(**x)
    assert out.sample.dtype == torch.bfloat16 and torch.isfinite(out.sample.float()).all()
    torch.testing.assert_close(out.sample.float(), ref.sample.float(), atol=5e-2, rtol=5e-2)
