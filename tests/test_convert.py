"""Release / original-Wan checkpoints: conversion both ways, loading, and the release's numerics.

The numerics are checked against ``release_reference`` (an independent implementation in
the original Wan style, on the release's key names) on every path and over sampler steps.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from release_reference import random_release_state_dict, release_forward, release_sample, release_sigmas
from sama.models.convert import CheckpointError, as_diffusers, convert, ours_to_release, release_to_ours
from sama.models.loading import load_transformer
from sama.models.transformer import SamaModelConfig, SamaTransformer3DModel

HEADS, DIM, SEM = 2, 32, 32


def _save_release(tmp_path, sd, name="sama.safetensors") -> str:
    path = str(tmp_path / name)
    save_file(sd, path)
    return path


def _inputs(frames=2, src_frames=2, text_len=7, n_sem=5, batch=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(batch, 16, frames, 4, 6, generator=g),
        t=torch.full((batch,), 731.25),
        ctx=torch.randn(batch, text_len, 32, generator=g),
        src=torch.randn(batch, 16, src_frames, 4, 6, generator=g) if src_frames else None,
        sem=torch.randn(batch, n_sem, SEM, generator=g) if n_sem else None,
    )


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A random SAMA model in release key names, and its conversion."""
    tmp = tmp_path_factory.mktemp("release")
    sd = random_release_state_dict()
    src = _save_release(tmp, sd)
    # Wan's own config.json beside the weights gives the head count (shapes cannot)
    json.dump({"_class_name": "WanModel", "dim": DIM, "num_heads": HEADS}, open(tmp / "config.json", "w"))
    dst = str(tmp / "converted")
    result = convert(src, dst, "release")
    return sd, src, dst, result


def test_key_maps_are_inverse():
    for ours in [
        "blocks.3.attn1.to_out.0.weight",
        "blocks.0.ffn.net.0.proj.bias",
        "blocks.1.scale_shift_table",
        "scale_shift_table",
        "proj_out.weight",
        "condition_embedder.time_proj.bias",
        "type_embed.weight",
        "semantic_projector.3.weight",
        "semantic_head.0.bias",
        "blocks.2.norm2.weight",
    ]:
        assert release_to_ours(ours_to_release(ours)) == ours
    assert ours_to_release("blocks.1.scale_shift_table") == "blocks.1.modulation"
    assert ours_to_release("scale_shift_table") == "head.modulation"
    assert release_to_ours("blocks.0.norm3.weight") == "blocks.0.norm2.weight"
    assert release_to_ours("blocks.0.self_attn.o.weight") == "blocks.0.attn1.to_out.0.weight"
    assert release_to_ours("img_emb.proj.0.weight") is None and ours_to_release("semantic_pos_embed") is None


def test_release_converts_and_round_trips(release, tmp_path):
    sd, _, dst, result = release
    cfg = json.load(open(os.path.join(dst, "config.json")))
    assert cfg["_class_name"] == "SamaTransformer3DModel"
    assert (cfg["num_layers"], cfg["num_attention_heads"], cfg["attention_head_dim"], cfg["ffn_dim"]) == (2, 2, 16, 64)
    assert (cfg["semantic_dim"], cfg["semantic_hidden_dim"], cfg["num_semantic_tokens"]) == (32, 32, 65)
    assert (cfg["semantic_rope"], cfg["semantic_prediction"], cfg["semantic_norm_eps"]) == ("zero_qk", "velocity", 1e-6)
    assert cfg["semantic_slot_embed"] is False and cfg["source_attention_mask"] is False
    assert result.tensors == len(sd) == 80
    # A model card says where the weights came from and what the conversion set.
    from sama.lineage import read_card, walk

    card = read_card(dst)
    assert card["conversion"]["from"] == "release" and card["conversion"]["config"]["semantic_rope"] == "zero_qk"
    assert "sama convert --from release" in open(os.path.join(dst, "README.md")).read()
    tree = walk(dst)
    assert tree["job"] == "convert" and tree["inputs"][0]["raw"] and tree["inputs"][0]["uri"] == card["base_model"]
    model = SamaTransformer3DModel.from_pretrained(dst)
    assert model.semantic_pos_embed is None
    ours = model.state_dict()
    assert len(ours) == 80
    # the role embedding's rows are reordered: release (source, semantic, target) -> ours (source, target, semantic)
    seg = sd["segment_embedding.weight"]
    assert torch.equal(ours["type_embed.weight"][0], seg[0]) and torch.equal(ours["type_embed.weight"][1], seg[2])
    assert torch.equal(ours["type_embed.weight"][2], seg[1])
    assert torch.equal(ours["blocks.1.attn2.to_out.0.weight"], sd["blocks.1.cross_attn.o.weight"])
    # ours -> release: identical tensors under identical keys
    back = str(tmp_path / "back.safetensors")
    convert(dst, back, "diffusers", "release")
    again = load_file(back)
    assert set(again) == set(sd)
    for k in sd:
        assert torch.equal(again[k], sd[k]), k
    # and as a folder, with Wan's own config.json
    folder = str(tmp_path / "back")
    convert(dst, folder, "diffusers", "release", overrides={"max_shard_size": 20_000})
    assert json.load(open(os.path.join(folder, "config.json")))["num_heads"] == 2
    index = json.load(open(os.path.join(folder, "diffusion_pytorch_model.safetensors.index.json")))
    assert len(set(index["weight_map"].values())) > 1 and set(index["weight_map"]) == set(sd)


