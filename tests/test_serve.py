"""The edit service over real HTTP with the tiny model, on the shared local Ray.

Three small applications are deployed side by side (one Serve instance, one module):
``edit`` (one editor replica, tight limits, a 3-edit queue bound), ``scale``
(autoscaling 1..2 with short delays) and ``strict`` (a 2 s run timeout). Long-running
edits (300 steps, dual CFG, ~15 s) make load; tests cancel them when done.
"""

from __future__ import annotations

import io
import os
import time

import av
import httpx
import numpy as np
import pytest

from conftest import free_port
from sama.testing.media import write_video

TOKEN = "test-token-0123456789"
TOKEN_ENV = "SAMA_TEST_SERVE_TOKEN"
# ~15 s on a free core (300 steps x 3 CFG branches; UniPC repeats timesteps beyond ~350): load we cancel.
LONG = {"steps": "300", "guidance_scale": "5", "source_guidance_scale": "2"}


def app_config(name: str, root: str, bucket: str, **sections) -> dict:
    cfg = {
        "name": name,
        "route_prefix": f"/{name}",
        "results": os.path.join(root, "results", name),
        "model": {
            "text": {"max_length": 16},
            "pipeline": {"num_inference_steps": 2, "buckets": {"area": 4096, "multiple": 16, "max_frames": 9}},
        },
        "editor": {
            "num_gpus": 0,
            "num_cpus": 0.1,
            "autoscaling": {"min_replicas": 1, "max_replicas": 1, "initial_replicas": 1},
        },
        "ingress": {"num_cpus": 0.1},
        "queue": {"max_pending": 3, "queue_timeout_s": 120, "run_timeout_s": 120, "retry_after_s": 7},
        "records": {"lease_s": 3.0},
        "limits": {
            "max_upload_mb": 0.25,
            "max_duration_s": 3.0,
            "max_side": 128,
            "max_pixels": 128 * 128,
            "max_steps": 300,
            "sync_max_frames": 5,
            "allowed_roots": [os.path.join(root, "allowed")],
            "allowed_buckets": [bucket.removeprefix("s3://")],
        },
        "auth": {"token_env": TOKEN_ENV},
    }
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    return cfg


@pytest.fixture(scope="module")
def service(ray_cluster, tmp_path_factory, s3_server):
    import uuid

    import boto3
    from ray import serve

    from sama.serve.app import build_app

    s3_bucket = f"s3://t-serve-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=s3_bucket.removeprefix("s3://"))
    root = str(tmp_path_factory.mktemp("serve"))
    os.makedirs(os.path.join(root, "allowed"))
    os.environ[TOKEN_ENV] = TOKEN  # read by build_app in this process
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    apps = {
        "edit": app_config("edit", root, s3_bucket),
        "scale": app_config(
            "scale",
            root,
            s3_bucket,
            editor={
                "autoscaling": {
                    "min_replicas": 1,
                    "max_replicas": 2,
                    "initial_replicas": 1,
                    "target_ongoing_requests": 1,
                    "upscale_delay_s": 0.5,
                    "downscale_delay_s": 2.0,
                    "metrics_interval_s": 0.5,
                    "look_back_period_s": 1.0,
                }
            },
            queue={"max_pending": 8},
            # Two ingress replicas: every poll may land on either (records are on the results folder).
            ingress={"num_replicas": 2, "num_cpus": 0},
            limits={"max_upload_mb": 160, "max_concurrent_uploads": 2},
        ),
        "strict": app_config("strict", root, s3_bucket, queue={"run_timeout_s": 2.0}),
        # One replica over two processes (gloo on CPU) splitting the sequence (Ulysses); CFG groups
        # as well: tests/test_edit_parallel.py.
        "group": app_config(
            "group", root, s3_bucket, editor={"gpus_per_replica": 2, "cfg_parallel": False, "num_cpus": 0.05}
        ),
    }
    try:
        # Deployed together: replica start-up (importing torch) dominates, and overlaps this way.
        serve.run_many([serve.RunTarget(build_app(c), name=n, route_prefix=c["route_prefix"]) for n, c in apps.items()])
        yield {"port": port, "root": root, "bucket": s3_bucket, "apps": apps}
    finally:
        os.environ.pop(TOKEN_ENV, None)
        serve.shutdown()


