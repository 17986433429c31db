import shutil

import pytest

from sama import storage
from sama.media import MediaError, probe
from sama.testing import media as m


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    p = lambda name: str(d / name)  # noqa: E731
    m.write_video(p("ok.mp4"), frames=17, fps=8)
    m.write_video(p("rot.mp4"), frames=9, width=64, height=48, rotation=90)
    m.write_video(p("vfr.mp4"), frames=17, vfr=True)
    m.write_video(p("vp9.webm"), frames=9, codec="libvpx-vp9")
    m.write_video(p("one.mp4"), frames=1)
    m.write_video(p("odd.mp4"), width=66, height=34)
    m.write_video(p("mpeg4.mp4"), codec="mpeg4")
    m.truncate(m.write_video(p("cut.mp4"), frames=80), 0.5)
    m.truncate(m.write_video(p("cut_faststart.mp4"), frames=80, faststart=True), 0.5)
    m.zero_byte(p("zero.mp4"))
    open(p("garbage.mp4"), "wb").write(b"nope" * 100)
    m.write_image(p("img.jpg"), 40, 30)
    m.write_image(p("img.png"), 40, 30)
    shutil.copy(p("img.jpg"), p("cut.jpg"))
    m.truncate(p("cut.jpg"), 0.5)
    return d


@pytest.mark.parametrize(
    "name,kind,w,h,frames,codec",
    [
        ("ok.mp4", "video", 64, 48, 17, "h264"),
        ("rot.mp4", "video", 48, 64, 9, "h264"),  # display size after rotation
        ("vfr.mp4", "video", 64, 48, 17, "h264"),
        ("vp9.webm", "video", 64, 48, 9, "vp9"),
        ("one.mp4", "video", 64, 48, 1, "h264"),
        ("odd.mp4", "video", 66, 34, 17, "h264"),
        ("img.jpg", "image", 40, 30, 1, "jpeg"),
        ("img.png", "image", 40, 30, 1, "png"),
    ],
)
def test_probe_reads_facts(files, name, kind, w, h, frames, codec):
    info = probe(str(files / name))
    assert (info.kind, info.width, info.height, info.frames, info.codec) == (kind, w, h, frames, codec)


def test_probe_fps_and_duration(files):
    info = probe(str(files / "ok.mp4"))
    assert info.fps == pytest.approx(8.0) and info.duration == pytest.approx(17 / 8, abs=0.15)


@pytest.mark.parametrize(
    "name,reason",
    [
        ("cut.mp4", "truncated"),
        ("cut_faststart.mp4", "truncated"),
        ("zero.mp4", "empty_file"),
        ("garbage.mp4", "undecodable"),
        ("cut.jpg", "truncated"),
        ("missing.mp4", "missing_file"),
    ],
)
def test_probe_rejects_broken_files_naming_them(files, name, reason):
    with pytest.raises(MediaError) as e:
        probe(str(files / name))
    assert e.value.reason == reason and name in e.value.detail


def test_codec_allow_list(files):
    from sama.media import ProbeConfig

    with pytest.raises(MediaError) as e:
        probe(str(files / "mpeg4.mp4"), ProbeConfig(video_codecs=["h264"]))
    assert e.value.reason == "unsupported_codec" and "mpeg4" in e.value.detail


def test_probe_over_s3(files, s3_bucket):
    uri = storage.join(s3_bucket, "v", "ok.mp4")
    storage.write_bytes(uri, (files / "ok.mp4").read_bytes())
    assert probe(uri).frames == 17


class _Counting:
    """A container that counts the frames it decodes and the seeks it makes."""

    def __init__(self, container):
        self.c, self.decoded, self.seeks = container, 0, 0

    def seek(self, *a, **k):
        self.seeks += 1
        return self.c.seek(*a, **k)

    def decode(self, *a, **k):
        for frame in self.c.decode(*a, **k):
            self.decoded += 1
            yield frame


@pytest.mark.parametrize("vfr", [False, True])
def test_sparse_frames_far_apart_are_reached_by_keyframe_seeks_and_stay_exact(tmp_path, monkeypatch, vfr):
    """8 frames of a 400-frame clip with a keyframe every 25: the same pixels as decoding every
    frame, with far fewer frames decoded; a variable-frame-rate file never seeks (timestamps do not
    give the index there) and still gets the exact frames."""
    import av

    from sama import media
    from sama.testing.media import write_video

    clip = write_video(str(tmp_path / "long.mp4"), frames=400, width=64, height=48, fps=25, gop=25, vfr=vfr)
    wanted = media.sample_indices(400, 8)

    def decode(gap: int) -> tuple[list[tuple[int, bytes]], _Counting]:
        monkeypatch.setattr(media, "SEEK_GAP", gap)
        with av.open(clip) as c:
            counting = _Counting(c)
            got = [
                (i, f.to_ndarray(format="rgb24").tobytes())
                for i, f in media._wanted_frames(counting, c.streams.video[0], set(wanted))
            ]
        return got, counting

    sequential, seq = decode(10**9)
    sparse, sp = decode(48)
    assert [i for i, _ in sparse] == wanted and sparse == sequential
    assert seq.seeks == 0 and seq.decoded == wanted[-1] + 1
    if vfr:
        assert sp.seeks == 0
    else:
        assert sp.seeks >= 4 and sp.decoded < seq.decoded / 2, (sp.seeks, sp.decoded)
    monkeypatch.setattr(media, "SEEK_GAP", 48)
    assert media.read_frames(clip, n=8).shape == (8, 48, 64, 3)


def test_frames_converted_beside_decoding_equal_a_plain_pyav_loop(tmp_path, monkeypatch):
    """Conversion on worker threads into one preallocated array: the same pixels and order as
    converting each decoded frame in turn, repeats filled, indices past the end dropped, scaled
    frames too, and a small in-flight bound changes nothing."""
    import av
    import numpy as np

    from sama import media
    from sama.testing.media import write_video

    clip = write_video(str(tmp_path / "c.mp4"), frames=30, width=96, height=64, fps=8)
    with av.open(clip) as c:
        plain = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
        c.seek(0)
        small = np.stack([f.reformat(width=48, height=32, format="rgb24").to_ndarray() for f in c.decode(video=0)])
    order = [5, 5, 0, 29, 12, 12, 12, 40]  # repeats, out of order, one past the end
    monkeypatch.setattr(media, "IN_FLIGHT", 1)
    got = media.read_frames(clip, indices=order)
    assert np.array_equal(got, plain[[5, 5, 0, 29, 12, 12, 12]])
    assert np.array_equal(media.read_frames(clip, indices=list(range(30))), plain)
    assert np.array_equal(media.read_frames(clip, indices=[3, 7], max_side=48), small[[3, 7]])
