"""Checkpoints: plain Wan -> SAMA (new parameters initialised, none left on meta), SAMA round trip."""

from __future__ import annotations

import pytest
import torch
from diffusers import WanTransformer3DModel

from sama import storage
from sama.models.loading import load_transformer
from sama.models.tiny import tiny_transformer, tiny_wan_transformer
from sama.models.transformer import SamaModelConfig, SamaTransformer3DModel


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(1, 16, 3, 8, 8, generator=g),
        timestep=torch.tensor([600.0]),
        encoder_hidden_states=torch.randn(1, 5, 32, generator=g),
        source_latents=torch.randn(1, 16, 3, 8, 8, generator=g),
        semantic_tokens=torch.randn(1, 5, 32, generator=g),
    )


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("wan") / "transformer"
    tiny_wan_transformer(seed=7).save_pretrained(path)
    return path


def test_plain_wan_checkpoint_loads_into_sama(wan_dir):
    wan = WanTransformer3DModel.from_pretrained(wan_dir)
    model = SamaTransformer3DModel.from_pretrained(
        wan_dir, semantic_dim=32, semantic_hidden_dim=32, num_semantic_tokens=10
    )
    # nothing left on the meta device
    assert not [n for n, p in model.named_parameters() if p.is_meta]
    assert not [n for n, b in model.named_buffers() if b.is_meta]
    # base weights are the checkpoint's
    base = wan.state_dict()
    sd = model.state_dict()
    for name, value in base.items():
        assert torch.equal(sd[name], value), name
    # the new parameters exist only in SAMA, and are initialised as specified
    assert set(sd) - set(base) == set(model.sama_parameter_names())
    for name in model.sama_parameter_names():
        p = model.get_parameter(name)
        assert torch.isfinite(p).all(), name
    assert 0.01 < model.type_embed.weight.std() < 0.04  # N(0, 0.02)
    assert model.semantic_pos_embed is None  # no slot embedding (the release has none)
    assert torch.all(model.semantic_head[0].weight == 1) and torch.all(model.semantic_head[0].bias == 0)
    assert model.semantic_projector[1].weight.abs().sum() > 0 and model.semantic_head[1].weight.abs().sum() > 0
    assert model.config.semantic_dim == 32
    # and it runs
    with torch.no_grad():
        out = model(**_inputs())
    assert torch.isfinite(out.sample).all() and out.semantic.shape == (1, 5, 32)


def test_plain_wan_checkpoint_bf16(wan_dir):
    model = SamaTransformer3DModel.from_pretrained(
        wan_dir, torch_dtype=torch.bfloat16, semantic_dim=32, semantic_hidden_dim=32, num_semantic_tokens=10
    )
    assert not [n for n, p in model.named_parameters() if p.is_meta]
    assert model.type_embed.weight.dtype == torch.bfloat16
    assert model.semantic_projector[1].weight.dtype == torch.bfloat16


def test_sama_round_trip_identical_outputs(tmp_path):
    model = tiny_transformer(seed=5, source_timestep="zero", source_attention_mask=True, semantic_slot_embed=True)
    with torch.no_grad():  # make the new parameters non-trivial
        model.semantic_pos_embed.normal_()
    model.save_pretrained(tmp_path / "sama")
    loaded = SamaTransformer3DModel.from_pretrained(tmp_path / "sama")
    assert loaded.config.source_timestep == "zero" and loaded.config.source_attention_mask is True
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), n
    x = _inputs()
    with torch.no_grad():
        ref, out = model(**x), loaded(**x)
    assert torch.equal(ref.sample, out.sample) and torch.equal(ref.semantic, out.semantic)


def test_diffusers_loads_sama_checkpoint_back(tmp_path):
    """A SAMA checkpoint stays a valid Wan checkpoint: diffusers' class reads the backbone."""
    model = tiny_transformer(seed=6)
    model.save_pretrained(tmp_path / "sama")
    wan = WanTransformer3DModel.from_pretrained(tmp_path / "sama")
    for name, value in wan.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


