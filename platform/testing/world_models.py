"""A tiny Wan VAE that reconstructs the synthetic world, so the demo's decoded edits are pictures.

diffusers' ``AutoencoderKLWan`` (the class every job loads) at a world-sized shape: 4x spatial,
no temporal down-sampling, 8 latent channels. It is trained frame by frame: the taps of its
causal 3-D convolutions on past frames start at zero and, fed single frames, only ever see the
causal zero padding, so they get no gradient and stay zero. The trained VAE therefore encodes and
decodes each frame on its own, in clips too, and training runs the convolutions on the current
frame's tap alone (:func:`frame_wise`), a third of the work. The per-channel mean and std of its
latents on world clips go into the config's ``latents_mean`` / ``latents_std``, so the latents
the transformer sees are normalised as Wan's are.

Plain reconstruction loss leaves the world's small shapes as blurred blobs whose colour drifts
toward the background (600 steps: 21.4 dB held out, 1 of the report's 7 shapes in its own
colour), and an edit can only be as right as the VAE decodes it. Two terms fix it at no extra
cost: the first three latent channels are anchored to the frame's 4x4-average colour
(``colour_anchor``: colour gets its own place in the latent from the first step), and shape
pixels weigh ``shape_weight`` times more than background in the reconstruction (the background
is most of every frame and would otherwise dominate the loss). On 63 held-out shapes at 600
steps, either alone gets 79% / 70% of them right, both 98% (24.4 dB); the recipe's 400 steps get
97% (23.2 dB) in two thirds of the time.

``train_world_vae`` writes a diffusers folder plus ``report.json`` (held-out reconstruction PSNR
and colour accuracy); ``world_vae`` returns a cached one when the folder already holds a VAE
trained with that recipe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sama.testing.world import Scene, nearest_colour, random_scene, render, visible_mask

ARCHITECTURE = dict(
    base_dim=8,
    z_dim=8,
    dim_mult=[1, 2, 2],  # two 2x down-samples: 4x spatial
    num_res_blocks=1,
    temperal_downsample=[False, False],  # every frame its own latent
    scale_factor_spatial=4,
    scale_factor_temporal=1,
)


@dataclass(frozen=True)
class WorldVaeRecipe:
    steps: int = 400
    batch: int = 16  # frames per step
    crop: int = 32  # random crops (the VAE is convolutional); the whole frame at the demo's 32x32
    lr: float = 3e-3
    seed: int = 0
    size: int = 32
    frames: int = 17
    held_out: int = 6  # clips for the reported PSNR (and the latent statistics)
    colour_anchor: float = 1.0  # weight of the latent colour anchor (module docstring); 0: none
    shape_weight: float = 4.0  # extra weight of shape pixels in the reconstruction; 0: plain MSE

    def __post_init__(self) -> None:
        if self.frames % 4 != 1:  # Wan's encoder reads frames 1 + 4k and drops the rest
            raise ValueError(f"WorldVaeRecipe.frames must be 1 + 4k (1, 5, 9, ...), got {self.frames}")

    def key(self) -> str:
        text = json.dumps({"recipe": dataclasses.asdict(self), "architecture": ARCHITECTURE}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_vae(seed: int = 0):
    from diffusers import AutoencoderKLWan

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKLWan(**ARCHITECTURE)
    with torch.no_grad():
        for conv in _causal_convs(vae):
            conv.weight[:, :, :-1] = 0  # past-frame taps: zero, and they stay so (see the module docstring)
    return vae


def _causal_convs(vae) -> list[torch.nn.Conv3d]:
    return [m for m in vae.modules() if isinstance(m, torch.nn.Conv3d) and m.weight.shape[2] > 1]


@contextlib.contextmanager
def frame_wise(vae) -> Iterator[None]:
    """Run every causal convolution on the current frame's tap alone: exact while the past taps
    are zero (checked), three times less work on single frames."""
    convs = _causal_convs(vae)
    for conv in convs:
        if conv.weight[:, :, :-1].abs().max() > 0:
            raise ValueError("frame_wise needs zero past-frame taps (a VAE built by build_vae)")

        def forward(x, cache_x=None, conv=conv):
            pad = list(conv._padding)
            x = F.pad(x, pad[:4] + [0, 0])
            return F.conv3d(x, conv.weight[:, :, -1:], conv.bias, conv.stride)

        conv.forward = forward
    try:
        yield
    finally:
        for conv in convs:
            del conv.forward


def held_out_scenes(recipe: WorldVaeRecipe) -> list[Scene]:
    """The report's scenes: world scenes from other seeds than training's."""
    rng = random.Random(recipe.seed + 99_991)
    return [random_scene(rng, recipe.frames, recipe.size) for _ in range(recipe.held_out)]


def world_clips(scenes: list[Scene]) -> torch.Tensor:
    """(n, 3, T, H, W) in [-1, 1]: the scenes rendered."""
    return torch.from_numpy(np.stack([render(s) for s in scenes])).permute(0, 4, 1, 2, 3).float() / 127.5 - 1


def _frames(rng: random.Random, recipe: WorldVaeRecipe) -> torch.Tensor:
    """(batch, 3, 1, crop, crop): one random frame of a random scene each, randomly cropped."""
    out = []
    for _ in range(recipe.batch):
        frame = render(random_scene(rng, recipe.frames, recipe.size))[rng.randrange(recipe.frames)]
        i, j = (rng.randrange(0, recipe.size - recipe.crop + 1) for _ in range(2))
        out.append(frame[i : i + recipe.crop, j : j + recipe.crop])
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)[:, :, None].float() / 127.5 - 1


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two [-1, 1] tensors, on the 0..255 scale."""
    mse = float(((a.clamp(-1, 1) - b) ** 2).mean()) / 4
    return 10 * math.log10(1 / max(mse, 1e-10))


