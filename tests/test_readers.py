"""Each dataset reader on its look-alike, field-name variants, and clear errors."""

import json
import os

import pytest

from sama import datasets as R
from sama.records import DatasetError


def read_all(reader: R.Reader) -> list[R.RawSample]:
    return [s for u in reader.units() for s in reader.samples(u)]


def build(name: str, root: str, **kw) -> R.Reader:
    cls = R.READERS[name]
    return cls(cls.config_cls(root=root, **kw))


@pytest.mark.parametrize("name", sorted(R.READERS))
def test_reader_lists_lookalike(lookalikes, name):
    samples = read_all(build(name, lookalikes.roots[name]))
    exp = lookalikes.expected[name]
    listed_bad = sum(1 for s in samples if s.reject_reason)
    assert listed_bad == exp.reasons.get("bad_record", 0)
    # everything else reaches the probe stage: kept + the media/instruction/duplicate rejects
    assert len(samples) - listed_bad == exp.kept + sum(exp.reasons.values()) - listed_bad
    task = R.READERS[name].task
    for s in samples:
        assert s.dataset == name and s.task == task
        if not s.reject_reason:
            assert s.target_uri.startswith("/")  # absolute: the manifest works from any directory
            assert (s.source_uri is None) == (task == "t2v")


def test_sample_ids_are_stable_across_storage_locations(lookalikes, tmp_path):
    import shutil

    root = lookalikes.roots["ditto1m"]
    copy = str(tmp_path / "ditto")
    shutil.copytree(root, copy)
    a = [s.row()["sample_id"] for s in read_all(build("ditto1m", root))]
    b = [s.row()["sample_id"] for s in read_all(build("ditto1m", copy))]
    assert a == b and len(set(a)) == len(a)


def test_subsets_and_categories_are_config(lookalikes):
    assert read_all(build("ditto1m", lookalikes.roots["ditto1m"], subsets=["local"]))[0].instruction == "not read"
    with pytest.raises(DatasetError, match="global_style9"):
        build("ditto1m", lookalikes.roots["ditto1m"], subsets=["global_style9"]).units()
    cats = {s.category for s in read_all(build("openve3m", lookalikes.roots["openve3m"], categories=["local_remove"]))}
    assert cats == {"local_remove"}
    assert {s.category for s in read_all(build("reco", lookalikes.roots["reco"], tasks=["style"]))} == {"style"}


def test_csv_field_variants_are_accepted(tmp_path):
    os.makedirs(tmp_path / "csvs_for_DiffSynth")
    (tmp_path / "csvs_for_DiffSynth" / "global_style1.csv").write_text(
        "source_video,target_video,instruction\na.mp4,b.mp4,paint it\n"
    )
    [s] = read_all(build("ditto1m", str(tmp_path)))
    assert s.source_uri.endswith("a.mp4") and s.target_uri.endswith("b.mp4") and s.instruction == "paint it"


def test_missing_field_names_file_and_variants(tmp_path):
    os.makedirs(tmp_path / "csvs_for_DiffSynth")
    path = tmp_path / "csvs_for_DiffSynth" / "global_style1.csv"
    path.write_text("left,right,prompt\na.mp4,b.mp4,x\n")
    with pytest.raises(DatasetError) as e:
        read_all(build("ditto1m", str(tmp_path)))
    assert str(path) in str(e.value) and "src_video" in str(e.value)

    (tmp_path / "train.jsonl").write_text(json.dumps({"clip": "a.mp4", "motion_caption": "x"}) + "\n")
    with pytest.raises(DatasetError, match="video_path"):
        read_all(build("motionbench", str(tmp_path)))


def test_reco_json_as_dict_of_records(tmp_path):
    os.makedirs(tmp_path / "add")
    (tmp_path / "add" / "add_data_configs.json").write_text(
        json.dumps({"s1": {"source_video": "v.mp4", "target_video": "w.mp4", "prompt": "add a dog"}})
    )
    [s] = read_all(build("reco", str(tmp_path), tasks=["add"]))
    assert s.source_uri.endswith("add/src_videos/v.mp4") and s.instruction == "add a dog" and s.category == "add"