def test_load_transformer_from_config_and_s3(s3_bucket, wan_dir, tmp_path, monkeypatch):
    root = wan_dir.parent
    for path in root.rglob("*"):
        if path.is_file():
            storage.upload_file(str(path), f"{s3_bucket}/wan/{path.relative_to(root)}")
    storage.write_text(f"{s3_bucket}/wan/vae/config.json", "{}")  # a pipeline's other parts: not fetched
    monkeypatch.setenv("SAMA_CACHE", str(tmp_path / "cache"))
    cfg = SamaModelConfig(
        pretrained=f"{s3_bucket}/wan",
        subfolder="transformer",
        semantic_dim=32,
        semantic_hidden_dim=32,
        num_semantic_tokens=10,
        source_attention_mask=True,
    )
    model = load_transformer(cfg)
    fetched = {p.name for p in (tmp_path / "cache").rglob("*") if p.is_dir()}
    assert "transformer" in fetched and not fetched & {"vae", "text_encoder"}  # only the transformer's folder
    assert model.config.source_attention_mask is True
    assert not [n for n, p in model.named_parameters() if p.is_meta]
    tiny = load_transformer(SamaModelConfig(gradient_checkpointing=True, num_semantic_tokens=5))
    assert tiny.gradient_checkpointing and tiny.config.num_layers == 2
    assert tiny.config.semantic_dim == 32 and tiny.config.num_semantic_tokens == 5


def test_configs_from_before_the_numerics_keep_their_behaviour(tmp_path):
    """A SAMA config.json without semantic_rope & co. was trained with identity RoPE, a
    clean-token head, eps 1e-5 and slot embeddings: it loads so."""
    import json

    model = tiny_transformer(
        seed=7, semantic_rope="identity", semantic_prediction="sample", semantic_norm_eps=1e-5, semantic_slot_embed=True
    )
    model.save_pretrained(tmp_path / "old")
    cfg_path = tmp_path / "old" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    for key in ("semantic_rope", "semantic_prediction", "semantic_norm_eps", "semantic_slot_embed"):
        del cfg[key]
    cfg_path.write_text(json.dumps(cfg))
    loaded = SamaTransformer3DModel.from_pretrained(tmp_path / "old")
    assert (loaded.config.semantic_rope, loaded.config.semantic_prediction) == ("identity", "sample")
    assert loaded.semantic_head[0].eps == 1e-5 and loaded.semantic_pos_embed is not None
    x = _inputs()
    with torch.no_grad():
        assert torch.equal(model(**x).sample, loaded(**x).sample)


def test_an_architecture_alone_builds_random_weights_at_its_real_size_on_the_given_device():
    """Benchmarks time the 14B without its weights: built on the device, in its dtype, with the
    modules from_pretrained keeps in fp32 kept so (meta here: nothing is allocated)."""
    from sama.models.sizing import forward_flops

    model = load_transformer(SamaModelConfig(architecture="wan2.1-14b", dtype="bfloat16"), "meta")
    assert all(p.is_meta for p in model.parameters())
    assert 14.2e9 < sum(p.numel() for p in model.parameters()) < 14.4e9
    assert model.config.num_layers == 40 and model.config.num_semantic_tokens == 65
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert dtypes["blocks.0.attn1.to_q.weight"] == torch.bfloat16
    assert (
        dtypes["blocks.0.norm2.weight"] == dtypes["condition_embedder.time_embedder.linear_1.weight"] == torch.float32
    )
    assert torch.get_default_dtype() == torch.float32  # restored
    # The paper count for a release-default 14B edit: ~1.0 linear + ~1.35 attention PFLOP.
    assert forward_flops(model.config, 2 * 20_280 + 65, 512) / 1e15 == pytest.approx(2.34, abs=0.01)