@torch.no_grad()
def reconstruct(vae, clips: torch.Tensor) -> torch.Tensor:
    return vae.decode(vae.encode(clips).latent_dist.mode()).sample


def colour_accuracy(scenes: list[Scene], decoded: torch.Tensor) -> float:
    """The share of the scenes' shapes (those showing at all) whose mean decoded colour is nearest
    their own palette colour: whether a recolour could come out right through this VAE."""
    pixels = ((decoded.clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 4, 1).numpy()  # (n, T, H, W, 3)
    hits = []
    for scene, clip in zip(scenes, pixels):
        for i, shape in enumerate(scene.shapes):
            mask = visible_mask(scene, i)
            if mask.any():
                hits.append(nearest_colour(clip[mask].mean(0)) == shape.colour)
    return float(np.mean(hits)) if hits else float("nan")


def _loss(vae, x: torch.Tensor, recipe: WorldVaeRecipe) -> torch.Tensor:
    """Reconstruction MSE with shape pixels up-weighted, plus the distance of latent channels
    0..2 to the frame's average colour over each latent pixel's patch (the module docstring says
    why). A shape pixel is one away from its frame's per-channel median: the background covers
    most of every world frame."""
    z = vae.encode(x).latent_dist.mode()
    background = x.flatten(3).median(-1).values[..., None, None]
    weight = 1 + recipe.shape_weight * ((x - background).abs().amax(1, keepdim=True) > 0.05).float()
    loss = (weight * (vae.decode(z).sample - x) ** 2).mean() / weight.mean()
    if recipe.colour_anchor:
        patch = ARCHITECTURE["scale_factor_spatial"]
        loss = loss + recipe.colour_anchor * F.mse_loss(z[:, :3, 0], F.avg_pool2d(x[:, :, 0], patch))
    return loss


def train_world_vae(out: str, recipe: WorldVaeRecipe = WorldVaeRecipe(), log: Callable[[str], None] = print) -> dict:
    """Train the world VAE, save it to ``out`` (diffusers folder + report.json); the report."""
    t0 = time.time()
    vae = build_vae(recipe.seed).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=recipe.lr, weight_decay=0.0)  # decay would move the zero taps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / recipe.steps)))
    rng = random.Random(recipe.seed)
    every = max(1, recipe.steps // 5)
    with frame_wise(vae):
        for step in range(1, recipe.steps + 1):
            x = _frames(rng, recipe)
            loss = _loss(vae, x, recipe)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step % every == 0 or step == recipe.steps:
                log(f"[world vae] step {step}/{recipe.steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    vae.eval()
    scenes = held_out_scenes(recipe)
    held = world_clips(scenes)
    with torch.no_grad():
        z = vae.encode(held).latent_dist.mode()
        mean, std = z.mean((0, 2, 3, 4)), z.std((0, 2, 3, 4)).clamp_min(1e-3)
        decoded = vae.decode(z).sample
        value, colours = psnr(decoded, held), colour_accuracy(scenes, decoded)
    vae.register_to_config(latents_mean=mean.tolist(), latents_std=std.tolist())
    vae.save_pretrained(out)
    report = {
        "held_out_psnr": round(value, 2),
        "held_out_colour_accuracy": round(colours, 3),
        "held_out_clips": recipe.held_out,
        "steps": recipe.steps,
        "seconds": round(time.time() - t0, 1),
        "recipe": dataclasses.asdict(recipe),
        "key": recipe.key(),
    }
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    log(f"[world vae] held-out PSNR {value:.2f} dB, shape colours right {colours:.0%} ({report['seconds']}s)")
    return report


def world_vae(out: str, recipe: WorldVaeRecipe = WorldVaeRecipe(), log: Callable[[str], None] = print) -> dict:
    """The VAE in ``out``: reused when trained with this recipe before, else trained now."""
    try:
        with open(os.path.join(out, "report.json")) as f:
            report = json.load(f)
        if report.get("key") == recipe.key():
            log(f"[world vae] cached in {out}: held-out PSNR {report['held_out_psnr']} dB")
            return report
    except (OSError, ValueError):
        pass
    return train_world_vae(out, recipe, log)


# The transformer of the debug recipe: the tiny SAMA model, deeper and wider (a 32x32 frame is
# 16 tokens of 2x2 latents through the 4x VAE), so it learns the world's edits in minutes.
TRANSFORMER = dict(
    in_channels=ARCHITECTURE["z_dim"],
    out_channels=ARCHITECTURE["z_dim"],
    patch_size=(1, 2, 2),
    num_layers=4,
    num_attention_heads=4,
    attention_head_dim=32,
    ffn_dim=512,
    freq_dim=64,
)


def save_world_checkpoint(path: str, vae_dir: str, seed: int = 0) -> str:
    """A pipeline folder (``sama.models.tiny.SUBFOLDERS`` layout) for the world: the trained VAE
    from ``vae_dir``, the debug recipe's untrained transformer, the tiny random text and SigLIP
    encoders (fixed random features still carry the instruction and the anchor frames)."""
    import shutil

    from diffusers import AutoencoderKLWan

    from sama.models.tiny import SUBFOLDERS, tiny_siglip, tiny_text_encoder, tiny_tokenizer, tiny_transformer

    tiny_transformer(seed, **TRANSFORMER).save_pretrained(os.path.join(path, SUBFOLDERS["transformer"]))
    AutoencoderKLWan.from_pretrained(vae_dir).save_pretrained(os.path.join(path, SUBFOLDERS["vae"]))
    shutil.copy(os.path.join(vae_dir, "report.json"), os.path.join(path, SUBFOLDERS["vae"], "report.json"))
    tiny_text_encoder(seed).save_pretrained(os.path.join(path, SUBFOLDERS["text_encoder"]))
    tiny_tokenizer().save_pretrained(os.path.join(path, SUBFOLDERS["tokenizer"]))
    tiny_siglip(seed).save_pretrained(os.path.join(path, SUBFOLDERS["image_encoder"]))
    return path
