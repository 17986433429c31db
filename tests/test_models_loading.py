"""Checkpoints: plain Wan -> SAMA (new parameters initialised, none left on meta), SAMA round trip."""

from __future__ import annotations

import pytest
import torch
from diffusers import WanTransformer3DModel

from sama import storage
from sama.models.tiny import tiny_transformer, tiny_wan_transformer
from sama.models.transformer import SamaModelConfig, SamaTransformer3DModel, load_transformer


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
    model = SamaTransformer3DModel.from_pretrained(wan_dir, semantic_dim=32, semantic_hidden_dim=32,
                                                   num_semantic_tokens=10)
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
    assert torch.all(model.semantic_pos_embed == 0)
    assert torch.all(model.semantic_head[0].weight == 1) and torch.all(model.semantic_head[0].bias == 0)
    assert model.semantic_projector[1].weight.abs().sum() > 0 and model.semantic_head[1].weight.abs().sum() > 0
    assert model.config.semantic_dim == 32
    # and it runs
    with torch.no_grad():
        out = model(**_inputs())
    assert torch.isfinite(out.sample).all() and out.semantic.shape == (1, 5, 32)


def test_plain_wan_checkpoint_bf16(wan_dir):
    model = SamaTransformer3DModel.from_pretrained(wan_dir, torch_dtype=torch.bfloat16, semantic_dim=32,
                                                   semantic_hidden_dim=32, num_semantic_tokens=10)
    assert not [n for n, p in model.named_parameters() if p.is_meta]
    assert model.type_embed.weight.dtype == torch.bfloat16
    assert model.semantic_projector[1].weight.dtype == torch.bfloat16


def test_sama_round_trip_identical_outputs(tmp_path):
    model = tiny_transformer(seed=5, source_timestep="zero", source_attention_mask=True)
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


def test_load_transformer_from_config_and_s3(tmp_path, wan_dir, monkeypatch):
    calls = []
    root = wan_dir.parent

    def fake_materialize(uri, cache_dir=None):
        calls.append(uri)
        return str(root / uri[len("s3://bucket/wan/"):])

    monkeypatch.setattr(storage, "materialize", fake_materialize)
    cfg = SamaModelConfig(pretrained="s3://bucket/wan", subfolder="transformer", semantic_dim=32,
                          semantic_hidden_dim=32, num_semantic_tokens=10, source_attention_mask=True)
    model = load_transformer(cfg)
    assert calls == ["s3://bucket/wan/transformer"]  # only the transformer's folder is fetched
    assert model.config.source_attention_mask is True
    assert not [n for n, p in model.named_parameters() if p.is_meta]
    tiny = load_transformer(SamaModelConfig(gradient_checkpointing=True, num_semantic_tokens=5))
    assert tiny.gradient_checkpointing and tiny.config.num_layers == 2
    assert tiny.config.semantic_dim == 32 and tiny.config.num_semantic_tokens == 5
