"""The synthetic editing world: exact targets, held-out combinations, real dataset layouts."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest

from sama import storage
from sama.jobs import launcher
from sama.jobs.demo import job_yaml
from sama.pipelines.evaluate.manifest import read_manifest
from sama.testing.world import (
    EDITS,
    HELD_OUT,
    nearest_colour,
    random_example,
    render,
    shape_mask,
    visible_mask,
    write_benchmark,
    write_world,
)
from sama.testing.world_models import WorldVaeRecipe


def changed(ex) -> np.ndarray:
    return np.any(render(ex.source) != render(ex.target), axis=-1)


@pytest.mark.parametrize("seed", range(6))
def test_edits_are_exact(seed):
    rng = random.Random(seed)
    recolour = random_example(rng, kind="recolour")
    assert np.array_equal(changed(recolour), visible_mask(recolour.source, recolour.shape))  # that shape, all of it
    removed = random_example(rng, kind="remove")
    assert changed(removed).any() and not (changed(removed) & ~visible_mask(removed.source, removed.shape)).any()
    added = random_example(rng, kind="add")
    t = added.target
    where = np.stack([shape_mask(t.shapes[-1], i, t.height, t.width) for i in range(t.frames)])
    assert changed(added).any() and not (changed(added) & ~where).any()  # only where the new shape is
    style = random_example(rng, kind="style")
    assert changed(style).any()  # never a scene that is black and white already
    frames = render(style.target)
    assert (frames[..., 0] == frames[..., 1]).all() and (frames[..., 1] == frames[..., 2]).all()
    assert np.array_equal(render(style.source)[0].shape, frames[0].shape)


def test_held_out_combinations_never_appear_in_training():
    rng = random.Random(1)
    for _ in range(300):
        ex = random_example(rng)
        for scene in (ex.source, ex.target):
            assert not {(s.kind, s.colour) for s in scene.shapes} & HELD_OUT
    held = random.Random(2)
    for i in range(20):
        ex = random_example(held, held_out=True, kind="recolour" if i % 2 else "add")
        assert {(s.kind, s.colour) for s in ex.target.shapes} & HELD_OUT


@pytest.mark.slow
def test_the_world_goes_through_ingest_and_is_a_benchmark_with_targets(ray_cluster, tmp_path):
    world = write_world(str(tmp_path / "world"), clips=4, pairs=len(EDITS), images=3, held_out=5)
    out = str(tmp_path / "ingest")
    summary = launcher.run(job_yaml("ingest"), [f"output={out}", "ingest.datasets=null", *world.ingest_overrides()])
    kept = {name: d["kept"] for name, d in summary["datasets"].items()}
    assert kept == {"motionbench": 4, "nhr_edit": 3, "openve3m": len(EDITS)}
    assert all(not d["reasons"] for d in summary["datasets"].values())
    items = read_manifest(world.benchmark)
    assert [it.item_id for it in items] == sorted(world.items, key=lambda k: (world.items[k]["kind"], k))
    assert all(it.target_uri and it.mask_uri and storage.exists(it.target_uri) for it in items)
    meta = json.load(open(storage.join(str(tmp_path / "world"), "bench", "items.json")))
    assert {m["kind"] for m in meta.values()} == set(EDITS)


def test_a_larger_held_out_set_extends_the_smaller_one(tmp_path):
    """The demo's held-out items are the first of any larger benchmark: the same scenes, edits and
    instructions, so a larger table is comparable with the demo's."""
    _, small = write_benchmark(str(tmp_path / "small"), 3, frames=3, size=32)
    _, big = write_benchmark(str(tmp_path / "big"), 7, frames=3, size=32)
    assert list(big)[:3] == list(small) and all(big[k] == small[k] for k in small)
    assert [big[k]["kind"] for k in big] == [EDITS[i % len(EDITS)] for i in range(7)]
    # The same clips, compared as decoded frames: once (of five suite runs, beside another xdist
    # worker) libx264 wrote one bit differently; another scene would differ by far more than 1 level.
    from sama.media import read_clip

    for name in ("source/h002.mp4", "target/h002.mp4", "mask/h002.mp4"):
        a, b = (read_clip(str(tmp_path / side / name), 100).astype(np.int16) for side in ("small", "big"))
        assert a.shape == b.shape == (3, 32, 32, 3) and np.abs(a - b).mean() < 1.0, name


@pytest.mark.slow
def test_sama_learning_scores_a_finished_demo_on_more_held_out_items(ray_cluster, tmp_path, monkeypatch, capsys):
    """`sama learning DIR --held-out N`: the demo's four systems on N held-out items, a table like
    the demo's; a folder that is not a finished demo is refused, naming what is missing."""
    from sama.jobs import cli, world

    assert cli.main(["learning", str(tmp_path)]) == 2
    assert "not a finished demo" in capsys.readouterr().err
    assert cli.main(["learning", str(tmp_path), "--held-out", "0"]) == 2
    assert "at least 1 item" in capsys.readouterr().err
    monkeypatch.setattr(world, "WorldVaeRecipe", lambda: WorldVaeRecipe(steps=2, batch=2, held_out=1, frames=1))
    ckpt = world.world_model(str(tmp_path))
    for stage in ("train_stage0", "train_stage1"):  # stand-ins for the stages' exports: the untrained weights
        shutil.copytree(f"{ckpt}/transformer", tmp_path / "outputs" / stage / "export" / "transformer")
    assert cli.main(["learning", str(tmp_path), "--held-out", "5"]) == 0
    table = json.load(open(tmp_path / "outputs" / "learning_5" / "learning.json"))
    assert list(table) == ["identity", "untrained", "stage0", "stage1"]
    assert all(row["items"] == 5 and row["errors"] == 0 for row in table.values())
    assert table["stage1"] == table["untrained"]  # the same weights score the same
    assert table["identity"]["unedited_psnr"] > 30 > table["untrained"]["unedited_psnr"]
    for row in table.values():  # one recolour in five items: its mean colour, nearest, and the rate from it
        (recolour,) = row["recolours"]
        assert recolour["nearest"] == nearest_colour(recolour["mean_rgb"])
        assert recolour["hit"] == (recolour["nearest"] == recolour["wanted"])
        assert row["recolour_success"] == float(recolour["hit"])
    assert not table["identity"]["recolours"][0]["hit"]  # a copy keeps the shape's old colour
    kinds = [m["kind"] for m in json.load(open(tmp_path / "data" / "world_held_out_5" / "items.json")).values()]
    assert sorted(kinds) == sorted(EDITS)
