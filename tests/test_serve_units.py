"""The edit service's pieces without Ray: URI confinement, tokens, parameters, config, job table."""

from __future__ import annotations

import os

import numpy as np
import pytest

from sama.config import ConfigError
from sama.serve.app import build_app, read_token, resolve_args
from sama.serve.config import ServeConfig
from sama.serve.inputs import check_media, parse_params
from sama.serve.security import RequestError, bearer_ok, resolve_source_uri
from sama.serve.settings import Geometry, IngressConfig, IngressSettings, LimitsConfig, QueueConfig
from sama.serve.state import CANCELLED, SUCCEEDED, EditTasks


@pytest.fixture
def limits(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.mp4").write_bytes(b"x")
    (tmp_path / "secret.mp4").write_bytes(b"x")
    os.symlink(tmp_path / "secret.mp4", root / "escape.mp4")
    os.symlink(root / "sub" / "a.mp4", root / "inside.mp4")
    return LimitsConfig(allowed_roots=[str(root)], allowed_buckets=["media"])


def refused(uri, limits) -> int:
    with pytest.raises(RequestError) as e:
        resolve_source_uri(uri, limits)
    return e.value.status


def test_local_and_s3_uris_inside_the_allowed_places_pass(limits, tmp_path):
    root = limits.allowed_roots[0]
    assert resolve_source_uri(f"{root}/sub/a.mp4", limits) == os.path.realpath(f"{root}/sub/a.mp4")
    assert resolve_source_uri(f"file://{root}/sub/a.mp4", limits) == os.path.realpath(f"{root}/sub/a.mp4")
    assert resolve_source_uri(f"{root}/inside.mp4", limits) == os.path.realpath(f"{root}/sub/a.mp4")
    assert resolve_source_uri("s3://media/clips/a.mp4", limits) == "s3://media/clips/a.mp4"


@pytest.mark.parametrize(
    "uri",
    [
        "http://169.254.169.254/latest/meta-data/",
        "https://example.com/a.mp4",
        "HTTP://example.com/a.mp4",
        "ftp://h/a.mp4",
        "gs://media/a.mp4",
        "s3://other/a.mp4",
        "s3://media/",
        "s3://media/a/../b.mp4",
        "s3://media//a.mp4",
        "file:///etc/passwd",
        "file://host/etc/passwd",
        "/etc/passwd",
        "a.mp4",
        "c:/windows/a.mp4",
        "{root}/../secret.mp4",
        "{root}/sub/../../secret.mp4",
        "{root}/escape.mp4",
        "{root}-sibling/a.mp4",
        "{root}/x.tar::a.mp4",
    ],
)
def test_uris_outside_are_refused_before_any_io(limits, uri):
    assert refused(uri.format(root=limits.allowed_roots[0]), limits) == 403


def test_bad_uri_text_and_missing_files(limits):
    assert refused("", limits) == 400
    assert refused("/a\x00b.mp4", limits) == 400
    assert refused("s" * 5000, limits) == 400
    assert refused(f"{limits.allowed_roots[0]}/nope.mp4", limits) == 404
    assert refused("/etc/passwd", LimitsConfig()) == 403  # no roots: no local files at all


def test_bearer_tokens():
    assert bearer_ok("Bearer abc", "abc") and bearer_ok(None, None)
    assert not bearer_ok(None, "abc") and not bearer_ok("Bearer abd", "abc")
    assert not bearer_ok("Basic abc", "abc") and not bearer_ok("Bearer ", "abc")


SETTINGS = IngressSettings(
    "t",
    "",
    IngressConfig(),
    QueueConfig(),
    LimitsConfig(max_steps=50, sync_max_frames=5),
    Geometry(multiple=16, area=4096, max_frames=9),
)


def test_parameters_parse_and_bound():
    req = parse_params(
        {
            "instruction": " make it red ",
            "seed": "7",
            "steps": "4",
            "guidance_scale": "4.5",
            "height": "48",
            "width": "80",
        },
        SETTINGS,
        sync=False,
    )
    assert (req.instruction, req.seed, req.steps, req.guidance_scale, req.height, req.width) == (
        "make it red",
        7,
        4,
        4.5,
        48,
        80,
    )
    assert req.num_frames is None
    assert parse_params({"instruction": "x"}, SETTINGS, sync=True).num_frames == 5
    for bad in (
        {"instruction": "x", "steps": "51"},
        {"instruction": "x", "seed": "-1"},
        {"instruction": "x", "guidance_scale": "inf"},
        {"instruction": "x", "num_frames": "10"},
        {"instruction": "x", "height": "64", "width": "96"},
        {"instruction": "x" * 1001},
    ):
        with pytest.raises(RequestError) as e:
            parse_params(bad, SETTINGS, sync=False)
        assert e.value.status == 400, bad


def test_media_limits():
    from sama.media import MediaInfo

    ok = MediaInfo("video", 64, 48, 9, 8.0, 1.1, "h264")
    check_media(ok, SETTINGS)
    for bad, words in (
        (MediaInfo("video", 64, 48, 999, 8.0, 125.0, "h264"), "lasts"),
        (MediaInfo("video", 64, 48, 5000, 1000.0, 5.0, "h264"), "frames"),
        (MediaInfo("video", 4000, 48, 9, 8.0, 1.0, "h264"), "larger"),
    ):
        with pytest.raises(RequestError, match=words) as e:
            check_media(bad, SETTINGS)
        assert e.value.status == 422


def test_job_table_bounds_pending_and_keeps_only_the_newest_finished_in_memory():
    t = EditTasks(max_pending=2, keep_finished=1)
    a, b = t.admit("a", "async", 5), t.admit("b", "async", 5)
    with pytest.raises(RequestError) as e:
        t.admit("c", "async", 5)
    assert e.value.status == 503 and e.value.headers == {"Retry-After": "5"}
    assert t.finish(a, SUCCEEDED) and t.get(a.id).progress == 1.0
    assert not t.finish(a, CANCELLED)  # terminal stays terminal
    c = t.admit("c", "async", 5)  # room again
    assert t.finish(b, CANCELLED, "cancelled", "cancelled")
    assert t.get(a.id) is None  # out of memory (its record is on storage: JobStore)
    assert t.pending == 1 and t.get(c.id).public()["state"] == "queued"


@pytest.fixture(params=["local", "s3"])
def results_root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "results")
    return request.getfixturevalue("s3_bucket") + "/results"


