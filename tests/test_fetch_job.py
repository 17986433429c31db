"""The fetch job on the shared Ray cluster against a local media server: Koala-36M through the
yt-dlp path (url_template), Pico-Banana over HTTP and from a local tar, reruns that make no
request, resume after a kill, and fetch -> ingest reading the fetched files."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import pytest

from conftest import REPO
from sama import storage
from sama.jobs import launcher
from sama.media import probe
from sama.pipelines.fetch.testserver import MediaServer
from sama.schemas import FETCH, MANIFEST, read_table
from sama.testing.lookalikes import KOALA_COLUMNS
from sama.testing.media import image_bytes, write_image, write_video

JOB = os.path.join(REPO, "jobs", "fetch.yaml")
INGEST = os.path.join(REPO, "jobs", "ingest.yaml")
FAST = [
    "fetch.http.timeout=1.0",
    "fetch.http.max_retries=2",
    "fetch.http.backoff_base=0.01",
    "fetch.hosts.default.rate=0",
    "fetch.hosts.default.concurrency=8",
]


@pytest.fixture
def server():
    with MediaServer(slow_s=2.5) as s:
        yield s


def koala_data(root: str, server: MediaServer, tmp: str) -> None:
    """Two videos (one served only after a 500), one removed (404), a bad row, a span past the end."""
    for vid, seed in (("vidA", 1), ("vidB", 2)):
        path = write_video(os.path.join(tmp, f"{vid}.mp4"), frames=64, fps=8, seed=seed)  # 8 s each
        server.add(f"/yt/{vid}.mp4", open(path, "rb").read(), ["500", "ok"] if vid == "vidB" else None)
    rows = [
        ["vidA", "[1.0, 3.5]"],
        ["vidA", "['0:00:04.000', '0:00:06.000']"],
        ["vidB", "[0.5, 2.5]"],
        ["vidGone", "[0.0, 2.0]"],
        ["vidA", "soon"],
        ["vidB", "[7.0, 12.0]"],
    ]
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "Koala_36M_1.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(KOALA_COLUMNS)
        for vid, ts in rows:
            w.writerow([vid, f"https://www.youtube.com/watch?v={vid}", ts, f"a square moving in {vid}", 0.9, 5, 3, 0.8])


def pico_data(root: str, server: MediaServer, tars: str) -> dict[str, bytes]:
    """Sources over HTTP (one 404, one shared by two edits) and one only in a local Open Images tar."""
    served = {f"oi{i}.jpg": image_bytes(64, 48, seed=40 + i) for i in range(3)}
    for name, data in served.items():
        server.add(f"/flickr/{name}", data)
    in_tar = image_bytes(64, 48, seed=77)
    os.makedirs(tars, exist_ok=True)
    with tarfile.open(os.path.join(tars, "train_0.tar"), "w") as tf:
        info = tarfile.TarInfo("train_0/oitar.jpg")
        info.size = len(in_tar)
        tf.addfile(info, io.BytesIO(in_tar))
    recs = []
    for i, name in enumerate([*served, "oi0.jpg", "missing.jpg", "oitar.jpg"]):
        write_image(os.path.join(root, "images", f"e{i}.png"), 64, 48, seed=90 + i)
        recs.append(
            {
                "open_image_input_url": server.url(f"/flickr/{name}") + "?v=1",
                "text": f"make it snowy {i}",
                "output_image": f"images/e{i}.png",
                "edit_type": "weather",
            }
        )
    with open(os.path.join(root, "sft.jsonl"), "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in recs) + "{not json\n")
    return {**served, "oitar.jpg": in_tar}


def test_fetch_then_ingest_end_to_end(ray_cluster, server, tmp_path):
    koala, pico, out = str(tmp_path / "koala"), str(tmp_path / "pico"), str(tmp_path / "fetch")
    koala_data(koala, server, str(tmp_path / "src"))
    images = pico_data(pico, server, str(tmp_path / "openimages"))
    args = [
        f"output={out}",
        f"fetch.koala.root={koala}",
        f"fetch.pico.root={pico}",
        *FAST,
        f"fetch.koala.url_template={server.url('/yt/{video_id}.mp4')}",
        "fetch.koala.downloader=ytdlp",
        f"fetch.pico.open_images_tars={tmp_path / 'openimages'}",
    ]
    summary = launcher.run(JOB, args)

    table = {r["id"]: r for r in read_table(storage.join(out, "fetch"), FETCH).to_pylist()}
    status = {k: (r["status"], r["error"]) for k, r in table.items()}
    assert status == {
        "vidA_1000-3500.mp4": ("ok", None),
        "vidA_4000-6000.mp4": ("ok", None),
        "vidB_500-2500.mp4": ("ok", None),
        "vidGone_0-2000.mp4": ("failed", "http_404"),
        "Koala_36M_1.csv:6": ("failed", "bad_record"),
        "vidB_7000-12000.mp4": ("failed", "span_out_of_range"),
        "oi0.jpg": ("ok", None),
        "oi1.jpg": ("ok", None),
        "oi2.jpg": ("ok", None),
        "oitar.jpg": ("ok", None),
        "missing.jpg": ("failed", "http_404"),
        "sft.jsonl:7": ("failed", "bad_record"),
    }
    assert table["vidB_500-2500.mp4"]["attempts"] >= 2 and table["oitar.jpg"]["method"] == "tar"
    assert (
        table["vidA_1000-3500.mp4"]["method"] == "ytdlp" and "youtube.com" in table["vidA_1000-3500.mp4"]["source_url"]
    )
    assert server.hits["/flickr/oitar.jpg"] == 0 and server.hits["/flickr/oi0.jpg"] == 1  # shared source fetched once
    for k, r in table.items():
        if r["status"] == "ok":
            data = storage.read_bytes(r["output_uri"])
            assert r["sha256"] == hashlib.sha256(data).hexdigest() and r["bytes"] == len(data)
        if k.endswith(".mp4") and r["status"] == "ok":
            assert abs(probe(r["output_uri"]).duration - (r["end"] - r["start"])) <= 0.13
    for name, data in images.items():
        assert storage.read_bytes(os.path.join(pico, "sources", name)) == data
    assert summary["datasets"]["koala36m"] == {
        "ok": 3,
        "failed": 3,
        "bytes": summary["datasets"]["koala36m"]["bytes"],
        "reasons": {"bad_record": 1, "http_404": 1, "span_out_of_range": 1},
    }
    assert not [f for f in os.listdir(os.path.join(koala, "clips")) if not f.endswith(".mp4")]  # no partials

    # a rerun makes no request: every part is finished (its failures are permanent)
    hits = dict(server.hits)
    again = launcher.run(JOB, args)
    assert dict(server.hits) == hits and again["parts_run"] == 0
    # ...and a transient failure is retried on the next run, only it
    server.script("/yt/vidGone.mp4", ["503"])
    storage.delete(os.path.join(koala, "clips", "vidA_4000-6000.mp4"))
    launcher.run(JOB, [*args, "fetch.recheck=true", "fetch.retry_failed=[http_404]"])
    assert server.hits["/yt/vidA.mp4"] > hits["/yt/vidA.mp4"]  # the deleted clip was re-fetched
    assert server.hits["/flickr/oi1.jpg"] == 1
    table = {r["id"]: r for r in read_table(storage.join(out, "fetch"), FETCH).to_pylist()}
    assert table["vidGone_0-2000.mp4"]["error"] == "http_5xx" and table["vidA_4000-6000.mp4"]["status"] == "ok"

    # ingest reads the fetched files directly: every fetched row is kept
    ing = str(tmp_path / "ingest")
    launcher.run(
        INGEST,
        [
            f"output={ing}",
            "ingest.datasets=null",
            f"ingest.datasets.koala36m.root={koala}",
            f"ingest.datasets.pico_banana.root={pico}",
        ],
    )
    manifest = read_table(storage.join(ing, "manifest"), MANIFEST).to_pylist()
    clips = sorted(os.path.basename(r["target_uri"]) for r in manifest if r["dataset"] == "koala36m")
    assert clips == ["vidA_1000-3500.mp4", "vidA_4000-6000.mp4", "vidB_500-2500.mp4"]
    sources = sorted(os.path.basename(r["source_uri"]) for r in manifest if r["dataset"] == "pico_banana")
    assert sources == ["oi0.jpg", "oi0.jpg", "oi1.jpg", "oi2.jpg", "oitar.jpg"]
    ingest_summary = json.loads(storage.read_text(storage.join(ing, "summary.json")))
    assert ingest_summary["datasets"]["koala36m"]["not_listed"] == {
        "clip_not_fetched": 2
    }  # the removed video, the bad span


def test_fetch_resumes_after_kill(ray_cluster, server, tmp_path):
    pico, out = str(tmp_path / "pico"), str(tmp_path / "fetch")
    n = 16
    recs = []
    for i in range(n):
        server.add(f"/p/k{i:02d}.jpg", image_bytes(64, 48, seed=i))
        recs.append({"open_image_input_url": server.url(f"/p/k{i:02d}.jpg"), "text": "x", "output_image": f"e{i}.png"})
    os.makedirs(pico)
    with open(os.path.join(pico, "sft.jsonl"), "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in recs))
    server.delay = 0.4
    args = [
        f"output={out}",
        "fetch.koala=null",
        f"fetch.pico.root={pico}",
        "fetch.shard_size=2",
        "fetch.threads=1",
        "fetch.hosts.default.concurrency=1",
        "fetch.hosts.default.rate=0",
    ]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sama.jobs.cli", "run", JOB, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    sources = os.path.join(pico, "sources")
    deadline = time.time() + 120
    while time.time() < deadline and len(storage.list_files(sources)) < 5:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {os.path.basename(p): os.path.getmtime(p) for p in storage.list_files(sources)}
    assert 5 <= len(before) < n, "the kill should land midway"

    server.delay = 0.0
    summary = launcher.run(JOB, args)
    table = read_table(storage.join(out, "fetch"), FETCH).to_pylist()
    assert len(table) == n and all(r["status"] == "ok" for r in table)
    assert summary["datasets"]["pico_banana"]["ok"] == n
    for name, mtime in before.items():
        assert server.hits[f"/p/{name}"] == 1  # written before the kill: never fetched again
        assert os.path.getmtime(os.path.join(sources, name)) == mtime
    # at most the downloads in flight at the kill (2 tasks x 1 thread) were made twice
    assert sum(server.hits.values()) <= n + 2