def url(service, app: str, path: str = "") -> str:
    return f"http://127.0.0.1:{service['port']}/{app}/{path}"


@pytest.fixture
def client(service):
    with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    return write_video(str(tmp_path_factory.mktemp("clips") / "src.mp4"), frames=9, width=64, height=64, fps=8)


def submit(client, service, app="edit", source=None, fields=None, expect=202) -> dict:
    files = {"video": ("src.mp4", open(source, "rb"), "video/mp4")} if source else None
    r = client.post(url(service, app, "v1/edits"), data={"instruction": "make it red", **(fields or {})}, files=files)
    assert r.status_code == expect, r.text
    return r.json()


def wait_state(client, service, job_id: str, states, app="edit", timeout=120.0, min_progress=0.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(url(service, app, f"v1/edits/{job_id}")).json()
        if job["state"] in states and job["progress"] >= min_progress:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {job} after {timeout}s (wanted {states})")


def decode(data: bytes) -> tuple[int, int, int, str]:
    with av.open(io.BytesIO(data)) as c:
        s = c.streams.video[0]
        n = sum(1 for _ in c.decode(s))
        return n, s.height, s.width, s.codec_context.name


# ---------------------------------------------------------------------- the round trip


def test_edit_round_trip_upload_poll_download(service, client, clip):
    r = client.post(
        url(service, "edit", "v1/edits"),
        data={"instruction": "make it red", "seed": "3"},
        files={"video": ("src.mp4", open(clip, "rb"), "video/mp4")},
    )
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["state"] == "queued" and job["id"]
    assert r.headers["location"] == url(service, "edit", f"v1/edits/{job['id']}")  # absolute, prefix included
    model = client.get(url(service, "edit", "v1/model")).json()  # what is served (no checkpoint: tiny models)
    assert model["checkpoint"] is None and "tiny random" in model["note"]
    # The record is on the results storage from the moment it is accepted.
    assert os.path.exists(os.path.join(service["root"], "results", "edit", "jobs", f"{job['id']}.json"))
    seen = []
    deadline = time.time() + 120
    while job["state"] not in ("succeeded", "failed", "cancelled") and time.time() < deadline:
        job = client.get(url(service, "edit", f"v1/edits/{job['id']}")).json()
        seen.append(job["progress"])
        time.sleep(0.05)
    assert job["state"] == "succeeded", job
    assert seen == sorted(seen) and job["progress"] == 1.0
    assert job["video"]["frames"] == 9 and (job["video"]["height"], job["video"]["width"]) == (64, 64)
    r = client.get(url(service, "edit", f"v1/edits/{job['id']}/result"))
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
    assert decode(r.content) == (9, 64, 64, "h264")
    with av.open(io.BytesIO(r.content)) as c:
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p"


def test_sync_edit_returns_the_mp4(service, client, tmp_path):
    src = write_video(str(tmp_path / "s.mp4"), frames=5, width=64, height=48, fps=8)
    r = client.post(
        url(service, "edit", "v1/edit"),
        data={"instruction": "make it blue"},
        files={"video": ("s.mp4", open(src, "rb"), "video/mp4")},
    )
    assert r.status_code == 200, r.text
    n, h, w, codec = decode(r.content)
    assert n == 5 and codec == "h264" and h % 2 == 0 and w % 2 == 0
    # The synchronous endpoint only takes short clips.
    r = client.post(
        url(service, "edit", "v1/edit"),
        data={"instruction": "x", "num_frames": "9"},
        files={"video": ("s.mp4", open(src, "rb"), "video/mp4")},
    )
    assert r.status_code == 400 and "num_frames" in r.json()["error"]


def test_cli_edit_against_the_service(service, clip, tmp_path, capsys):
    from sama.jobs.cli import main

    out = str(tmp_path / "edited.mp4")
    rc = main(
        ["edit", clip, "make it green", "--endpoint", url(service, "edit"), "--token", TOKEN, "-o", out, "--steps", "2"]
    )
    assert rc == 0 and decode(open(out, "rb").read())[0] == 9
    rc = main(["edit", clip, "make it green", "--endpoint", url(service, "edit"), "--token", "wrong", "-o", out])
    assert rc == 1 and "401" in capsys.readouterr().err


# ---------------------------------------------------------------------- refusals


def test_auth_is_required(service, clip):
    with httpx.Client(timeout=30) as anon:
        files = {"video": ("src.mp4", open(clip, "rb"), "video/mp4")}
        r = anon.post(url(service, "edit", "v1/edits"), data={"instruction": "x"}, files=files)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = anon.post(
            url(service, "edit", "v1/edits"),
            data={"instruction": "x"},
            files=files,
            headers={"Authorization": "Bearer not-the-token"},
        )
        assert r.status_code == 401
        assert anon.get(url(service, "edit", "v1/edits/abc")).status_code == 401
        assert anon.delete(url(service, "edit", "v1/edits/abc")).status_code == 401
        assert (
            anon.get(
                url(service, "edit", "v1/edits/abc/result"), headers={"Authorization": f"Basic {TOKEN}"}
            ).status_code
            == 401
        )
        assert anon.get(url(service, "edit", "v1/model")).status_code == 401
        # The page and the health check are open (they hold no data).
        assert anon.get(url(service, "edit", "healthz")).json()["status"] == "ok"
        assert "<video" in anon.get(url(service, "edit")).text


def test_oversized_uploads_are_refused(service, client, tmp_path):
    big = os.urandom(300 * 1024)  # the limit is 0.25 MB
    r = client.post(
        url(service, "edit", "v1/edits"), data={"instruction": "x"}, files={"video": ("big.mp4", big, "video/mp4")}
    )
    assert r.status_code == 413, r.text
    # Without a Content-Length (chunked), the cap holds while streaming.
    boundary = "b0undary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="instruction"\r\n\r\nx\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="video"; filename="a.mp4"\r\n'
            f"Content-Type: video/mp4\r\n\r\n"
        ).encode()
        + big * 4
        + f"\r\n--{boundary}--\r\n".encode()
    )

    def chunks():
        for i in range(0, len(body), 16384):
            yield body[i : i + 16384]

    r = client.post(
        url(service, "edit", "v1/edits"),
        content=chunks(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert r.status_code == 413, r.text
    # Too long, too large: refused after probing, with the limit named.
    long = write_video(str(tmp_path / "long.mp4"), frames=40, width=64, height=48, fps=8)  # 5 s > 3 s
    r = client.post(
        url(service, "edit", "v1/edits"),
        data={"instruction": "x"},
        files={"video": ("long.mp4", open(long, "rb"), "video/mp4")},
    )
    assert r.status_code == 422 and "3s" in r.json()["error"]
    wide = write_video(str(tmp_path / "wide.mp4"), frames=5, width=192, height=96, fps=8)
    r = client.post(
        url(service, "edit", "v1/edits"),
        data={"instruction": "x"},
        files={"video": ("wide.mp4", open(wide, "rb"), "video/mp4")},
    )
    assert r.status_code == 422 and "192x96" in r.json()["error"]


@pytest.mark.parametrize(
    "fields,files,status,words",
    [
        ({"instruction": "x"}, None, 400, "exactly one source"),
        ({}, "clip", 400, "instruction"),
        ({"instruction": "  "}, "clip", 400, "instruction"),
        ({"instruction": "x", "steps": "many"}, "clip", 400, "integer"),
        ({"instruction": "x", "steps": "5000"}, "clip", 400, "out of range"),
        ({"instruction": "x", "guidance_scale": "nan"}, "clip", 400, "out of range"),
        ({"instruction": "x", "height": "64"}, "clip", 400, "both"),
        ({"instruction": "x", "height": "60", "width": "64"}, "clip", 400, "multiples"),
        ({"instruction": "x", "color": "red"}, "clip", 400, "unknown field"),
        ({"instruction": "x", "uri": "/nope.mp4"}, "clip", 400, "exactly one source"),
        ({"instruction": "x"}, "garbage", 422, "not a readable"),
        ({"instruction": "x"}, "empty", 400, "empty"),
    ],
)
def test_malformed_requests_get_clear_4xx(service, client, clip, fields, files, status, words):
    payload = {"clip": open(clip, "rb").read(), "garbage": b"this is not a video" * 50, "empty": b""}
    r = client.post(
        url(service, "edit", "v1/edits"),
        data=fields,
        files={"video": ("v.mp4", payload[files], "video/mp4")} if files else None,
    )
    assert r.status_code == status, r.text
    assert words in r.json()["error"]


def test_malformed_bodies(service, client):
    r = client.post(url(service, "edit", "v1/edits"), json={"instruction": "x", "uri": "/a.mp4"})
    assert r.status_code == 415
    r = client.post(
        url(service, "edit", "v1/edits"),
        content=b"--xx\r\nContent-Disposition: form-da",
        headers={"Content-Type": "multipart/form-data; boundary=xx"},
    )
    assert r.status_code == 400, r.text
    # A body cut short mid-upload (no closing boundary) says so, not "give exactly one source".
    r = client.post(
        url(service, "edit", "v1/edits"),
        content=b'--xx\r\nContent-Disposition: form-data; name="instruction"\r\n\r\nx\r\n'
        b'--xx\r\nContent-Disposition: form-data; name="video"; filename="a.mp4"\r\n\r\n' + b"\0" * 5000,
        headers={"Content-Type": "multipart/form-data; boundary=xx"},
    )
    assert r.status_code == 400 and "cut short" in r.json()["error"], r.text
    assert client.get(url(service, "edit", "v1/edits/not-a-job")).status_code == 404


@pytest.mark.parametrize(
    "uri,status",
    [
        ("http://169.254.169.254/latest/meta-data/iam/security-credentials/", 403),
        ("https://example.com/clip.mp4", 403),
        ("gopher://127.0.0.1:6379/_INFO", 403),
        ("file:///etc/passwd", 403),
        ("file://evil.example/etc/passwd", 403),
        ("/etc/passwd", 403),
        ("relative/clip.mp4", 403),
        ("{allowed}/../../../../etc/passwd", 403),
        ("{allowed}/link-out", 403),
        ("{allowed}/missing.mp4", 404),
        ("s3://not-allowed-bucket/clip.mp4", 403),
        ("{bucket}/../other/clip.mp4", 403),
        ("{bucket}/shards/a.tar::clip.mp4", 403),
    ],
)
def test_uri_sources_cannot_escape(service, client, uri, status):
    allowed = os.path.join(service["root"], "allowed")
    link = os.path.join(allowed, "link-out")
    if not os.path.lexists(link):
        os.symlink("/etc/passwd", link)
    uri = uri.format(allowed=allowed, bucket=service["bucket"])
    r = client.post(url(service, "edit", "v1/edits"), data={"instruction": "x", "uri": uri})
    assert r.status_code == status, r.text


def test_uri_sources_inside_allowed_places_work(service, client):
    import boto3

    from sama import storage

    local = write_video(os.path.join(service["root"], "allowed", "in.mp4"), frames=5, width=64, height=64)
    data = open(local, "rb").read()
    key = f"{service['bucket']}/clips/in.mp4"
    boto3.client("s3", endpoint_url=storage.endpoint_url()).put_object(
        Bucket=service["bucket"].removeprefix("s3://"), Key="clips/in.mp4", Body=data
    )
    for uri in (local, f"file://{local}", key):
        job = submit(client, service, fields={"uri": uri})
        job = wait_state(client, service, job["id"], ("succeeded", "failed"))
        assert job["state"] == "succeeded", (uri, job)
        assert job["video"]["frames"] == 5


# ---------------------------------------------------------------------- queue, cancel, timeout, crash


def test_cancel_stops_a_running_edit(service, client, clip):
    job = submit(client, service, source=clip, fields=LONG)
    # Cancel as soon as the editor has started it: progress reaches the ingress through the
    # replica's event stream and can lag the loop by seconds on a loaded 2-core machine.
    wait_state(client, service, job["id"], ("running",))
    r = client.delete(url(service, "edit", f"v1/edits/{job['id']}"))
    assert r.status_code == 200 and r.json()["state"] == "cancelled", r.text
    assert client.get(url(service, "edit", f"v1/edits/{job['id']}/result")).status_code == 409
    # The replica is free again (the denoising loop stopped at its next step): a quick edit runs.
    quick = submit(client, service, source=clip)
    quick = wait_state(client, service, quick["id"], ("succeeded", "failed"), timeout=60)
    assert quick["state"] == "succeeded", quick


def test_a_replica_over_two_processes_edits_like_one_and_cancels_together(service, client, clip):
    frames = {}
    for app in ("edit", "group"):
        job = submit(client, service, app, clip, {"seed": "3"})
        job = wait_state(client, service, job["id"], ("succeeded", "failed"), app=app)
        assert job["state"] == "succeeded", job
        data = client.get(url(service, app, f"v1/edits/{job['id']}/result")).content
        with av.open(io.BytesIO(data)) as c:
            frames[app] = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(int)
    # The same latents within 1e-4 (tests/test_edit_parallel.py), so the same frames up to rounding
    # (a pixel off by one before H.264 can move a few by more after it; a wrong edit moves them all).
    assert frames["group"].shape == frames["edit"].shape
    assert np.abs(frames["group"] - frames["edit"]).mean() <= 0.5
    # A cancel reaches rank 0 only; both processes stop at the same step and the replica edits on.
    job = submit(client, service, "group", clip, LONG)
    wait_state(client, service, job["id"], ("running",), app="group")
    assert client.delete(url(service, "group", f"v1/edits/{job['id']}")).json()["state"] == "cancelled"
    quick = wait_state(
        client, service, submit(client, service, "group", clip)["id"], ("succeeded", "failed"), app="group"
    )
    assert quick["state"] == "succeeded", quick


def test_queue_full_gets_503(service, client, clip):
    jobs = [submit(client, service, source=clip, fields=LONG) for _ in range(3)]  # max_pending: 3
    try:
        r = client.post(
            url(service, "edit", "v1/edits"),
            data={"instruction": "x"},
            files={"video": ("src.mp4", open(clip, "rb"), "video/mp4")},
        )
        assert r.status_code == 503 and r.headers["retry-after"] == "7"
        assert "busy" in r.json()["error"]
        assert client.get(url(service, "edit", "healthz")).json()["pending"] == 3
    finally:
        for j in jobs:
            client.delete(url(service, "edit", f"v1/edits/{j['id']}"))
    states = {client.get(url(service, "edit", f"v1/edits/{j['id']}")).json()["state"] for j in jobs}
    assert states == {"cancelled"}
    submit(client, service, source=clip)  # room again


def test_run_timeout_fails_the_job(service, client, clip):
    job = submit(client, service, "strict", source=clip, fields=LONG)
    job = wait_state(client, service, job["id"], ("failed", "succeeded"), app="strict", timeout=60)
    assert job["state"] == "failed" and "timed out running" in job["error"]


def test_crashed_replica_fails_its_running_job_and_hands_on_its_queued_one(service, client, clip):
    import ray

    job = submit(client, service, source=clip, fields=LONG)
    running = wait_state(client, service, job["id"], ("running",), min_progress=0.06)
    queued = submit(client, service, source=clip)  # waits at the same (only) replica
    time.sleep(1.0)  # let the router hand it to the replica
    assert client.get(url(service, "edit", f"v1/edits/{queued['id']}")).json()["state"] == "queued"
    # Kill the replica's process mid-edit, as a segfault or the OOM killer would.
    ray.kill(ray.get_actor(f"SERVE_REPLICA::edit#Editor#{running['replica']}", namespace="serve"), no_restart=True)
    failed = wait_state(client, service, job["id"], ("failed", "succeeded", "cancelled"), timeout=60)
    assert failed["state"] == "failed" and "died" in failed["error"], failed
    # The queued edit never started there: it runs on the replica Serve starts in its place.
    done = wait_state(client, service, queued["id"], ("succeeded", "failed", "cancelled"), timeout=180)
    assert done["state"] == "succeeded", done
    assert done["replica"] != running["replica"]


def _ingress_actor(app: str, replica: str):
    import ray

    return ray.get_actor(f"SERVE_REPLICA::{app}#Ingress#{replica}", namespace="serve")


def test_killed_ingress_keeps_job_records(service, client, clip):
    """kill -9 of the ingress: earlier jobs still answer (with their results); the one it was
    driving reads as failed once its lease runs out; a new ingress is up within seconds."""
    import ray

    done = submit(client, service, source=clip)
    done = wait_state(client, service, done["id"], ("succeeded",), timeout=120)
    inflight = submit(client, service, source=clip, fields={"steps": "60"})
    wait_state(client, service, inflight["id"], ("running",))
    old = client.get(url(service, "edit", "healthz")).json()["replica"]
    ray.kill(_ingress_actor("edit", old), no_restart=True)
    t0, first_ok = time.time(), None
    while time.time() - t0 < 60:
        try:
            r = client.get(url(service, "edit", "healthz"), timeout=5)
            if r.status_code == 200 and r.json()["replica"] != old:
                first_ok = time.time() - t0
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    assert first_ok is not None and first_ok < 30, first_ok
    again = client.get(url(service, "edit", f"v1/edits/{done['id']}")).json()
    assert again["state"] == "succeeded" and again["video"] == done["video"]
    r = client.get(url(service, "edit", f"v1/edits/{done['id']}/result"))
    assert r.status_code == 200 and decode(r.content)[0] == 9
    lost = wait_state(client, service, inflight["id"], ("failed", "succeeded"), timeout=30)
    assert lost["state"] == "failed" and "ingress" in lost["error"], lost
    # The editor is still free to work for the new ingress.
    job = wait_state(client, service, submit(client, service, source=clip)["id"], ("succeeded",), timeout=120)
    assert job["progress"] == 1.0


def test_parallel_large_uploads_stream_to_disk(service, client):
    """8 parallel 150 MB uploads: at most max_concurrent_uploads (2) are received at once, the rest
    get a 503; none is ever whole in an ingress's memory (Serve hands the body over in batches of
    chunks: an ingress grows by tens of MB, more on a loaded machine, whatever the upload's size)."""
    import concurrent.futures

    import psutil

    # Ray titles each actor's process after its class: ray::ServeReplica:<app>:<deployment>.
    procs = [p for p in psutil.process_iter() if "ServeReplica:scale:Ingress" in " ".join(p.cmdline())]
    assert len(procs) == 2
    base = [p.memory_full_info().uss for p in procs]
    blob = os.urandom(150 * 1024 * 1024)

    def post(_):
        with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120) as c:
            r = c.post(url(service, "scale", "v1/edits"), data={"instruction": "x"}, files={"video": ("big.mp4", blob)})
            return r.status_code, r.json()["error"]

    peak = list(base)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(post, i) for i in range(8)]
        while not all(f.done() for f in futures):
            peak = [max(m, p.memory_full_info().uss) for m, p in zip(peak, procs)]
            time.sleep(0.05)
    answers = [f.result() for f in futures]
    assert {s for s, _ in answers} <= {422, 503}, answers
    assert any(s == 422 and "not a readable" in e for s, e in answers), answers  # received, probed, refused
    grew = max(p - b for p, b in zip(peak, base)) / 2**20
    print(f"ingress memory growth: {grew:.1f} MB; answers: {sorted(s for s, _ in answers)}")
    assert grew < 100, f"an ingress grew by {grew:.0f} MB receiving 150 MB uploads"