def test_job_records_outlive_their_ingress_and_go_with_their_results(results_root):
    from sama import storage
    from sama.serve.jobstore import JobStore

    first = JobStore(results_root, "ingress-a", lease_s=5.0)
    first.heartbeat()
    t = EditTasks(max_pending=4, keep_finished=4)
    done, running = t.admit("make it red", "async", 5), t.admit("make it blue", "async", 5)
    for job in (done, running):
        job.owner, job.params = "ingress-a", {"seed": 3, "source_uri": None}
    done.result = storage.join(results_root, f"{done.id}.mp4")
    storage.write_bytes(done.result, b"mp4")
    t.finish(done, SUCCEEDED)
    running.state = "running"
    first.save(done)
    first.save(running)

    # Another replica (or the restarted one) reads both; the owner is alive, so "running" stays.
    other = JobStore(results_root, "ingress-b", lease_s=5.0)
    got = other.load(done.id)
    assert got.record() == done.record() and got.public()["video"] == {}
    assert other.load(running.id).state == "running"
    assert other.load("0" * 32) is None and other.load("../../etc/passwd") is None

    # The owner stops renewing its lease: its unfinished job reads as failed, and stays so.
    late = JobStore(results_root, "ingress-b", lease_s=0.0)
    lost = late.load(running.id)
    assert lost.state == "failed" and lost.error_kind == "ingress_lost" and "resubmit" in lost.error
    assert other.load(running.id).state == "failed"

    # Retention: only finished jobs older than it go, each with its result.
    assert other.sweep(retention_s=3600) == 0 and storage.exists(done.result)
    assert other.sweep(retention_s=3600, now=done.finished + 3601) == 2
    assert other.load(done.id) is None and not storage.exists(done.result)


def test_storage_errors_on_a_uri_source_are_a_502_naming_it(monkeypatch):
    from conftest import free_port
    from sama.serve.ingress import Ingress

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("SAMA_STORAGE_RETRIES", "2")  # the default budget backs off for ~30 s first
    ingress = object.__new__(Ingress.func_or_class)
    ingress.cfg = SETTINGS
    with pytest.raises(RequestError) as e:
        ingress._probe_uri("s3://media/missing.mp4")
    assert e.value.status == 502 and "s3://media/missing.mp4" in e.value.message, e.value.message


def test_build_args_nested_dotted_and_from_a_file(tmp_path):
    cfg = resolve_args({"editor.num_gpus": "1", "limits": {"max_steps": 10}, "queue.max_pending": 3})
    assert cfg.editor.num_gpus == 1.0 and cfg.limits.max_steps == 10 and cfg.queue.max_pending == 3
    path = tmp_path / "serve.yaml"
    path.write_text("job: serve\nserve:\n  name: from-file\n  editor: {num_cpus: 2}\n")
    cfg = resolve_args({"config": str(path), "editor.num_gpus": 0})
    assert (cfg.name, cfg.editor.num_cpus, cfg.editor.num_gpus) == ("from-file", 2.0, 0.0)
    with pytest.raises(ConfigError, match="unknown key 'editor.gpus'"):
        resolve_args({"editor": {"gpus": 1}})
    with pytest.raises(ConfigError, match="max_replicas"):
        resolve_args({"editor.autoscaling.min_replicas": 3, "editor.autoscaling.max_replicas": 2})


