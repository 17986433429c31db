"""The world VAE: frame-wise by construction, trained and cached, read with its own compression."""

from __future__ import annotations

import json
import random

import pytest
import torch

from sama.models.encoders import VaeConfig, load_vae
from sama.testing.world import random_scene, render
from sama.testing.world_models import (
    WorldVaeRecipe,
    build_vae,
    colour_accuracy,
    frame_wise,
    held_out_scenes,
    psnr,
    reconstruct,
    world_clips,
    world_vae,
)


def clip(seed: int, frames: int = 5) -> torch.Tensor:
    x = torch.from_numpy(render(random_scene(random.Random(seed), frames, 32)))
    return x.permute(3, 0, 1, 2)[None].float() / 127.5 - 1


def test_frame_wise_is_exact_and_frames_are_encoded_on_their_own():
    vae = build_vae(seed=3).eval()
    with torch.no_grad():
        for conv in vae.modules():  # as training leaves them: past taps zero, the rest anything
            if isinstance(conv, torch.nn.Conv3d) and conv.weight.shape[2] > 1:
                conv.weight[:, :, -1:].normal_(0, 0.2)
    x = clip(0)
    z = vae.encode(x).latent_dist.mode()
    with frame_wise(vae):
        z_fw = vae.encode(x[:, :, 2:3]).latent_dist.mode()
    assert z.shape[2] == 5 and z.shape[3] == x.shape[3] // 4  # 4x spatial, every frame its own latent
    assert torch.allclose(z[:, :, 2:3], z_fw, atol=1e-5)  # frame 2 alone, through the one-tap convs
    out = vae.decode(z).sample
    alone = vae.decode(z[:, :, 3:4]).sample
    assert torch.allclose(out[:, :, 3:4], alone, atol=1e-5)


def test_frame_wise_refuses_a_vae_that_looks_back_in_time():
    vae = build_vae()
    conv = next(m for m in vae.modules() if isinstance(m, torch.nn.Conv3d) and m.weight.shape[2] > 1)
    with torch.no_grad():
        conv.weight[0, 0, 0] = 1.0
    try:
        with frame_wise(vae):
            raise AssertionError("frame_wise accepted past-frame taps")
    except ValueError as e:
        assert "past-frame taps" in str(e)


def test_training_reconstructs_better_and_is_cached(tmp_path, capsys):
    recipe = WorldVaeRecipe(steps=150, batch=8, held_out=2, frames=5)
    held = world_clips(held_out_scenes(recipe))  # the report's clips
    before = psnr(reconstruct(build_vae(recipe.seed).eval(), held), held)
    report = world_vae(str(tmp_path / "vae"), recipe)
    assert report["held_out_psnr"] > before + 2 and report["key"] == recipe.key()  # measured: 12.5 -> 16.0 dB
    wan = load_vae(VaeConfig(pretrained=str(tmp_path / "vae"), subfolder=None))
    assert (wan.spatial_factor, wan.temporal_factor) == (4, 1)  # from the architecture, not config defaults
    assert abs(psnr(reconstruct(wan.vae, held), held) - report["held_out_psnr"]) < 0.01  # what was saved
    z = wan.encode(held)  # normalised with the latent statistics training recorded
    assert abs(float(z.mean())) < 0.1 and 0.8 < float(z.std()) < 1.2
    capsys.readouterr()
    again = world_vae(str(tmp_path / "vae"), recipe)
    assert again == report and "cached" in capsys.readouterr().out  # no second training
    assert json.load(open(tmp_path / "vae" / "report.json"))["steps"] == 150


def test_colour_accuracy_reads_each_visible_shape_as_the_nearest_palette_colour():
    scenes = held_out_scenes(WorldVaeRecipe(held_out=3, frames=5))
    clips = world_clips(scenes)
    assert colour_accuracy(scenes, clips) == 1.0
    shapes = sum(len(s.shapes) for s in scenes)
    background = clips[:, :, :, :1, :1].expand_as(clips)  # every shape decoded as background
    assert colour_accuracy(scenes, background) == 0.0
    tinted = clips.clone()
    tinted[0] = torch.tensor([0.9, -0.8, -0.8])[:, None, None, None]  # the first clip all red
    red = sum(sh.colour == "red" for sh in scenes[0].shapes)
    assert colour_accuracy(scenes, tinted) == (shapes - len(scenes[0].shapes) + red) / shapes


def test_the_world_checkpoint_is_rebuilt_when_its_transformer_changes(tmp_path, monkeypatch):
    """The demo's world checkpoint is cached, keyed by the VAE recipe and the debug transformer's
    config: reused as is, rebuilt (not served stale) after either changes."""
    from sama.jobs import world
    from sama.testing import world_models

    monkeypatch.setattr(world, "WorldVaeRecipe", lambda: WorldVaeRecipe(steps=2, batch=2, held_out=1, frames=1))
    ckpt = world.world_model(str(tmp_path))
    config = tmp_path / "models" / "world" / "transformer" / "config.json"
    first = json.loads(config.read_text())
    assert first["num_layers"] == world_models.TRANSFORMER["num_layers"]
    mtime = config.stat().st_mtime_ns
    assert world.world_model(str(tmp_path)) == ckpt and config.stat().st_mtime_ns == mtime  # reused
    monkeypatch.setitem(world_models.TRANSFORMER, "num_layers", 1)
    world.world_model(str(tmp_path))
    assert json.loads(config.read_text())["num_layers"] == 1


def test_a_recipe_whose_frames_the_encoder_would_drop_is_refused():
    with pytest.raises(ValueError, match=r"1 \+ 4k"):
        WorldVaeRecipe(frames=6)
