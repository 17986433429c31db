import os
from dataclasses import dataclass, field

import pytest

from sama import config as C


@dataclass
class Inner:
    size: int = 8
    rate: float = 0.5
    names: list[str] = field(default_factory=lambda: ["a"])
    mode: str | None = None


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    opt: Inner | None = None


def write(tmp_path, text):
    p = tmp_path / "job.yaml"
    p.write_text(text)
    return str(p)


def test_defaults_then_yaml_then_overrides(tmp_path):
    path = write(tmp_path, "name: y\ninner:\n  size: 3\n")
    cfg = C.load(Outer, path, ["inner.rate=2", "inner.names=[p, q]", "opt.size=5"])
    assert cfg.name == "y" and cfg.inner.size == 3 and cfg.inner.rate == 2.0
    assert cfg.inner.names == ["p", "q"] and cfg.opt == Inner(size=5)


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "inner:\n  sise: 3\n")
    with pytest.raises(C.ConfigError) as e:
        C.load(Outer, path)
    assert "inner.sise" in str(e.value) and path in str(e.value) and "size" in str(e.value)


def test_wrong_type_names_key(tmp_path):
    path = write(tmp_path, "inner:\n  size: big\n")
    with pytest.raises(C.ConfigError, match=r"'inner.size' must be an integer"):
        C.load(Outer, path)
    with pytest.raises(C.ConfigError, match=r"'inner.names\[1\]' must be a string"):
        C.load(Outer, path=None, data={"inner": {"names": ["a", 3]}})
    with pytest.raises(C.ConfigError, match="override"):
        C.load(Outer, path=None, overrides=["nonsense"])


def test_bool_is_not_an_int_and_null_only_where_optional(tmp_path):
    with pytest.raises(C.ConfigError, match="integer"):
        C.load(Outer, data={"inner": {"size": True}})
    with pytest.raises(C.ConfigError, match="must not be null"):
        C.load(Outer, data={"inner": None})
    assert C.load(Outer, data={"opt": None}).opt is None


def test_fixed_length_tuples():
    @dataclass
    class Opt:
        betas: tuple[float, float] = (0.9, 0.999)

    assert C.load(Opt, data={"betas": [0.8, 0.99]}).betas == (0.8, 0.99)
    with pytest.raises(C.ConfigError, match="2 items"):
        C.load(Opt, data={"betas": [0.8]})
    with pytest.raises(C.ConfigError, match=r"betas\[1\]' must be a number"):
        C.load(Opt, data={"betas": [0.8, "x"]})


def test_round_trip_through_yaml(tmp_path):
    cfg = C.load(Outer, data={"opt": {"mode": "m"}})
    again = C.load(Outer, write(tmp_path, C.dump_yaml(cfg)))
    assert again == cfg


def test_ingest_yaml_in_repo_resolves():
    from sama.jobs import launcher
    from sama.jobs.demo import job_yaml

    cfg, entry = launcher.resolve(job_yaml("ingest"), ["ingest.shard_size=7"])
    assert cfg.job == "ingest" and cfg.ingest.shard_size == 7 and callable(entry)
    assert cfg.ingest.datasets.ditto1m.subsets == ["global_style1", "global_style2"]


def test_cli_config_error_exit_code_and_message(tmp_path, capsys):
    from sama.jobs.cli import main

    path = write(tmp_path, "job: ingest\ningest:\n  shard_sise: 4\n")
    assert main(["run", path]) == 2
    err = capsys.readouterr().err
    assert "ingest.shard_sise" in err and path in err
    assert main(["run", write(tmp_path, "job: nope\n")]) == 2
    assert "unknown job 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists()


