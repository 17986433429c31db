"""Tiny look-alikes of every SAMA dataset, laid out as ``DATASETS.md`` describes.

Each dataset gets ``n`` good samples plus a few broken or odd ones of the kinds
met in the wild (truncated, zero-byte, rotated, odd-sized, one-frame, VFR, VP9,
missing files, malformed rows, duplicates, mismatched pairs). ``expected`` says
what the ingest job must make of them, so tests can check the whole outcome.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections import Counter
from dataclasses import dataclass, field

from sama.testing.media import image_bytes, truncate, write_image, write_video, zero_byte


@dataclass
class Expect:
    kept: int = 0
    reasons: Counter = field(default_factory=Counter)
    not_listed: Counter = field(default_factory=Counter)


@dataclass
class Lookalikes:
    root: str
    roots: dict[str, str] = field(default_factory=dict)
    expected: dict[str, Expect] = field(default_factory=dict)

    def datasets_config(self) -> dict:
        """The ``ingest.datasets`` section of a job config reading these folders."""
        return {name: {"root": root} for name, root in self.roots.items()}


# Koala-36M's CSV header (DATASETS.md), shared by the look-alike, the demo's fetch step and tests
KOALA_COLUMNS = [
    "videoID",
    "url",
    "timestamp",
    "caption",
    "clarity_score",
    "aesthetic_score",
    "motion_score",
    "video_training_suitability_score",
]


def _csv(path: str, header: list[str], rows: list[list]) -> None:
    import csv

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _jsonl(path: str, records: list) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")


def koala(root: str, n: int, odd: bool) -> Expect:
    e = Expect(kept=n)
    rows = []
    for i in range(n):
        vid = f"vid{i:03d}-_x"
        start, end = 1.001 * i, 1.001 * i + 2.5
        rows.append(
            [
                vid,
                f"https://www.youtube.com/watch?v={vid}",
                f"['0:00:{start:06.3f}', '0:00:{end:06.3f}']",
                f"a clip number {i} of a moving square",
                0.9,
                5.1,
                3.2,
                0.8,
            ]
        )
        name = f"{vid}_{round(start * 1000)}-{round(end * 1000)}.mp4"
        write_video(os.path.join(root, "clips", name), frames=17, seed=i, rotation=90 if odd and i == 0 else None)
    if odd:
        rows.append(
            [
                "unfetched01",
                "https://www.youtube.com/watch?v=unfetched01",
                "['0:00:01.000', '0:00:03.000']",
                "never fetched",
                1,
                1,
                1,
                1,
            ]
        )
        rows.append(["badspan", "https://www.youtube.com/watch?v=badspan", "soon", "bad timestamp", 1, 1, 1, 1])
        rows.append(
            ["trunc01", "https://www.youtube.com/watch?v=trunc01", "[0.0, 4.0]", "a truncated clip", 1, 1, 1, 1]
        )
        truncate(write_video(os.path.join(root, "clips", "trunc01_0-4000.mp4"), frames=60, seed=99), 0.4)
        e.reasons.update({"bad_record": 1, "truncated": 1})
        e.not_listed.update({"clip_not_fetched": 1})
    _csv(os.path.join(root, "Koala_36M_1.csv"), KOALA_COLUMNS, rows)
    return e


def motionbench(root: str, n: int, odd: bool) -> Expect:
    e = Expect(kept=n)
    recs: list = []
    for i in range(n):
        write_video(os.path.join(root, "videos", f"mb{i:03d}.mp4"), frames=9 + 4 * i, seed=10 + i, vfr=odd and i == 1)
        recs.append({"video_path": f"videos/mb{i:03d}.mp4", "motion_caption": f"the square moves right, take {i}"})
    if odd:
        zero_byte(os.path.join(root, "videos", "zero.mp4"))
        write_video(os.path.join(root, "videos", "nocap.mp4"), frames=9, seed=7)
        recs += [
            {"video_path": "videos/zero.mp4", "motion_caption": "zero bytes"},
            {"video_path": "videos/nocap.mp4", "motion_caption": "  "},
            "{not json",
        ]
        e.reasons.update({"empty_file": 1, "empty_instruction": 1, "bad_record": 1})
    _jsonl(os.path.join(root, "train.jsonl"), recs)
    return e


def ditto(root: str, n: int, odd: bool) -> Expect:
    e = Expect(kept=n)
    rows = []
    for i in range(n):
        write_video(os.path.join(root, "videos", "source", f"d{i:03d}.mp4"), frames=17, seed=20 + i)
        write_video(os.path.join(root, "videos", "global_style1", f"d{i:03d}.mp4"), frames=17, seed=40 + i)
        rows.append(
            [f"videos/source/d{i:03d}.mp4", f"videos/global_style1/d{i:03d}.mp4", f"make it look like watercolor {i}"]
        )
    if odd:
        write_video(os.path.join(root, "videos", "source", "short.mp4"), frames=17, seed=3)
        write_video(os.path.join(root, "videos", "global_style1", "short.mp4"), frames=5, seed=4)
        rows.append(["videos/source/short.mp4", "videos/global_style1/short.mp4", "frames lost in the edit"])
        e.reasons.update({"source_target_mismatch": 1})
    _csv(os.path.join(root, "csvs_for_DiffSynth", "global_style1.csv"), ["src_video", "tgt_video", "prompt"], rows)
    # A subset SAMA does not use: must not be read with the default config.
    _csv(
        os.path.join(root, "csvs_for_DiffSynth", "local.csv"),
        ["src_video", "tgt_video", "prompt"],
        [["videos/source/d000.mp4", "videos/local/none.mp4", "not read"]],
    )
    return e


def openve(root: str, n: int, odd: bool) -> Expect:
    e = Expect(kept=n)
    rows = []
    for i in range(n):
        codec, ext = ("libvpx-vp9", "webm") if odd and i == 0 else ("libx264", "mp4")
        write_video(
            os.path.join(root, "videos", f"o{i:03d}_src.{ext}"),
            frames=13,
            seed=60 + i,
            codec=codec,
            width=66,
            height=46,
        )
        write_video(
            os.path.join(root, "videos", f"o{i:03d}_tgt.{ext}"),
            frames=13,
            seed=80 + i,
            codec=codec,
            width=66,
            height=46,
        )
        rows.append(
            [
                f"videos/o{i:03d}_src.{ext}",
                f"videos/o{i:03d}_tgt.{ext}",
                f"change the background {i}",
                "background_change",
            ]
        )
    _csv(os.path.join(root, "background_change.csv"), ["original_video", "video", "prompt", "edited_type"], rows)
    if odd:
        _csv(
            os.path.join(root, "global_style.csv"),
            ["original_video", "video", "prompt", "edited_type"],
            [["videos/o000_src.mp4", "videos/missing.mp4", "style it", "global_style"]],
        )
        e.reasons.update({"missing_file": 1})
    # A category SAMA does not use: filtered out by the default config, and counted.
    e.not_listed.update({"category_not_configured:local_remove": 1})
    _csv(
        os.path.join(root, "local_remove.csv"),
        ["original_video", "video", "prompt", "edited_type"],
        [["videos/x.mp4", "videos/y.mp4", "remove it", "local_remove"]],
    )
    return e


def reco(root: str, n: int, odd: bool) -> Expect:
    e = Expect(kept=0)
    for task in ("add", "remove", "replace", "style"):
        recs = []
        for i in range(n):
            src = f"video{i}.mp4"
            tgt = f"video{i}-a_Van_Gogh_style.mp4" if task == "style" else f"video{i}.mp4"
            write_video(os.path.join(root, task, "src_videos", src), frames=9, seed=100 + i)
            write_video(os.path.join(root, task, "tar_videos", tgt), frames=9, seed=120 + i)
            recs.append({"src_video": src, "tar_video": tgt, "instruction": f"{task} something, take {i}"})
            e.kept += 1
        if odd and task == "replace":
            recs.append(dict(recs[0]))  # the same record twice
            with open(os.path.join(root, task, "tar_videos", "garbage.mp4"), "wb") as f:
                f.write(b"\x00\x01not a video" * 64)
            recs.append({"src_video": "video0.mp4", "tar_video": "garbage.mp4", "instruction": "replace the cat"})
            e.reasons.update({"duplicate": 1, "undecodable": 1})
        os.makedirs(os.path.join(root, task), exist_ok=True)
        with open(os.path.join(root, task, f"{task}_data_configs.json"), "w") as f:
            json.dump(recs, f)
    return e


def nhr_edit(root: str, n: int, odd: bool) -> Expect:
    e = Expect(kept=n)
    recs = []
    for i in range(n):
        w, h = (63, 47) if odd and i == 0 else (64, 48)
        write_image(os.path.join(root, "train", "images", "00", f"image_{i:03d}_original.jpg"), w, h, seed=200 + i)
        write_image(os.path.join(root, "train", "images", "00", f"image_{i:03d}_edited_0.jpg"), w, h, seed=220 + i)
        recs.append(
            {
                "original_image": f"images/00/image_{i:03d}_original.jpg",
                "edited_image": f"images/00/image_{i:03d}_edited_0.jpg",
                "instruction": f"add a hat {i}",
                "edit_type": "add",
                "style": "photo",
                "resolution": f"{w}x{h}",
            }
        )
    if odd:
        write_image(os.path.join(root, "train", "images", "00", "image_900_original.jpg"), 64, 48, seed=1)
        truncate(
            write_image(os.path.join(root, "train", "images", "00", "image_900_edited_0.jpg"), 64, 48, seed=2), 0.5
        )
        recs.append(
            {
                "original_image": "images/00/image_900_original.jpg",
                "edited_image": "images/00/image_900_edited_0.jpg",
                "instruction": "truncated target",
                "edit_type": "add",
            }
        )
        e.reasons.update({"truncated": 1})
    _jsonl(os.path.join(root, "train", "metadata.jsonl"), recs)
    return e


def gpt_image_edit(root: str, n: int, odd: bool) -> Expect:
    e = Expect(kept=n)
    task_dir = os.path.join(root, "gpt-edit", "omniedit", "addition")
    recs = []
    for i in range(n):
        write_image(os.path.join(task_dir, "input", f"{i:05d}.png"), 64, 64, seed=300 + i)
        write_image(os.path.join(task_dir, "output", f"{i:05d}.png"), 64, 64, seed=320 + i)
        recs.append(
            {
                "id": f"omni-{i}",
                "dataset_source": "omniedit",
                "task": "addition",
                "input": f"input/{i:05d}.png",
                "output": f"output/{i:05d}.png",
                "instruction": f"add a red ball {i}",
                "instruction_type": "short",
                "input_description": "a gradient",
            }
        )
    if odd:
        write_image(os.path.join(task_dir, "input", "wide.png"), 64, 32, seed=5)
        write_image(os.path.join(task_dir, "output", "wide.png"), 32, 64, seed=6)
        recs.append(
            {
                "id": "omni-wide",
                "task": "addition",
                "input": "input/wide.png",
                "output": "output/wide.png",
                "instruction": "rotated by mistake",
            }
        )
        e.reasons.update({"source_target_mismatch": 1})
    os.makedirs(os.path.join(task_dir, "metadata"), exist_ok=True)
    with open(os.path.join(task_dir, "metadata", "omniedit_addition.json"), "w") as f:
        json.dump(recs, f)
    if odd:  # one corrupt per-sample metadata file among many: a bad_record, not a failed job
        with open(os.path.join(task_dir, "metadata", "omniedit_broken.json"), "w") as f:
            f.write("{not json")
        e.reasons.update({"bad_record": 1})
    return e


def x2edit(root: str, n: int, odd: bool) -> Expect:
    e = Expect(kept=n)
    path = os.path.join(root, "flux", "0", "00000.tar")
    os.makedirs(os.path.dirname(path), exist_ok=True)

    def add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))

    with tarfile.open(path, "w") as tf:
        for i in range(n):
            key = f"{i:08d}"
            add(tf, f"{key}.1.jpg", image_bytes(64, 48, seed=400 + i))
            add(tf, f"{key}.2.jpg", image_bytes(64, 48, seed=420 + i))
            add(tf, f"{key}.txt", f"Turn the sky purple {i}\nscore: 4.5\n".encode())
            add(tf, f"{key}.json", json.dumps({"task": "color_change", "score": 4.5}).encode())
        if odd:
            add(tf, "99999999.1.jpg", image_bytes(64, 48, seed=1))
            add(tf, "99999999.txt", b"target missing\n")
            e.reasons.update({"bad_record": 1})
    return e


def pico_banana(root: str, n: int, odd: bool) -> Expect:
    e = Expect(kept=n)
    recs = []
    for i in range(n):
        write_image(os.path.join(root, "sources", f"oi{i:04d}.jpg"), 64, 48, seed=500 + i)
        write_image(os.path.join(root, "images", "positive-edits", f"e{i:04d}.png"), 64, 48, seed=520 + i)
        recs.append(
            {
                "open_image_input_url": f"https://farm2.staticflickr.com/1/oi{i:04d}.jpg",
                "text": f"make it snowy {i}",
                "output_image": f"images/positive-edits/e{i:04d}.png",
                "edit_type": "weather",
                "summarized_text": "snow",
            }
        )
    if odd:
        write_image(os.path.join(root, "images", "positive-edits", "nosrc.png"), 64, 48, seed=9)
        recs.append(
            {
                "open_image_input_url": "https://farm2.staticflickr.com/1/never_fetched.jpg",
                "text": "x",
                "output_image": "images/positive-edits/nosrc.png",
                "edit_type": "weather",
            }
        )
        e.reasons.update({"missing_file": 1})
    _jsonl(os.path.join(root, "sft.jsonl"), recs)
    return e


MAKERS = {
    "koala36m": ("koala36m", koala),
    "motionbench": ("MotionBenchCaption-train", motionbench),
    "ditto1m": ("Ditto-1M", ditto),
    "openve3m": ("OpenVE-3M", openve),
    "reco": ("ReCo-Data", reco),
    "nhr_edit": ("NHR-Edit", nhr_edit),
    "gpt_image_edit": ("GPT-Image-Edit-1.5M", gpt_image_edit),
    "x2edit": ("X2Edit", x2edit),
    "pico_banana": ("Pico-Banana-400K", pico_banana),
}


def make_lookalikes(root: str, n: int = 2, odd: bool = True, only: list[str] | None = None) -> Lookalikes:
    """Write every dataset's look-alike under ``root`` (local disk)."""
    out = Lookalikes(root)
    for name, (folder, maker) in MAKERS.items():
        if only and name not in only:
            continue
        path = os.path.join(root, folder)
        out.expected[name] = maker(path, n, odd)
        out.roots[name] = path
    return out


def upload_tree(local: str, uri: str) -> None:
    """Copy a local folder to a local path or s3:// prefix (for S3 tests and demos)."""
    from sama import storage

    for d, _, files in os.walk(local):
        for f in files:
            p = os.path.join(d, f)
            storage.write_bytes(storage.join(uri, os.path.relpath(p, local).replace(os.sep, "/")), open(p, "rb").read())
