"""The fetch pieces against a scriptable media server on 127.0.0.1 (no Ray): downloads,
retries, failure reasons, cuts, yt-dlp routing, per-host limits."""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np
import pytest

from sama import storage
from sama.media import probe, read_frames
from sama.pipelines.fetch.cut import CutConfig
from sama.pipelines.fetch.download import FetchError, HttpConfig, with_retries
from sama.pipelines.fetch.fetcher import FetchConfig, Fetcher
from sama.pipelines.fetch.limits import Gate, HostGate, HostLimit, HostLimitsConfig
from sama.pipelines.fetch.sources import KoalaFetchConfig, KoalaSource
from sama.pipelines.fetch.testserver import MediaServer
from sama.pipelines.fetch.ytdlp import YtDlpConfig, classify, route
from sama.testing.media import image_bytes, write_video

FAST = HttpConfig(timeout=1.0, max_retries=2, backoff_base=0.01, backoff_max=0.05)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> tuple[str, bytes]:
    """10 s at 8 fps, one keyframe (x264's default GOP is longer): cuts must decode into the GOP."""
    path = write_video(str(tmp_path_factory.mktemp("v") / "v.mp4"), frames=80, fps=8, width=64, height=48, seed=3)
    return path, open(path, "rb").read()


@pytest.fixture
def server():
    with MediaServer(slow_s=2.5) as s:
        yield s


def item(
    out: str,
    id: str,
    url: str,
    kind: str = "image",
    group: str | None = None,
    start=None,
    end=None,
    method: str = "http",
) -> dict:
    return {
        "id": id,
        "dataset": "t",
        "group": group or url,
        "kind": kind,
        "source_url": url,
        "fetch_url": url,
        "method": method,
        "output_uri": storage.join(out, id),
        "start": start,
        "end": end,
        "row": "meta.jsonl:1",
        "error": None,
        "detail": None,
    }


def fetcher(**kw) -> Fetcher:
    cfg = FetchConfig(http=kw.pop("http", FAST), hosts=HostLimitsConfig(default=HostLimit(concurrency=8, rate=0)), **kw)
    return Fetcher(cfg, Gate(HostGate(cfg.hosts)))


def by_id(rows: list[dict]) -> dict[str, dict]:
    return {r["id"]: r for r in rows}


def test_routing_picks_ytdlp_for_video_sites_and_http_otherwise(tmp_path):
    hosts = YtDlpConfig().hosts
    for url in ("https://www.youtube.com/watch?v=abc", "https://youtu.be/abc", "https://m.youtube.com/watch?v=x"):
        assert route(url, hosts) == "ytdlp"
    for url in ("http://127.0.0.1:8000/abc.mp4", "https://farm2.staticflickr.com/1/x.jpg", "https://notyoutube.com/v"):
        assert route(url, hosts) == "http"
    (tmp_path / "Koala_36M_1.csv").write_text(
        'videoID,url,timestamp,caption\nabc,https://www.youtube.com/watch?v=abc,"[1.0, 3.5]",c\n'
        "xyz,https://www.youtube.com/watch?v=xyz,soon,c\n"
    )
    unit = str(tmp_path / "Koala_36M_1.csv")
    auto = list(KoalaSource(KoalaFetchConfig(root=str(tmp_path)), hosts).items(unit))
    assert auto[0]["method"] == "ytdlp" and auto[0]["id"] == "abc_1000-3500.mp4"
    assert auto[0]["output_uri"] == os.path.join(str(tmp_path), "clips", "abc_1000-3500.mp4")
    assert auto[1]["error"] == "bad_record" and f"{unit}:3" in auto[1]["detail"]
    mirror = KoalaFetchConfig(root=str(tmp_path), url_template="http://127.0.0.1:1/{video_id}.mp4")
    assert next(KoalaSource(mirror, hosts).items(unit))["method"] == "http"
    mirror.downloader = "ytdlp"
    it = next(KoalaSource(mirror, hosts).items(unit))
    assert (it["method"], it["fetch_url"], it["source_url"]) == (
        "ytdlp",
        "http://127.0.0.1:1/abc.mp4",
        "https://www.youtube.com/watch?v=abc",
    )


