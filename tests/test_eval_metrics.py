"""Evaluation pieces without Ray: aggregation formulas, metrics on synthetic motion, manifest readers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sama.judging import EVAL_RUBRICS, parse_answer
from sama.pipelines.evaluate.aggregate import aggregate, geometric_mean
from sama.pipelines.evaluate.manifest import ManifestError, read_manifest
from sama.pipelines.evaluate.metrics import MetricsConfig, block_flow, downscale, edit_metrics, gray

# --- aggregation against hand-computed values -------------------------------------------------------


def test_openve_caps_fidelity_and_quality_by_compliance():
    r = EVAL_RUBRICS["openve"]
    out = aggregate(r, {"instruction_compliance": 2, "detail_fidelity": 5, "visual_quality": 1})
    assert out == {
        "openve.instruction_compliance": 2,
        "openve.detail_fidelity": 2,
        "openve.visual_quality": 1,
        "openve.overall": pytest.approx(5 / 3),
    }
    assert (
        aggregate(r, {"instruction_compliance": 5, "detail_fidelity": 4, "visual_quality": 3})["openve.overall"] == 4.0
    )


def test_reco_geometric_mean_per_group_arithmetic_overall():
    r = EVAL_RUBRICS["reco"]
    scores = {
        "semantic_accuracy": 8,
        "scope_precision": 2,
        "content_preservation": 4,  # (64)^(1/3) = 4
        "appearance": 9,
        "scale": 9,
        "motion": 9,  # 9
        "fidelity": 10,
        "temporal_stability": 0,
        "edit_stability": 10,
    }  # a zero zeroes the group
    out = aggregate(r, scores)
    assert out["reco.edit_accuracy"] == pytest.approx(4.0)
    assert out["reco.naturalness"] == pytest.approx(9.0)
    assert out["reco.quality"] == 0.0
    assert out["reco.overall"] == pytest.approx((4 + 9 + 0) / 3)
    assert geometric_mean([1, 10, 100]) == pytest.approx(10.0)


def test_vie_scores_pass_through_and_answers_validate():
    r = EVAL_RUBRICS["vie"]
    assert aggregate(r, {"instruction_following": 9, "quality": 7}) == {
        "vie.instruction_following": 9.0,
        "vie.quality": 7.0,
    }
    a = parse_answer(json.dumps({"scores": {"instruction_following": 10, "quality": 0}, "reason": "x"}), r)
    assert a.scores == {"instruction_following": 10.0, "quality": 0.0}
    with pytest.raises(ValueError, match="outside 0-10"):
        parse_answer(json.dumps({"scores": {"instruction_following": 11, "quality": 0}}), r)
    assert r.response_schema()["properties"]["scores"]["required"] == ["instruction_following", "quality"]
    assert "instruction_compliance" in EVAL_RUBRICS["openve"].prompt("make it red", 4, 4)


# --- metrics on synthetic videos with known motion --------------------------------------------------


def moving_square(t=7, h=64, w=64, v=(1, 3), side=16, seed=0) -> np.ndarray:
    """A textured square moving by ``v`` = (dy, dx) pixels per frame over a static textured background."""
    rng = np.random.default_rng(seed)
    bg = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    tex = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
    out = np.repeat(bg[None], t, axis=0)
    for i in range(t):
        y, x = 8 + v[0] * i, 8 + v[1] * i
        out[i, y : y + side, x : x + side] = tex
    return out


def test_block_flow_recovers_known_motion():
    clip = moving_square(v=(1, 3))
    g = gray(downscale(clip, 256))
    flow, cost = block_flow(g[2], g[3], block=8, radius=6)
    # the square spans x 14..30, y 10..26 at frame 2: blocks (row 2, cols 2-3) lie inside it
    assert flow[2, 2].tolist() == [1.0, 3.0] and flow[2, 3].tolist() == [1.0, 3.0]
    assert flow[6, 6].tolist() == [0.0, 0.0]  # static background
    assert cost[2, 2] < 1e-6


def test_identical_edit_is_perfectly_faithful_and_keeps_motion():
    clip = moving_square()
    m = edit_metrics(clip, clip.copy(), MetricsConfig())
    assert m["edited_fraction"] == 0.0 and m["fidelity_psnr"] == 100.0 and m["fidelity_ssim"] == pytest.approx(1.0)
    assert m["flow_epe"] == 0.0 and m["motion_preservation"] == 1.0 and m["flicker"] == 0.0


def test_flicker_lowers_temporal_consistency():
    clip = moving_square()
    flick = clip.astype(int)
    flick[1::2] += 60
    flick = np.clip(flick, 0, 255).astype(np.uint8)
    steady, flickering = edit_metrics(clip, clip, MetricsConfig()), edit_metrics(clip, flick, MetricsConfig())
    assert steady["temporal_consistency"] > 0.98
    assert flickering["temporal_consistency"] < steady["temporal_consistency"] - 0.1
    assert flickering["flicker"] > 0.1


def test_local_edit_keeps_fidelity_outside_and_frozen_motion_is_caught():
    clip = moving_square(v=(0, 2))
    local = clip.copy()
    local[:, 40:, 40:] = [255, 0, 0]  # a red patch, away from the square's path
    m = edit_metrics(clip, local, MetricsConfig())
    assert 0.05 < m["edited_fraction"] < 0.3 and m["motion_region"] == "unedited"
    assert m["fidelity_psnr"] == 100.0 and m["motion_preservation"] == 1.0
    # an "edit" whose square stands still: outside any edited block the motion disagrees
    frozen = np.repeat(clip[:1], len(clip), axis=0)
    f = edit_metrics(clip, frozen, MetricsConfig(diff_threshold=0.9))  # nothing counts as edited
    assert f["flow_epe"] > 0.05 and f["motion_preservation"] < 0.97  # the square's blocks (2 px/frame) disagree
    # noise everywhere: a global edit, motion then compared over the whole frame; fidelity has no pixels
    noise = np.random.default_rng(1).integers(0, 255, clip.shape, dtype=np.uint8)
    g = edit_metrics(clip, noise, MetricsConfig())
    assert g["motion_region"] == "all" and g["fidelity_psnr"] is None and g["fidelity_ssim"] is None


def test_mask_marks_the_edited_region():
    clip = moving_square()
    edit = clip.copy()
    edit[:, :32] = 0  # left half edited...
    mask = np.zeros(clip.shape[:3], np.float32)
    mask[:, :, 32:] = 1  # ...but the mask claims the right half: fidelity is measured on the left
    m = edit_metrics(clip, edit, MetricsConfig(), mask)
    assert m["edited_fraction"] == pytest.approx(0.5) and m["fidelity_psnr"] < 20


def test_single_frame_has_no_temporal_metrics():
    img = moving_square(t=1)
    m = edit_metrics(img, img, MetricsConfig())
    assert m["temporal_consistency"] is None and m["flow_epe"] is None and m["fidelity_psnr"] == 100.0


# --- manifest readers -------------------------------------------------------------------------------


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return str(path)


def test_user_csv_and_jsonl(tmp_path):
    _touch(tmp_path / "a.mp4")
    (tmp_path / "set.csv").write_text(
        "source,instruction,category,id\na.mp4,make it red,color,x1\na.mp4,add a hat,add,\n"
    )
    items = read_manifest(str(tmp_path / "set.csv"))
    assert [(i.item_id, i.category, i.benchmark) for i in items][1] == ("x1", "color", "user")
    assert items[0].source_uri == str(tmp_path / "a.mp4") and len(items[0].item_id) == 12  # id from content
    (tmp_path / "set.jsonl").write_text(json.dumps({"source": "/abs/b.mp4", "instruction": "x", "category": "c"}))
    assert read_manifest(str(tmp_path / "set.jsonl"), "user")[0].source_uri == "/abs/b.mp4"


def test_benchmark_variants(tmp_path):
    # OpenVE-style per-category CSVs: original_video (not "video": that is the edited one), prompt
    ov = tmp_path / "openve"
    _touch(ov / "videos" / "s1.mp4")
    (ov / "background_change.csv").write_text("original_video,video,prompt\ns1.mp4,t1.mp4,make it night\n")
    it = read_manifest(str(ov), "openve")[0]
    assert it.category == "background_change" and it.source_uri == str(ov / "videos" / "s1.mp4")
    assert it.instruction == "make it night"
    # ReCo-style task folders with JSON configs and masks
    rc = tmp_path / "reco"
    _touch(rc / "replace" / "src_videos" / "v1.mp4")
    (rc / "replace" / "replace_data_configs.json").write_text(
        json.dumps([{"id": "r1", "src_video": "v1.mp4", "instruction": "replace the cat", "mask": "v1_mask.mp4"}])
    )
    it = read_manifest(str(rc), "auto")[0]
    assert it.benchmark == "reco" and it.category == "replace" and it.source_uri.endswith("replace/src_videos/v1.mp4")
    assert it.mask_uri.endswith("v1_mask.mp4")
    # VIE-style JSON mapping id -> record
    (tmp_path / "vie.json").write_text(
        json.dumps({"v1": {"video": "/x/1.mp4", "edit_prompt": "p", "category": "style"}})
    )
    it = read_manifest(str(tmp_path / "vie.json"), "vie", benchmark="VIE-Bench")[0]
    assert (it.item_id, it.category, it.benchmark) == ("v1", "style", "VIE-Bench")


def test_manifest_errors_are_clear(tmp_path):
    (tmp_path / "bad.csv").write_text("source,instruction\na.mp4,x\n")
    with pytest.raises(ManifestError, match=r"bad.csv record 1: no category \(tried fields \['category'\]"):
        read_manifest(str(tmp_path / "bad.csv"), "user")
    (tmp_path / "odd.json").write_text(json.dumps([{"clip": "a.mp4", "what": "x"}]))
    with pytest.raises(ManifestError, match="cannot tell the format"):
        read_manifest(str(tmp_path / "odd.json"))
    (tmp_path / "dup.csv").write_text("source,instruction,category,id\na.mp4,x,c,1\nb.mp4,y,c,1\n")
    with pytest.raises(ManifestError, match="item id '1' appears twice"):
        read_manifest(str(tmp_path / "dup.csv"))
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(str(tmp_path / "nope.csv"))
    assert math.isfinite(0.0)


# --- semantic agreement with a (tiny, random) CLIP --------------------------------------------------


def save_tiny_clip(path: str) -> str:
    """A CLIP with both towers in the Hugging Face layout, small enough for CPU tests."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from sama.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=64,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            bos_token_id=0,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(cfg).eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_semantic_scorer_with_a_clip_checkpoint(tmp_path):
    from sama.pipelines.evaluate.metrics import SemanticMetricConfig, SemanticScorer

    scorer = SemanticScorer(SemanticMetricConfig(model=save_tiny_clip(str(tmp_path / "clip")), frames=2, device="cpu"))
    clip = moving_square()
    a = scorer.score("make the cat red", clip)
    assert -1.0 <= a <= 1.0 and a == scorer.score("make the cat red", clip)
    assert a != scorer.score("a dog in the snow", clip)