# ---------------------------------------------------------------------- autoscaling


def _running_replicas(app: str) -> int:
    from ray import serve

    dep = serve.status().applications[app].deployments["Editor"]
    return dep.replica_states.get("RUNNING", 0)


def _wait_replicas(app: str, n: int, timeout: float) -> float:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if _running_replicas(app) == n:
            return time.time() - t0
        time.sleep(0.25)
    raise AssertionError(f"{app}: {_running_replicas(app)} running editor replicas after {timeout}s, wanted {n}")


def test_autoscaling_up_under_load_and_back(service, client, clip):
    """Keep 3 long edits in flight (target: 1 per replica) until a 2nd replica runs one; then idle."""
    assert _running_replicas("scale") == 1
    jobs: dict[str, dict] = {}
    deadline = time.time() + 150
    try:
        while time.time() < deadline:
            for j in list(jobs.values()):
                if j["state"] not in ("succeeded", "failed", "cancelled"):
                    jobs[j["id"]] = client.get(url(service, "scale", f"v1/edits/{j['id']}")).json()
            if len({j["replica"] for j in jobs.values() if j["replica"]}) == 2 and _running_replicas("scale") == 2:
                break
            while sum(j["state"] in ("queued", "running") for j in jobs.values()) < 3:
                j = submit(client, service, "scale", source=clip, fields=LONG)
                jobs[j["id"]] = j
            time.sleep(0.25)
        used = {j["replica"] for j in jobs.values() if j["replica"]}
        assert len(used) == 2 and _running_replicas("scale") == 2, (used, _running_replicas("scale"))
        assert not any(j["state"] == "failed" for j in jobs.values())
    finally:
        for j in jobs.values():
            client.delete(url(service, "scale", f"v1/edits/{j['id']}"))
    _wait_replicas("scale", 1, timeout=90)


