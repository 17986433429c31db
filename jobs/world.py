"""The demo's learning half: the synthetic editing world through every job, and what training learned.

The world (``sama.testing.world``) is written as MotionBench / NHR-Edit / OpenVE-3M folders and
goes through ingest, filter and precompute unchanged; the world VAE (``sama.testing.world_models``,
trained once and cached) makes its latents; stage 0 then stage 1 train the debug recipe
(``jobs/train_world_stage{0,1}.yaml``); the evaluation job scores four systems on the held-out
benchmark with targets: copying the source (``identity``), the untrained model, stage 0 and
stage 1. ``learning.json`` holds the table.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import os
import shutil

import numpy as np

from sama.config import ConfigError
from sama.testing import world as world_module
from sama.testing.world import World, nearest_colour, write_benchmark, write_world
from sama.testing.world_models import TRANSFORMER, WorldVaeRecipe, save_world_checkpoint, world_vae

from . import launcher

HERE = os.path.dirname(os.path.abspath(__file__))
# 32x32 clips: what 2 CPU cores train to a visible edit in the demo's minutes.
WORLD = dict(clips=48, pairs=160, images=64, held_out=10, size=32)
FRAMES = 5  # frames the models see (buckets.max_frames): the first 5 of each 17-frame clip
BUCKETS = ["buckets.area=1024", "buckets.multiple=16", f"buckets.max_frames={FRAMES}"]
MAX_CLIP = 1000  # frames: whole clips
SYSTEMS = ("identity", "untrained", "stage0", "stage1")
# Sampling for every model system (the served edit too): the debug recipe's.
SAMPLING = ["num_inference_steps=10", "guidance_scale=1.0", *BUCKETS]


def job_yaml(name: str) -> str:
    return os.path.join(HERE, f"{name}.yaml")


def world_data(workdir: str) -> World:
    """The world under ``workdir/data/world`` (written once, reused after)."""
    root = os.path.join(workdir, "data", "world")
    marker = os.path.join(root, "world.json")
    # Keyed by the generator's code too: a changed world (a fixed edit) is written again, not reused.
    code = hashlib.sha256(inspect.getsource(world_module).encode()).hexdigest()[:16]
    wanted = {"generator": {**WORLD, "code": code}}
    if os.path.exists(marker):
        saved = json.load(open(marker))
        if saved.get("generator") == wanted["generator"]:
            return World(**saved["world"])
    shutil.rmtree(root, ignore_errors=True)
    print(f"[demo] writing the synthetic editing world in {root}")
    world = write_world(root, **WORLD)
    with open(marker, "w") as f:
        json.dump({**wanted, "world": dataclasses.asdict(world)}, f)
    return world


def world_model(workdir: str) -> str:
    """A pipeline folder with the trained world VAE (cached in ``workdir/cache``) and the untrained
    debug transformer."""
    vae = os.path.join(workdir, "cache", "world_vae")
    report = world_vae(vae, WorldVaeRecipe(), log=lambda m: print(f"[demo] {m}"))
    ckpt = os.path.join(workdir, "models", "world")
    # Rebuilt when the VAE or the debug transformer's config changed, not reused stale.
    key = hashlib.sha256(json.dumps([report["key"], TRANSFORMER], sort_keys=True).encode()).hexdigest()[:16]
    stamp = os.path.join(ckpt, "world.json")
    if not os.path.exists(stamp) or json.load(open(stamp)).get("key") != key:
        shutil.rmtree(ckpt, ignore_errors=True)
        save_world_checkpoint(ckpt, vae)
        with open(stamp, "w") as f:
            json.dump({"key": key}, f)
    return ckpt


def curate(world: World, outputs: str) -> str:
    """Ingest then filter (cheap checks): the world's filtered manifest."""
    out = f"{outputs}/world"
    launcher.run(job_yaml("ingest"), [f"output={out}/ingest", "ingest.datasets=null", *world.ingest_overrides()])
    launcher.run(
        job_yaml("filter"),
        [
            f"output={out}/filter",
            f"filter.input={out}/ingest/manifest",
            "filter.judge.backend=none",
            "filter.checks.min_short_side=32",
            # By design here: a removal can leave a plain background, shapes may drift slowly, and a
            # removed shape takes its motion with it; the other checks apply as to any dataset.
            "filter.checks.skip=[blank_frames, static, motion_lost]",
        ],
    )
    return f"{out}/filter/manifest"


