"""The filter report from tables written here: traceable rows, labelled strips, thresholds, ingest rejects."""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from sama import storage
from sama.pipelines.filter.checks import ChecksConfig
from sama.pipelines.filter.config import ReportConfig
from sama.pipelines.filter.report import frame_strip, histogram_png, write_report
from sama.schemas import MANIFEST, REJECTS, VERDICTS
from sama.testing.media import write_video


def _verdict(i: int, src: str, tgt: str, verdict: str, reasons: list[str], **metrics) -> dict:
    return {
        "sample_id": f"a-{i}",
        "dataset": "alpha",
        "task": "video_edit",
        "verdict": verdict,
        "reasons": reasons,
        "detail": f"{tgt}: changed blocks 0.1% < 0.5%" if reasons else None,
        "judge_model": "none:cheap-checks-only",
        "source_uri": src,
        "target_uri": tgt,
        "config_digest": "d",
        **metrics,
    }


def test_report_rows_are_traceable_and_every_reason_counted(tmp_path):
    src = write_video(str(tmp_path / "src.mp4"), frames=9, width=48, height=96)  # portrait
    tgt = write_video(str(tmp_path / "tgt.mp4"), frames=9, width=48, height=96, seed=1)
    drops = [_verdict(i, src, tgt, "drop", ["unchanged_target"], edit_diff=0.004, motion=0.02) for i in range(6)]
    rows = drops + [_verdict(6, src, tgt, "keep", [], edit_diff=0.2, motion=0.03)]
    out, ingest = str(tmp_path / "filter"), str(tmp_path / "ingest")
    storage.write_parquet(f"{out}/verdicts/alpha/p0.parquet", VERDICTS.table(rows))
    manifest = [{**r, "category": None, "instruction": f"make the hat red #{i}"} for i, r in enumerate(rows)]
    storage.write_parquet(f"{ingest}/manifest/alpha/p0.parquet", MANIFEST.table(manifest))
    bad = [  # a dataset whose every row failed ingest still has its section
        {"sample_id": f"b-{i}", "dataset": "beta", "stage": "ingest", "reason": "bad_record",
         "detail": f"/data/beta/meta/{i}.json: line 1: not JSON", "target_uri": f"/data/beta/{i}.mp4"}
        for i in range(2)
    ]  # fmt: skip
    storage.write_parquet(f"{ingest}/rejects/beta/p0.parquet", REJECTS.table(bad))

    index = write_report(out, ReportConfig(examples=4), None, ChecksConfig(), f"{ingest}/manifest")
    page = open(index).read()
    assert "drop: unchanged_target <span class=n>(6)</span>" in page
    assert "all 6 samples" in page and "<details>" in page  # more than the 4 drawn, all listed
    for text in ("alpha / a-0", "make the hat red #5", src, tgt, "changed blocks 0.1%", "edit_diff=0.004"):
        assert text in page, text
    assert "id='beta'" in page and "ingest rejected: bad_record <span class=n>(2)</span>" in page
    assert "/data/beta/meta/1.json: line 1: not JSON" in page
    strips = sorted(f for f in os.listdir(os.path.dirname(index)) if f.startswith("strip-"))
    assert len(strips) == 4 + 1 + 2  # 4 of the 6 drops, the kept one, both ingest rejects
    counts = open(os.path.join(os.path.dirname(index), "counts.json")).read()
    assert '"beta": {"ingest_rejected": 2}' in counts


def test_strips_label_both_sides_and_keep_portrait_portrait(tmp_path):
    portrait = write_video(str(tmp_path / "p.mp4"), frames=9, width=48, height=96)
    landscape = write_video(str(tmp_path / "l.mp4"), frames=9, width=96, height=48)
    p = Image.open(io.BytesIO(frame_strip(portrait, portrait, n_frames=4, thumb=96)))
    q = Image.open(io.BytesIO(frame_strip(landscape, landscape, n_frames=4, thumb=96)))
    assert p.size[1] == 14 + 96 and q.size[1] == 14 + 48  # frames as tall as they are
    assert p.size[0] < q.size[0]
    # Labels: dark text pixels in the 14-pixel band above each side.
    band = np.asarray(p.convert("L"))[:14]
    assert (band[:, :40] < 128).any() and (band[:, p.size[0] // 2 : p.size[0] // 2 + 40] < 128).any()


def test_histograms_mark_their_thresholds():
    png = histogram_png([0.01, 0.02, 0.03, 0.05], "motion", [("min", 0.006)], size=(360, 180))
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    red = (img[..., 0] > 180) & (img[..., 1] < 80) & (img[..., 2] < 80)
    cols = np.nonzero(red[40:150].sum(axis=0) > 50)[0]  # a vertical red line
    assert len(cols) and cols.min() < 60  # at the left: 0.006 is below every value