def test_token_comes_from_the_environment(monkeypatch):
    cfg = ServeConfig()
    monkeypatch.delenv("SAMA_SERVE_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="SAMA_SERVE_TOKEN"):
        read_token(cfg)
    cfg.auth.required = False
    assert read_token(cfg) is None
    monkeypatch.setenv("SAMA_SERVE_TOKEN", " t0k ")
    assert read_token(cfg) == "t0k"


def test_builder_maps_the_config_onto_deployments(monkeypatch):
    monkeypatch.setenv("SAMA_SERVE_TOKEN", "t")
    app = build_app(
        {"editor": {"num_gpus": 1, "max_queued_requests": 9, "autoscaling": {"min_replicas": 1, "max_replicas": 4}}}
    )
    ingress = app._bound_deployment
    editor = (
        ingress.init_args[0]._bound_deployment
        if hasattr(ingress.init_args[0], "_bound_deployment")
        else ingress.init_args[0]
    )
    assert ingress.name == "Ingress" and ingress._deployment_config.num_replicas == 1
    assert editor.name == "Editor" and editor.ray_actor_options["num_gpus"] == 1
    assert editor._deployment_config.max_queued_requests == 9
    auto = editor._deployment_config.autoscaling_config
    assert (auto.min_replicas, auto.max_replicas, auto.target_ongoing_requests) == (1, 4, 1.0)
    assert ingress.init_args[2] == "t"


def test_serve_yaml_resolves_and_the_cli_dry_runs(capsys):
    from sama.jobs.cli import main
    from sama.jobs.demo import job_yaml
    from sama.jobs.launcher import resolve

    cfg, entry = resolve(job_yaml("serve"), ["serve.editor.num_gpus=1"])
    assert cfg.serve.editor.num_gpus == 1.0 and cfg.serve.model.checkpoint is None and entry.__name__ == "run"
    assert main(["serve", "--dry-run", "http.port=9000"]) == 0
    assert "port: 9000" in capsys.readouterr().out
    assert main(["serve", job_yaml("filter")]) == 2  # not a serve job


def test_encoded_results_have_even_sides():
    import io

    import av

    from sama.media import encode_mp4

    frames = np.random.default_rng(0).integers(0, 255, (3, 63, 65, 3), dtype=np.uint8)
    with av.open(io.BytesIO(encode_mp4(frames, 8.0))) as c:
        s = c.streams.video[0]
        assert (s.width, s.height, s.codec_context.pix_fmt) == (64, 62, "yuv420p")
        assert sum(1 for _ in c.decode(s)) == 3


@pytest.mark.parametrize("max_running", [1, 2])
def test_editor_runs_max_running_edits_and_holds_the_rest(tmp_path, max_running):
    """A replica holds more edits than it runs: the waiting one starts the moment a slot frees."""
    import asyncio

    from sama.buckets import BucketConfig
    from sama.models.encoders import TextEncoderConfig
    from sama.models.pipeline import PipelineConfig
    from sama.serve.config import ModelConfig
    from sama.serve.editor import Editor
    from sama.serve.inputs import EditRequest
    from sama.testing.media import write_video

    model = ModelConfig(
        text=TextEncoderConfig(max_length=16),
        warmup=False,
        device="cpu",
        pipeline=PipelineConfig(num_inference_steps=3, buckets=BucketConfig(area=4096, multiple=16, max_frames=5)),
    )
    editor = Editor.func_or_class(model, max_running)
    clip = write_video(str(tmp_path / "src.mp4"), frames=5, width=64, height=64, fps=8)
    order: list[tuple[int, str]] = []

    async def one(i: int) -> None:
        async for event in editor.edit(EditRequest("make it red", source_uri=clip, steps=3)):
            if event["event"] != "progress":
                order.append((i, event["event"]))

    async def both() -> None:
        await asyncio.gather(one(0), one(1))

    asyncio.run(both())
    assert sorted(order) == [(0, "done"), (0, "started"), (1, "done"), (1, "started")]
    kinds = [kind for _, kind in order]
    # one slot: started, done, started, done; two slots: both start before either is done
    assert kinds == (["started", "done"] * 2 if max_running == 1 else ["started", "started", "done", "done"])


def test_editor_config_refuses_more_running_than_held():
    with pytest.raises(ConfigError, match="max_running <= max_ongoing_requests"):
        resolve_args({"editor": {"max_running": 3, "max_ongoing_requests": 2}})