def test_failures_are_recorded_with_reasons_and_only_transient_ones_retried(server, tmp_path):
    jpg = image_bytes(64, 48, seed=1)
    server.add("/ok.jpg", jpg)
    server.add("/flaky.jpg", jpg, ["500", "500", "ok"])  # two 5xx, then success
    server.add("/down.jpg", jpg, ["503"])  # 5xx every time
    server.add("/missing.jpg", jpg, ["404"])
    server.add("/forbidden.jpg", jpg, ["403"])
    server.add("/slow.jpg", jpg, ["slow"])
    server.add("/short.jpg", jpg, ["truncate"])
    server.add("/gone.jpg", jpg, ["redirect:/photo_unavailable.png"])
    server.add("/photo_unavailable.png", image_bytes(fmt="PNG"))
    server.add("/big.jpg", os.urandom(5000))
    server.add("/text.jpg", b"<html>not an image</html>")
    out = str(tmp_path / "out")
    names = ["ok", "flaky", "down", "missing", "forbidden", "slow", "short", "gone", "big", "text"]
    f = fetcher(http=HttpConfig(timeout=1.0, max_retries=2, backoff_base=0.01, max_bytes=4000))
    rows = by_id(f.run([item(out, f"{n}.jpg", server.url(f"/{n}.jpg")) for n in names]))

    want = {
        "ok": None,
        "flaky": None,
        "down": "http_5xx",
        "missing": "http_404",
        "forbidden": "http_403",
        "slow": "timeout",
        "short": "truncated",
        "gone": "removed",
        "big": "too_large",
        "text": "undecodable",
    }
    assert {n: rows[f"{n}.jpg"]["error"] for n in names} == want
    assert all(rows[f"{n}.jpg"]["status"] == ("ok" if want[n] is None else "failed") for n in names)
    assert all(server.url(f"/{n}.jpg") in rows[f"{n}.jpg"]["detail"] for n in names if want[n])  # names the URL
    # retried: 5xx, timeouts, short bodies (3 attempts = max_retries + 1); never 403 / 404 / too large
    hits = {n: server.hits[f"/{n}.jpg"] for n in names}
    assert hits == {
        "ok": 1,
        "flaky": 3,
        "down": 3,
        "missing": 1,
        "forbidden": 1,
        "slow": 3,
        "short": 3,
        "gone": 1,
        "big": 1,
        "text": 1,
    }
    assert rows["flaky.jpg"]["attempts"] == 3
    for n in ("ok", "flaky"):
        r = rows[f"{n}.jpg"]
        assert (
            r["sha256"]
            == hashlib.sha256(jpg).hexdigest()
            == hashlib.sha256(storage.read_bytes(r["output_uri"])).hexdigest()
        )
        assert r["bytes"] == len(jpg)
    # a failure never leaves a file (or a partial one) behind
    assert sorted(os.listdir(out)) == ["flaky.jpg", "ok.jpg"]


def test_retry_after_is_honoured_and_backoff_is_bounded():
    waits: list[float] = []
    calls = iter([FetchError("http_429", "x", retry_after=7.0), FetchError("http_5xx", "x"), "done"])

    def attempt():
        v = next(calls)
        if isinstance(v, Exception):
            raise v
        return v

    from contextlib import nullcontext

    cfg = HttpConfig(max_retries=3, backoff_base=1.0, backoff_max=1.5, max_retry_after=5.0)
    assert with_retries(attempt, cfg, nullcontext, sleep=waits.append) == ("done", 3)
    assert waits[0] == 5.0 and 0 <= waits[1] <= 1.5  # Retry-After capped; jittered backoff under backoff_max
    with pytest.raises(FetchError) as e:
        with_retries(lambda: (_ for _ in ()).throw(FetchError("http_404", "x")), cfg, nullcontext, sleep=waits.append)
    assert e.value.attempts == 1


def test_spans_are_cut_frame_accurately_to_their_duration(server, video, tmp_path):
    path, data = video
    server.add("/v.mp4", data)
    out = str(tmp_path / "clips")
    url = server.url("/v.mp4")
    spans = {
        "v_1250-3750.mp4": (1.25, 3.75),
        "v_0-2000.mp4": (0.0, 2.0),
        "v_8000-12000.mp4": (8.0, 12.0),
        "v_2000-9000.mp4": (2.0, 9.0),
    }
    f = fetcher(cut=CutConfig(max_clip_seconds=5.0))
    rows = by_id(f.run([item(out, k, url, "clip", "v", s, e) for k, (s, e) in spans.items()]))
    assert server.hits["/v.mp4"] == 1  # one download for every span of a video
    assert rows["v_8000-12000.mp4"]["error"] == "span_out_of_range"
    assert rows["v_2000-9000.mp4"]["error"] == "too_long"
    src = read_frames(path, indices=list(range(80)))
    for k in ("v_1250-3750.mp4", "v_0-2000.mp4"):
        r = rows[k]
        s, e = spans[k]
        info = probe(r["output_uri"])
        assert r["status"] == "ok" and info.codec == "h264"
        assert abs(info.duration - (e - s)) <= 1 / 8 + 1e-3 and abs(r["duration"] - info.duration) < 1e-3
        assert info.frames == round((e - s) * 8)
        assert r["sha256"] == hashlib.sha256(storage.read_bytes(r["output_uri"])).hexdigest()
        # frame accuracy: the clip's first frame is the source frame at `start`, not a keyframe before it
        first = read_frames(r["output_uri"], indices=[0])[0].astype(float)
        errs = [np.abs(first - src[i]).mean() for i in range(80)]
        assert int(np.argmin(errs)) == round(s * 8)