def test_sharded_pickles_with_a_wrapper_prefix_and_dtype(tmp_path):
    sd = random_release_state_dict(seed=3)
    keys = sorted(sd)
    folder = tmp_path / "shards"
    folder.mkdir()
    torch.save({"model." + k: sd[k] for k in keys[:40]}, folder / "part1.pth")
    torch.save({"state_dict": {"model." + k: sd[k] for k in keys[40:]}}, folder / "part2.pth")
    dst = str(tmp_path / "out")
    convert(
        str(folder),
        dst,
        "release",
        overrides={"dtype": "bfloat16", "num_semantic_tokens": 10, "num_attention_heads": 2},
    )
    stored = load_file(os.path.join(dst, "diffusion_pytorch_model.safetensors"))
    assert {t.dtype for t in stored.values()} == {torch.bfloat16}
    model = SamaTransformer3DModel.from_pretrained(dst, torch_dtype=torch.bfloat16)
    assert model.config.num_semantic_tokens == 10
    assert model.config.num_attention_heads == 2  # the override (dim 32 / 128 would give 1)
    assert torch.equal(model.state_dict()["patch_embedding.weight"], sd["patch_embedding.weight"].bfloat16())


def test_original_wan_converts_to_a_plain_wan_model(tmp_path):
    from diffusers import WanTransformer3DModel

    sd = random_release_state_dict(sama=False, seed=4)
    folder = tmp_path / "Wan2.1-T2V"
    folder.mkdir()
    half = sorted(sd)
    save_file({k: sd[k] for k in half[:30]}, str(folder / "diffusion_pytorch_model-00001-of-00002.safetensors"))
    save_file({k: sd[k] for k in half[30:]}, str(folder / "diffusion_pytorch_model-00002-of-00002.safetensors"))
    json.dump(
        {
            "weight_map": {
                k: f"diffusion_pytorch_model-0000{1 + (i >= 30)}-of-00002.safetensors" for i, k in enumerate(half)
            }
        },
        open(folder / "diffusion_pytorch_model.safetensors.index.json", "w"),
    )
    json.dump(
        {"_class_name": "WanModel", "dim": 32, "num_heads": 2, "eps": 1e-6, "model_type": "t2v"},
        open(folder / "config.json", "w"),
    )
    dst = str(tmp_path / "wan-diffusers")
    convert(str(folder), dst, "wan")
    assert json.load(open(os.path.join(dst, "config.json")))["_class_name"] == "WanTransformer3DModel"
    wan = WanTransformer3DModel.from_pretrained(dst).eval()
    x = _inputs(n_sem=0, src_frames=0)
    ref, _ = release_forward(sd, x["x"], x["t"], x["ctx"], heads=HEADS)
    with torch.no_grad():
        out = wan(x["x"], x["t"], x["ctx"]).sample
    torch.testing.assert_close(out, ref, atol=2e-4, rtol=1e-3)  # diffusers' own float32 sinusoid
    # our model loads it too (SAMA's parameters initialised); with a zero role embedding it is
    # plain Wan, and matches the reference to float32 precision (float64 sinusoid)
    sama = SamaTransformer3DModel.from_pretrained(dst, semantic_dim=SEM, semantic_hidden_dim=32).eval()
    with torch.no_grad():
        sama.type_embed.weight.zero_()
        torch.testing.assert_close(sama(x["x"], x["t"], x["ctx"]).sample, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(CheckpointError, match="no SAMA keys"):
        convert(str(folder), str(tmp_path / "x"), "release")


def test_bad_checkpoints_name_the_key_and_file(tmp_path):
    sd = random_release_state_dict()
    missing = dict(sd)
    del missing["blocks.1.ffn.2.weight"]
    src = _save_release(tmp_path, missing, "missing.safetensors")
    with pytest.raises(CheckpointError, match=r"missing\.safetensors: missing blocks\.1\.ffn\.2\.weight"):
        convert(src, str(tmp_path / "a"), "release")
    bad = dict(sd, **{"blocks.0.self_attn.q.weight": torch.zeros(32, 16)})
    src = _save_release(tmp_path, bad, "bad.safetensors")
    with pytest.raises(
        CheckpointError, match=r"bad\.safetensors: blocks\.0\.self_attn\.q\.weight has shape \[32, 16\]"
    ):
        convert(src, str(tmp_path / "b"), "release")
    extra = dict(sd, **{"img_emb.proj.0.weight": torch.zeros(4)})
    with pytest.raises(CheckpointError, match="I2V"):
        convert(_save_release(tmp_path, extra, "i2v.safetensors"), str(tmp_path / "c"), "release")
    with pytest.raises(CheckpointError, match="has SAMA keys"):
        convert(_save_release(tmp_path, sd, "ok.safetensors"), str(tmp_path / "d"), "wan")
    with pytest.raises(CheckpointError, match="unknown config override"):
        convert(str(tmp_path / "ok.safetensors"), str(tmp_path / "e"), "release", overrides={"num_heads": 4})
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(open(tmp_path / "ok.safetensors", "rb").read()[:-100])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors: tensor .* is truncated"):
        convert(str(truncated), str(tmp_path / "f"), "release")
    # a partial state dict is completed from a base model
    base = str(tmp_path / "base.safetensors")
    save_file(random_release_state_dict(sama=False, seed=9), base)
    convert(str(tmp_path / "missing.safetensors"), str(tmp_path / "g"), "release", overrides={"base": base})
    assert SamaTransformer3DModel.from_pretrained(str(tmp_path / "g")).config.num_layers == 2


def test_export_refuses_what_the_release_cannot_compute(tmp_path):
    from sama.models.tiny import tiny_transformer

    legacy = tiny_transformer(semantic_rope="identity")
    legacy.save_pretrained(str(tmp_path / "identity"))
    with pytest.raises(CheckpointError, match="semantic_rope"):
        convert(str(tmp_path / "identity"), str(tmp_path / "x.safetensors"), "diffusers", "release")
    slots = tiny_transformer(semantic_slot_embed=True)
    with torch.no_grad():
        slots.semantic_pos_embed.normal_()
    slots.save_pretrained(str(tmp_path / "slots"))
    with pytest.raises(CheckpointError, match="semantic_pos_embed is non-zero"):
        convert(str(tmp_path / "slots"), str(tmp_path / "y.safetensors"), "diffusers", "release")


# ---------------------------------------------------------------------- numerics vs the release

PATHS = {  # frames, source frames, semantic tokens
    "video-edit": (2, 2, 5),
    "video-edit-no-semantic": (2, 2, 0),
    "image-edit": (1, 1, 5),
    "t2v": (2, 0, 0),
    "t2v-semantic": (2, 0, 5),
    "short-source": (3, 2, 5),
}


@pytest.mark.parametrize("path", list(PATHS))
def test_forward_matches_the_release_on_every_path(release, path):
    sd, _, dst, _ = release
    frames, src_frames, n_sem = PATHS[path]
    x = _inputs(frames, src_frames, n_sem=n_sem, batch=2)
    ref, ref_sem = release_forward(sd, x["x"], x["t"], x["ctx"], x["src"], x["sem"], heads=HEADS)
    model = SamaTransformer3DModel.from_pretrained(dst).eval()
    with torch.no_grad():
        out = model(x["x"], x["t"], x["ctx"], source_latents=x["src"], semantic_tokens=x["sem"])
    torch.testing.assert_close(out.sample, ref, atol=1e-5, rtol=1e-5)
    if n_sem:
        torch.testing.assert_close(out.semantic, ref_sem, atol=1e-5, rtol=1e-5)


def test_identity_semantic_rope_is_not_the_release(release):
    """The old behaviour (unrotated semantic q/k) differs from the release far beyond 1e-4."""
    sd, _, dst, _ = release
    x = _inputs(n_sem=5)
    ref, _ = release_forward(sd, x["x"], x["t"], x["ctx"], x["src"], x["sem"], heads=HEADS)
    old = SamaTransformer3DModel.from_pretrained(dst, semantic_rope="identity").eval()
    with torch.no_grad():
        out = old(x["x"], x["t"], x["ctx"], source_latents=x["src"], semantic_tokens=x["sem"]).sample
    assert (out - ref).abs().max() > 1e-3


def test_semantic_queries_and_keys_are_exactly_zero():
    from sama.models.tiny import tiny_transformer
    from sama.models.transformer import _apply_rotary

    model = tiny_transformer()
    x = torch.randn(1, 16, 2, 4, 6)
    cos, sin = model.build_rotary(x, x, 3)
    n_src = 2 * 2 * 3
    q = torch.randn(1, cos.shape[1], 2, 16)
    rotated = _apply_rotary(q, cos, sin)
    assert torch.all(rotated[:, n_src : n_src + 3] == 0)
    assert torch.all(rotated[:, :n_src] != 0) and torch.all(rotated[:, n_src + 3 :] != 0)


def _pipeline(dst, **cfg):
    from sama.models.encoders import TextEncoderConfig, VaeConfig, load_text_encoder, load_vae
    from sama.models.pipeline import PipelineConfig, SamaPipeline

    model = SamaTransformer3DModel.from_pretrained(dst)
    return SamaPipeline(model, load_vae(VaeConfig()), load_text_encoder(TextEncoderConfig()), PipelineConfig(**cfg))


@pytest.mark.parametrize("path", ["video-edit", "image-edit"])
def test_four_sampler_steps_match_the_release(release, path):
    sd, _, dst, _ = release
    frames, src_frames, n_sem = PATHS[path]
    x = _inputs(frames, src_frames, n_sem=n_sem, seed=7)
    neg = torch.randn(1, 7, 32, generator=torch.Generator().manual_seed(8))
    ref_lat, ref_sem = release_sample(sd, x["x"], x["sem"], x["ctx"], neg, x["src"], steps=4, heads=HEADS)
    pipe = _pipeline(dst)  # the defaults: flow-match Euler, shift 5, CFG 5
    out = pipe(
        prompt_embeds=x["ctx"],
        negative_prompt_embeds=neg,
        source_latents=x["src"],
        latents=x["x"],
        semantic_latents=x["sem"],
        num_inference_steps=4,
        output_type="latent",
    )
    torch.testing.assert_close(out.latents, ref_lat, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.semantic, ref_sem, atol=1e-4, rtol=1e-4)
    # the velocity head is stepped as a velocity: read as clean tokens, the semantic state differs
    old = _pipeline(dst)
    old.transformer.register_to_config(semantic_prediction="sample")
    sem_old = old(
        prompt_embeds=x["ctx"],
        negative_prompt_embeds=neg,
        source_latents=x["src"],
        latents=x["x"],
        semantic_latents=x["sem"],
        num_inference_steps=4,
        output_type="latent",
    ).semantic
    assert (sem_old - ref_sem).abs().max() > 1e-2
    # and UniPC with shift 3 (the old default) is another sampler
    unipc = _pipeline(dst, sampler="unipc", shift=3.0)(
        prompt_embeds=x["ctx"],
        negative_prompt_embeds=neg,
        source_latents=x["src"],
        latents=x["x"],
        semantic_latents=x["sem"],
        num_inference_steps=4,
        output_type="latent",
    )
    assert (unipc.latents - ref_lat).abs().max() > 1e-2


def test_euler_schedule_is_the_releases():
    from sama.models.scheduling import FlowMatchEulerScheduler

    s = FlowMatchEulerScheduler(shift=5.0)
    s.set_timesteps(50)
    assert torch.equal(s.sigmas[:-1], release_sigmas(50)) and s.sigmas[-1] == 0
    assert torch.equal(s.timesteps, release_sigmas(50) * 1000)
    assert s.timesteps[0] == 1000 and s.timesteps[-1] < 100  # no sigma = 1/1000 floor before the shift
    x, v = torch.ones(3), torch.full((3,), 2.0)
    out = s.step(v, s.timesteps[10], x, return_dict=False)[0]
    torch.testing.assert_close(out, x + v * (s.sigmas[11] - s.sigmas[10]))
    last = s.step(v, s.timesteps[-1], x).prev_sample
    torch.testing.assert_close(last, x - v * s.sigmas[-2])


def test_loaders_take_the_release_format_directly(release, tmp_path, monkeypatch, caplog):
    sd, src, _, _ = release
    monkeypatch.setenv("SAMA_CACHE", str(tmp_path / "cache"))
    with caplog.at_level("INFO", logger="sama.models.convert"):
        model = load_transformer(SamaModelConfig(pretrained=src))
        again = load_transformer(SamaModelConfig(pretrained=src))
    assert sum("converting release checkpoint" in r.message for r in caplog.records) == 1  # cached
    assert model.config.semantic_rope == "zero_qk"
    assert torch.equal(again.state_dict()["proj_out.weight"], sd["head.head.weight"])
    path, sub = as_diffusers(src)
    assert path.startswith(str(tmp_path / "cache")) and sub is None


def test_convert_reads_s3_by_range_and_writes_s3(release, s3_bucket, tmp_path):
    from sama import storage

    sd, src, _, _ = release
    storage.upload_file(src, f"{s3_bucket}/release/sama.safetensors")
    convert(f"{s3_bucket}/release/sama.safetensors", f"{s3_bucket}/converted", "release")
    assert storage.exists(f"{s3_bucket}/converted/config.json")
    model = SamaTransformer3DModel.from_pretrained(f"{s3_bucket}/converted", subfolder=None)
    assert torch.equal(model.state_dict()["patch_embedding.weight"], sd["patch_embedding.weight"])


def test_cli_convert(release, tmp_path, capsys):
    from sama.jobs.cli import main

    _, src, _, _ = release
    assert main(["convert", "--from", "release", src, str(tmp_path / "out"), "num_semantic_tokens=9"]) == 0
    assert SamaTransformer3DModel.from_pretrained(str(tmp_path / "out")).config.num_semantic_tokens == 9
    assert main(["convert", "--to", "release", str(tmp_path / "out"), str(tmp_path / "r.safetensors")]) == 0
    assert set(load_file(str(tmp_path / "r.safetensors"))) == set(random_release_state_dict())
    assert main(["convert", "--from", "release", src, str(tmp_path / "bad"), "num_heads=3"]) == 2
    assert "unknown config override" in capsys.readouterr().err


def test_an_editor_runs_the_release_dit_with_a_wan_base(release, tmp_path, monkeypatch):
    """serve / evaluate: checkpoint = the release DiT, base = a Wan2.1 diffusers folder (VAE, text)."""
    import numpy as np

    from sama.buckets import BucketConfig
    from sama.models.pipeline import EditModelConfig, PipelineConfig
    from sama.models.tiny import save_tiny_checkpoint

    _, src, _, _ = release
    monkeypatch.setenv("SAMA_CACHE", str(tmp_path / "cache"))
    base = save_tiny_checkpoint(str(tmp_path / "wan-base"), plain_wan_transformer=True)
    small = PipelineConfig(num_inference_steps=2, buckets=BucketConfig(area=64 * 96, max_frames=5))
    with pytest.raises(ValueError, match=r"has no vae/ .* set base"):
        EditModelConfig(checkpoint=src, pipeline=small).load()
    pipe = EditModelConfig(checkpoint=src, base=base, pipeline=small).load()
    assert pipe.transformer.config.semantic_rope == "zero_qk" and pipe.config.sampler == "flow_euler"
    clip = (np.random.default_rng(0).random((5, 48, 80, 3)) * 255).astype(np.uint8)
    out = pipe("make the cat red", clip, seed=0)
    assert out.video.shape[:2] == (1, 5) and out.semantic.shape == (1, 65, SEM)  # 65 tokens: the release's