def test_cli_takes_overrides_on_both_sides_of_an_option(capsys):
    from sama.jobs.cli import main
    from sama.jobs.demo import job_yaml

    assert main(["run", job_yaml("ingest"), "ingest.shard_size=5", "--dry-run", "ingest.probe_threads=3"]) == 0
    out = capsys.readouterr().out
    assert "shard_size: 5" in out and "probe_threads: 3" in out
    with pytest.raises(SystemExit):  # an unknown option is still refused
        main(["run", job_yaml("ingest"), "--dry-run", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_sama_jobs_without_an_action_lists_the_job_kinds(capsys):
    from sama.jobs.cli import main
    from sama.jobs.registry import JOBS

    assert main(["jobs"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in JOBS) and "sama jobs list" in out
    assert main(["jobs", "status"]) == 2  # a submission's status still needs its id
    assert "needs a submission id" in capsys.readouterr().err


def test_preflight_names_a_missing_dataset_root_and_an_unwritable_output(tmp_path, capsys):
    from sama.jobs.cli import main
    from sama.jobs.demo import job_yaml

    missing = str(tmp_path / "nowhere")
    args = ["run", job_yaml("ingest"), f"output={tmp_path / 'out'}", "ingest.datasets=null"]
    assert main([*args, f"ingest.datasets.reco.root={missing}"]) == 2
    assert f"ingest.datasets.reco.root={missing}: does not exist" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("a file where the output folder should be")
    assert (
        main([*args[:2], f"output={blocker}/out", "ingest.datasets=null", f"ingest.datasets.reco.root={tmp_path}"]) == 2
    )
    assert f"output={blocker}/out: cannot write there" in capsys.readouterr().err


def test_preflight_names_a_missing_bucket(s3_server, s3_bucket, tmp_path, capsys):
    """A dataset root or an output in a bucket that does not exist: one line naming it, exit 2,
    before Ray starts (a real S3 endpoint answers NoSuchBucket)."""
    from sama.jobs.cli import main
    from sama.jobs.demo import job_yaml

    args = ["run", job_yaml("ingest"), "ingest.datasets=null"]
    assert main([*args, f"output={tmp_path}/o", "ingest.datasets.reco.root=s3://no-such-bucket-x1/reco"]) == 2
    err = capsys.readouterr().err
    assert "ingest.datasets.reco.root=s3://no-such-bucket-x1/reco" in err and "Traceback" not in err
    assert main([*args, "output=s3://no-such-bucket-x2/out", f"ingest.datasets.reco.root={s3_bucket}"]) == 2
    err = capsys.readouterr().err
    assert "output=s3://no-such-bucket-x2/out: cannot write there (NoSuchBucket)" in err, err
    assert len(err.strip().splitlines()) == 1


def test_a_session_starts_one_embedded_ray_for_all_its_jobs(monkeypatch):
    """Without a cluster to join, each job alone starts and stops an embedded Ray (``run``: stop
    only what ``connect`` started); inside ``launcher.session`` (the demo, `sama learning`) the jobs
    join the session's, stopped once at the end."""
    from sama.jobs import launcher

    calls, up = [], [False]
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(launcher.ray, "is_initialized", lambda: up[0])
    monkeypatch.setattr(launcher.ray, "init", lambda **kw: (calls.append("init"), up.__setitem__(0, True)))
    monkeypatch.setattr(launcher.ray, "shutdown", lambda: (calls.append("shutdown"), up.__setitem__(0, False)))
    assert launcher.connect(C.RayConfig()) and calls == ["init"]  # a job alone: started, so it stops it
    launcher.ray.shutdown()
    calls.clear()
    with launcher.session():
        assert not launcher.connect(C.RayConfig()) and not launcher.connect(C.RayConfig())  # jobs join
        assert calls == ["init"]
    assert calls == ["init", "shutdown"] and not up[0]


def test_an_embedded_ray_polls_its_training_workers_sooner_unless_told(monkeypatch, ray_cluster):
    """The embedded Ray's processes inherit Ray Train's shorter poll (the suite's Ray too, as the
    remote task shows); a value the user set is kept."""
    import ray

    from sama.jobs import launcher

    key = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
    assert ray.get(ray.remote(lambda: os.environ.get(key)).remote()) == launcher.LOCAL_RAY_ENV[key]
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(launcher.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(launcher.ray, "init", lambda **kw: None)
    monkeypatch.delenv(key)
    launcher.connect(C.RayConfig())
    assert os.environ[key] == launcher.LOCAL_RAY_ENV[key] == "0.25"
    monkeypatch.setenv(key, "3")
    launcher.connect(C.RayConfig())
    assert os.environ[key] == "3"


@pytest.mark.parametrize(
    "train, inference",
    [
        (["train_stage0", "train_stage1", "train_world_stage0", "train_world_stage1"], ["precompute", "eval", "serve"]),
        (
            ["train_stage0_wan1_3b", "train_stage1_wan1_3b", "train_stage0_wan14b", "train_stage1_wan14b"],
            ["precompute_wan", "serve_sama14b"],
        ),
    ],
)
def test_training_pads_prompts_as_inference_does(train, inference):
    """The transformer cross-attends to every text position, the zero pads too (Wan has no text
    mask), so training must pad prompts to the length precompute, evaluation and serving use, or
    the model meets more pads at inference than it learnt with (Wan's recipes: 512)."""
    from sama.jobs import launcher
    from sama.jobs.demo import job_yaml

    lengths = {name: launcher.resolve(job_yaml(name), [])[0].train.data.text_len for name in train}
    for name in inference:
        cfg = launcher.resolve(job_yaml(name), [])[0]
        model = cfg.evaluate.model if cfg.job == "evaluate" else cfg.serve.model if cfg.job == "serve" else None
        lengths[name] = (model.text if model else cfg.precompute.text).max_length
    assert len(set(lengths.values())) == 1 and None not in lengths.values(), lengths