def precompute(manifest: str, ckpt: str, outputs: str) -> str:
    """World VAE latents, tiny SigLIP anchors and tiny UMT5 embeddings of every kept sample."""
    out = f"{outputs}/precompute"
    launcher.run(
        job_yaml("precompute"),
        [
            f"output={out}",
            f"precompute.manifest={manifest}",
            "precompute.shard_size=16",
            *(f"precompute.{b}" for b in BUCKETS),
            f"precompute.vae.pretrained={ckpt}",
            f"precompute.text.pretrained={ckpt}",
            f"precompute.semantic.pretrained={ckpt}/image_encoder",
        ],
    )
    return f"{out}/latents"


def train(latents: str, ckpt: str, outputs: str) -> dict[str, str]:
    """Stage 0 (image edits + text-to-video with pretexts) then stage 1 (video edits), both exported."""
    print("\n[demo] 6/9 train stage 0 on the world: image edits + t2v with pretexts (Ray Train + DeepSpeed)")
    launcher.run(
        job_yaml("train_world_stage0"),
        [
            f"output={outputs}/train_stage0",
            f"train.model.pretrained={ckpt}",
            f"train.data.sources=[{{name: image_edit, uri: {latents}, tasks: [image_edit]}}, "
            f"{{name: t2v, uri: {latents}, tasks: [t2v]}}]",
        ],
    )
    print("\n[demo] 7/9 train stage 1 on the world: video edits + some image edits, from stage 0")
    launcher.run(
        job_yaml("train_world_stage1"),
        [
            f"output={outputs}/train_stage1",
            f"train.model.pretrained={ckpt}",
            f"train.init_from={outputs}/train_stage0/stage0",
            f"train.data.sources=[{{name: video_edit, uri: {latents}, tasks: [video_edit], weight: 0.8}}, "
            f"{{name: image_edit, uri: {latents}, tasks: [image_edit], weight: 0.2}}]",
        ],
    )
    return {
        "stage 0 run": f"{outputs}/train_stage0/stage0",
        "stage 1 run": f"{outputs}/train_stage1/stage1",
        "stage 0 model": f"{outputs}/train_stage0/export",
        "trained model": f"{outputs}/train_stage1/export",
        "train metrics": f"{outputs}/train_stage1/stage1/metrics",
    }


def model_overrides(prefix: str, ckpt: str, transformer: str | None) -> list[str]:
    """Overrides that point an EditModelConfig at the world checkpoint (and a trained transformer)."""
    out = [f"{prefix}.checkpoint={ckpt}", *(f"{prefix}.pipeline.{s}" for s in SAMPLING)]
    return out + ([f"{prefix}.transformer.pretrained={transformer}"] if transformer else [])


def identity_edits(world: World, folder: str) -> str:
    """The identity baseline's edits: every held-out source, copied as its own edit."""
    os.makedirs(folder, exist_ok=True)
    bench = os.path.dirname(world.benchmark)
    for item in world.items:
        shutil.copy(os.path.join(bench, "source", f"{item}.mp4"), os.path.join(folder, f"{item}.mp4"))
    return folder


def evaluate(world: World, ckpt: str, exports: dict[str, str | None], outputs: str) -> dict[str, dict]:
    """Each system on the held-out benchmark; the learning table (also ``outputs/learning.json``)."""
    table = {}
    for system in SYSTEMS:
        out = f"{outputs}/evaluate/{system}"
        overrides = [f"output={out}", f"evaluate.manifest={world.benchmark}", "evaluate.judge.backend=none"]
        if system == "identity":
            edits = identity_edits(world, f"{outputs}/evaluate/identity_edits")
            overrides += [f"evaluate.edits={edits}", f"evaluate.align.max_frames={FRAMES}"]  # the frames models edit
        else:
            overrides += model_overrides("evaluate.model", ckpt, exports[system]) + [f"evaluate.model.label={system}"]
        launcher.run(job_yaml("eval"), overrides)
        table[system] = learning_row(out, world)
    with open(os.path.join(outputs, "learning.json"), "w") as f:
        json.dump(table, f, indent=1)
    print_table(table)
    return table


def exports(outputs: str) -> dict[str, str | None]:
    """The model systems' transformers: none for the untrained model, each stage's export."""
    return {"untrained": None, "stage0": f"{outputs}/train_stage0/export", "stage1": f"{outputs}/train_stage1/export"}


