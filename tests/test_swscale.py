"""RGB conversion in place (sama.swscale): PyAV's pixels, never a byte outside the slot, PyAV's
path for what it does not cover."""

from __future__ import annotations

import subprocess

import av
import numpy as np
import pytest
from av.video.reformatter import VideoReformatter

from sama import media
from sama.swscale import rgb_writer

COLOURS = {  # ffmpeg options -> the tags the decoded frames carry
    "untagged": [],
    "bt709": ["-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709"],
    "smpte170m": ["-colorspace", "smpte170m"],
    "full range": ["-color_range", "pc"],
    "yuvj420p": ["-pix_fmt", "yuvj420p"],
}


def clip(path: str, size: str, extra: list[str] = (), frames: int = 4) -> str:
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=8", "-frames:v", str(frames)]
        + ["-c:v", "libx264", "-pix_fmt", "yuv420p", *extra, path],
        check=True,
    )
    return path


def first_frame(path: str):
    with av.open(path) as c:
        return next(c.decode(video=0))


@pytest.mark.parametrize("colour", list(COLOURS))
def test_in_place_conversion_equals_pyav_and_stays_inside_its_slot(tmp_path, colour):
    frame = first_frame(clip(str(tmp_path / "c.mp4"), "336x192", COLOURS[colour]))
    ref = VideoReformatter().reformat(frame, format="rgb24", width=336, height=192, threads=1).to_ndarray()
    write = rgb_writer(frame, 336, 192)
    assert write is not None, (frame.format.name, frame.colorspace, frame.color_range)
    size = 192 * 336 * 3
    buf = np.full(size + 4096, 7, np.uint8)  # the slot, then sentinel bytes a spill would change
    assert write(frame, buf[:size].reshape(192, 336, 3))
    assert np.array_equal(buf[:size].reshape(192, 336, 3), ref)
    assert (buf[size:] == 7).all()


def test_what_it_does_not_cover_goes_to_pyav(tmp_path):
    odd = first_frame(clip(str(tmp_path / "odd.mp4"), "330x190"))
    assert rgb_writer(odd, 330, 190) is None  # a row would spill past the slot (SIMD blocks of 16)
    frame = first_frame(clip(str(tmp_path / "c.mp4"), "336x192"))
    assert rgb_writer(frame, 168, 96) is None  # scaled: PyAV's scaler rounds differently
    full_chroma = first_frame(clip(str(tmp_path / "f.mp4"), "336x192", ["-pix_fmt", "yuv444p"]))
    assert full_chroma.format.name == "yuv444p" and rgb_writer(full_chroma, 336, 192) is None
    write = rgb_writer(frame, 336, 192)
    other = first_frame(clip(str(tmp_path / "o.mp4"), "352x192"))
    assert write(other, np.empty((192, 336, 3), np.uint8)) is False  # another geometry: nothing written
    with pytest.raises(ValueError, match="C-contiguous"):
        write(frame, np.empty((192, 336, 4), np.uint8)[..., :3])


@pytest.mark.parametrize("size", ["336x192", "330x190"])
def test_read_frames_is_the_same_with_and_without_it(tmp_path, monkeypatch, size):
    path = clip(str(tmp_path / "c.mp4"), size, COLOURS["bt709"], frames=12)
    direct = media.read_frames(path, indices=[0, 3, 3, 11])
    monkeypatch.setattr(media, "rgb_writer", lambda *a: None)
    assert np.array_equal(direct, media.read_frames(path, indices=[0, 3, 3, 11]))