def test_koala_span_and_clip_names():
    assert R.parse_span("['0:00:05.005', '0:00:10.010']") == pytest.approx((5.005, 10.01))
    assert R.parse_span("[1.5, 3]") == (1.5, 3.0)
    with pytest.raises(ValueError):
        R.parse_span("[3, 1]")
    assert R.koala_clip_name("a_b-c", 5.005, 10.01) == "a_b-c_5005-10010.mp4"


def test_koala_counts_unfetched_rows(lookalikes):
    r = build("koala36m", lookalikes.roots["koala36m"])
    read_all(r)
    assert r.skipped["clip_not_fetched"] == 1
    r = build("koala36m", lookalikes.roots["koala36m"], require_clips=True)
    assert len(read_all(r)) == len(read_all(build("koala36m", lookalikes.roots["koala36m"]))) + 1


def test_x2edit_reads_tar_members_in_place(lookalikes):
    samples = [s for s in read_all(build("x2edit", lookalikes.roots["x2edit"])) if not s.reject_reason]
    assert samples and all("00000.tar::" in s.target_uri for s in samples)
    assert samples[0].instruction.startswith("Turn the sky purple") and samples[0].category == "color_change"


def test_pairs_are_compared_by_duration_not_frame_count():
    from sama.media import MediaInfo
    from sama.pipelines.ingest.job import IngestConfig, mismatch

    src = MediaInfo("video", 832, 480, 49, 30.0, 49 / 30, "h264")
    same_time = MediaInfo("video", 832, 480, 40, 24.0, 40 / 24, "h264")  # 1.63 s vs 1.67 s: the same clip
    assert mismatch("video_edit", src, same_time, IngestConfig()) is None
    cut = MediaInfo("video", 832, 480, 20, 24.0, 20 / 24, "h264")
    why = mismatch("video_edit", src, cut, IngestConfig())
    assert why == "duration 1.63s (49 frames at 30 fps) vs 0.83s (20 frames at 24 fps)"


def test_a_corrupt_per_sample_file_is_a_bad_record_and_skipped_categories_are_counted(lookalikes):
    gpt = [s for s in read_all(build("gpt_image_edit", lookalikes.roots["gpt_image_edit"])) if s.reject_reason]
    assert [s.reject_reason for s in gpt] == ["bad_record"] and "omniedit_broken.json:file" in gpt[0].reject_detail
    openve = build("openve3m", lookalikes.roots["openve3m"])
    read_all(openve)
    assert openve.skipped == {"category_not_configured:local_remove": 1}


def test_field_names_can_be_mapped_in_config(tmp_path):
    from sama.testing.media import write_video

    root = tmp_path / "openve"
    for name in ("a_src", "a_tgt"):
        write_video(str(root / "clips" / f"{name}.mp4"), frames=9)
    (root / "local_change.csv").write_text(
        "source_path,target_path,edit_prompt,kind\nclips/a_src.mp4,clips/a_tgt.mp4,make it red,local_change\n"
    )
    with pytest.raises(DatasetError, match="source_path"):  # not an accepted name by default
        read_all(build("openve3m", str(root)))
    mapped = build("openve3m", str(root), fields={"src": ["source_path"], "tgt": ["target_path"], "category": ["kind"]})
    [sample] = read_all(mapped)
    assert sample.source_uri.endswith("a_src.mp4") and sample.target_uri.endswith("a_tgt.mp4")
    assert sample.instruction == "make it red" and sample.category == "local_change"
    with pytest.raises(ValueError, match=r"fields.source is not a field .*known: \['src', 'tgt'"):
        build("openve3m", str(root), fields={"source": ["x"]})
    koala = build("koala36m", str(tmp_path), fields={"videoID": ["yt_id"]})
    assert koala.COLS["videoID"][0] == "yt_id" and koala.COLS["timestamp"] == R.KoalaReader.COLS["timestamp"]