def rescore(workdir: str, held_out: int) -> dict[str, dict]:
    """A finished demo's four systems on a held-out benchmark of ``held_out`` items, of which the
    demo's own are the first: ten items hold two of each edit kind, too few for a steady table.
    Written to ``outputs/learning_<held_out>/learning.json``."""
    if held_out < 1:
        raise ConfigError(f"held_out={held_out}: at least 1 item")
    workdir = os.path.abspath(workdir)
    outputs, ckpt = os.path.join(workdir, "outputs"), os.path.join(workdir, "models", "world")
    missing = [p for p in (ckpt, *filter(None, exports(outputs).values())) if not os.path.isdir(p)]
    if missing:
        raise ConfigError(f"{workdir}: not a finished demo (missing {', '.join(missing)}); run `sama demo` first")
    root = os.path.join(workdir, "data", f"world_held_out_{held_out}")
    shutil.rmtree(root, ignore_errors=True)
    bench, items = write_benchmark(root, held_out, size=WORLD["size"])
    world = World(root, {}, [], bench, items)
    print(f"[learning] {held_out} held-out items in {root}")
    with launcher.session():  # one Ray for the four evaluations
        return evaluate(world, ckpt, exports(outputs), os.path.join(outputs, f"learning_{held_out}"))


def learning_row(eval_output: str, world: World) -> dict:
    """Mean PSNR to the target (whole frame, edited and unedited regions) and the recolour success
    rate: the share of recolours whose named shape's mean colour lands nearest the requested one.
    ``recolours`` lists each recolour's mean colour: a miss that moved part of the way shows there."""
    from sama.pipelines.evaluate.job import read_results

    res = read_results(eval_output)
    ok = res[res.status == "ok"]
    recolours = [
        recolour_result(row.item_id, row.edit_uri, row.mask_uri, world.items[row.item_id])
        for row in ok[ok.category == "recolour"].itertuples()
    ]
    return {
        "psnr_to_target": _mean(ok.gt_psnr),
        "edited_psnr": _mean(ok.gt_psnr_edited),
        "unedited_psnr": _mean(ok.gt_psnr_unedited),
        "recolour_success": round(float(np.mean([r["hit"] for r in recolours])), 3) if recolours else None,
        "items": int(len(ok)),
        "errors": int((res.status != "ok").sum()),
        "recolours": recolours,
    }


def recolour_result(item_id: str, edit_uri: str, mask_uri: str, item: dict) -> dict:
    """The edit's mean colour inside the recoloured shape's mask, the palette colour nearest it,
    and whether that is the requested one (``hit``)."""
    from sama.media import read_clip

    edit = read_clip(edit_uri, MAX_CLIP)
    mask = read_clip(mask_uri, len(edit)).mean(-1) > 127
    inside = edit[: len(mask)][mask].reshape(-1, 3).astype(np.float32)
    mean = [round(float(c), 1) for c in inside.mean(0)] if len(inside) else None
    nearest = nearest_colour(mean) if mean else None
    return {
        "item": item_id,
        "instruction": item["instruction"],
        "wanted": item["colour"],
        "mean_rgb": mean,
        "nearest": nearest,
        "hit": nearest == item["colour"],
    }


def _mean(values) -> float | None:
    v = [float(x) for x in values if x is not None and not math.isnan(float(x))]
    return round(float(np.mean(v)), 2) if v else None


def print_table(table: dict[str, dict]) -> None:
    cols = ("psnr_to_target", "edited_psnr", "unedited_psnr", "recolour_success")
    print("\n[demo] what training learned (held-out world benchmark, PSNR in dB):")
    print("  " + f"{'system':<10}" + "".join(f"{c:>18}" for c in cols))
    for system, row in table.items():
        print("  " + f"{system:<10}" + "".join(f"{'-' if row[c] is None else row[c]:>18}" for c in cols))


def edit_sheet(source: str, edit: str, target: str, instruction: str, path: str, ckpt: str | None = None) -> str:
    """A contact sheet of the served edit: source | edit | ground truth, the frames the model edited;
    with ``ckpt``, also the source through its VAE and back: what any edit starts from and is
    decoded by, so the VAE's share of what the edit gets wrong is in view."""
    from sama.media import read_clip
    from sama.pipelines.evaluate.scoring import contact_sheet

    edited = read_clip(edit, MAX_CLIP)
    src = read_clip(source, len(edited))
    rows = [("source", src)]
    if ckpt:
        rows.append(("VAE(src)", vae_round_trip(ckpt, src)))
    rows += [("edit", edited), ("target", read_clip(target, len(edited)))]
    with open(path, "wb") as f:
        f.write(contact_sheet(rows, instruction, len(edited), 96))
    return path


def vae_round_trip(ckpt: str, clip: np.ndarray) -> np.ndarray:
    """``clip`` (T, H, W, 3) uint8 encoded and decoded by the checkpoint's VAE."""
    import torch

    from sama.models.encoders import VaeConfig, load_vae, tensor_to_video, video_to_tensor

    vae = load_vae(VaeConfig(pretrained=ckpt))
    with torch.no_grad():
        return tensor_to_video(vae.decode(vae.encode(video_to_tensor(clip)[None])))[0].numpy()