def test_ytdlp_path_downloads_from_the_local_server(server, video, tmp_path):
    server.add("/yt/abc.mp4", video[1], ["500", "ok"])
    out = str(tmp_path / "clips")
    rows = by_id(
        fetcher().run(
            [
                item(out, "abc_1000-3000.mp4", server.url("/yt/abc.mp4"), "clip", "abc", 1.0, 3.0, method="ytdlp"),
                item(out, "gone_0-1000.mp4", server.url("/yt/gone.mp4"), "clip", "gone", 0.0, 1.0, method="ytdlp"),
            ]
        )
    )
    ok = rows["abc_1000-3000.mp4"]
    assert ok["status"] == "ok" and ok["attempts"] == 2 and abs(probe(ok["output_uri"]).duration - 2.0) <= 0.13
    assert rows["gone_0-1000.mp4"]["error"] == "http_404" and server.hits["/yt/gone.mp4"] >= 1
    assert sorted(os.listdir(out)) == ["abc_1000-3000.mp4"]


def test_ytdlp_messages_map_to_reasons():
    cases = {
        "ERROR: [youtube] abc: Video unavailable. This video has been removed by the uploader": "removed",
        "ERROR: [youtube] abc: Private video. Sign in if you've been granted access": "removed",
        "ERROR: [youtube] abc: The uploader has not made this video available in your country": "geo_blocked",
        "ERROR: [youtube] abc: Sign in to confirm your age. This video may be inappropriate": "login_required",
        "ERROR: unable to download video data: HTTP Error 403: Forbidden": "http_403",
        "ERROR: Unable to download webpage: HTTP Error 429: Too Many Requests": "http_429",
        "ERROR: Unable to download webpage: <urlopen error timed out>": "timeout",
        "ERROR: something new": "download_failed",
    }
    assert {m: classify(m) for m in cases} == cases


def test_per_host_concurrency_and_rate_limits_hold(server, tmp_path):
    jpg = image_bytes()
    for i in range(8):
        server.add(f"/c{i}.jpg", jpg)
    server.delay = 0.2
    out = str(tmp_path / "out")
    gate = HostGate(HostLimitsConfig(default=HostLimit(concurrency=2, rate=0)))
    f = Fetcher(FetchConfig(threads=8, http=FAST), Gate(gate))
    rows = f.run([item(out, f"c{i}.jpg", server.url(f"/c{i}.jpg")) for i in range(8)])
    assert all(r["status"] == "ok" for r in rows) and gate.peak() == {"127.0.0.1": 2}

    server.delay = 0.0
    gate = HostGate(HostLimitsConfig(default=HostLimit(concurrency=8, rate=10.0)))
    t0 = time.monotonic()
    Fetcher(FetchConfig(threads=8, http=FAST), Gate(gate)).run(
        [item(str(tmp_path / "out2"), f"c{i}.jpg", server.url(f"/c{i}.jpg")) for i in range(6)]
    )
    assert time.monotonic() - t0 >= 0.5  # 6 starts at 10/s: the last starts >= 0.5 s after the first
    assert HostLimitsConfig(hosts={"youtube.com": HostLimit(1, 0.5)}).limit("www.youtube.com").concurrency == 1


def test_outputs_on_s3_and_rerun_makes_no_request(server, s3_bucket):
    jpg = image_bytes(seed=5)
    server.add("/s3.jpg", jpg)
    it = item(f"{s3_bucket}/sources", "s3.jpg", server.url("/s3.jpg"))
    f = fetcher()
    row = f.run([it])[0]
    assert row["status"] == "ok" and storage.read_bytes(f"{s3_bucket}/sources/s3.jpg") == jpg
    again = fetcher()
    assert again.run([it], {"s3.jpg": row})[0] is row and again.requests == 0
    reused = fetcher().run([it])[0]  # no table row (a killed run): recorded from storage, not fetched
    assert reused["status"] == "ok" and reused["attempts"] == 0 and reused["sha256"] == row["sha256"]
    assert server.hits["/s3.jpg"] == 1