# ---------------------------------------------------------------------- the web page

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def test_web_page_in_headless_chromium(service, clip, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no {CHROMIUM}")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 820})
            page.goto(url(service, "edit"))
            assert page.title() == "SAMA video edit"
            # A wrong token is refused, and the page says so.
            page.fill("#token", "wrong")
            page.set_input_files("#video", clip)
            page.fill("#instruction", "make the square red")
            page.click("#submit")
            page.wait_for_function("document.querySelector('#status').textContent.includes('401')", timeout=30000)
            assert not page.is_disabled("#submit")
            # The network fails mid-upload: the page says so and the Edit button works again.
            page.route("**/v1/edits", lambda route: route.abort("connectionreset"))
            page.click("#submit")
            page.wait_for_function(
                "document.querySelector('#status').textContent.includes('network error')", timeout=30000
            )
            assert "upload failed" in page.text_content("#status") and not page.is_disabled("#submit")
            page.unroute("**/v1/edits")
            # Record every status line the page shows, to see progress happen.
            page.evaluate("""() => { window.seen = [];
                new MutationObserver(() => window.seen.push(document.querySelector('#status').textContent))
                  .observe(document.querySelector('#status'),
                           {childList: true, characterData: true, subtree: true}); }""")
            page.fill("#token", TOKEN)
            # The served defaults show (this app: 2 steps); fewer or more is the user's choice.
            assert page.get_attribute("#steps", "placeholder") == "2"
            assert "served default is 2" in page.get_attribute("#steps", "title")
            page.fill("#steps", "40")
            page.click("#submit")
            page.wait_for_function(
                "document.querySelector('#status').className === 'done' && "
                "document.querySelector('#result').src.startsWith('blob:')",
                timeout=90000,
            )
            # Chromium decodes the result (H.264 in mp4) and plays it beside the source.
            page.wait_for_function(
                "document.querySelector('#result').readyState >= 2 && "
                "document.querySelector('#source').readyState >= 2",
                timeout=30000,
            )
            size = page.evaluate(
                "[document.querySelector('#result').videoWidth, document.querySelector('#result').videoHeight]"
            )
            assert size == [64, 64]
            seen = page.evaluate("window.seen")
            assert any(s.startswith(("queued", "running")) for s in seen), seen
            assert "done: 9 frames, 64×64" in page.text_content("#status")
            assert page.evaluate("document.querySelector('#progress').value") == 1
            # The edit can be downloaded, as an mp4 named after its job.
            link = page.evaluate(
                "[!document.querySelector('#download').hidden, document.querySelector('#download').download]"
            )
            assert link[0] and link[1].startswith("edit-") and link[1].endswith(".mp4")
            with page.expect_download() as dl:
                page.click("#download")
            assert decode(open(dl.value.path(), "rb").read())[0] == 9
            # A refused submit leaves nothing of the earlier edit on screen.
            page.fill("#token", "wrong")
            page.click("#submit")
            page.wait_for_function("document.querySelector('#status').textContent.includes('401')", timeout=30000)
            assert page.evaluate("document.querySelector('#result').getAttribute('src')") is None
            assert page.evaluate("document.querySelector('#download').hidden")
            page.fill("#token", TOKEN)
            shot = str(tmp_path / "page.png")
            page.screenshot(path=shot, full_page=True)
            if os.environ.get("SAMA_SCREENSHOT_DIR"):  # to look at it: SAMA_SCREENSHOT_DIR=/tmp pytest ...
                page.screenshot(path=os.path.join(os.environ["SAMA_SCREENSHOT_DIR"], "serve-page.png"), full_page=True)
        finally:
            browser.close()


def test_prometheus_metrics_through_ray(service):
    """Our counters/histograms reach the node's Prometheus endpoint (Ray's metrics agent)."""
    import ray

    port = ray._private.worker.global_worker.node.metrics_export_port
    wanted = (
        "ray_sama_edit_requests",
        "ray_sama_edit_rejected",
        'status="401"',
        "ray_sama_edit_compute_seconds_bucket",
        "ray_sama_edit_jobs_finished",
        'state="cancelled"',
        'application="edit"',
    )
    deadline, text = time.time() + 60, ""
    while time.time() < deadline:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        if all(w in text for w in wanted):
            break
        time.sleep(1)
    assert [w for w in wanted if w not in text] == []
