"""`sama run jobs/ingest.yaml` end to end: local disk, S3, rerun, resume after a kill."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, wait_until_quiet
from sama import storage
from sama.jobs import launcher
from sama.jobs.demo import job_yaml
from sama.schemas import MANIFEST, REJECTS, read_table, validate
from sama.testing.lookalikes import upload_tree

pytestmark = pytest.mark.slow


def overrides(roots: dict[str, str], output: str, *extra: str) -> list[str]:
    return [f"output={output}", *[f"ingest.datasets.{k}.root={v}" for k, v in roots.items()], *extra]


def check_outcome(output: str, lookalikes) -> None:
    summary = json.loads(storage.read_text(storage.join(output, "summary.json")))["datasets"]
    for name, exp in lookalikes.expected.items():
        assert summary[name]["kept"] == exp.kept, name
        assert summary[name]["reasons"] == dict(exp.reasons), name
        assert summary[name]["not_listed"] == dict(exp.not_listed), name
    manifest = read_table(storage.join(output, "manifest"), MANIFEST)
    ids = manifest["sample_id"].to_pylist()
    assert len(ids) == len(set(ids)) == sum(e.kept for e in lookalikes.expected.values())
    rejects = validate(storage.read_parquet(storage.join(output, "rejects")), REJECTS)
    assert rejects.num_rows == sum(sum(e.reasons.values()) for e in lookalikes.expected.values())
    assert all(d for d in rejects["detail"].to_pylist())  # every reject says why, naming the file or row


def test_ingest_local_end_to_end_and_rerun(ray_cluster, lookalikes, tmp_path):
    out = str(tmp_path / "out")
    launcher.run(job_yaml("ingest"), overrides(lookalikes.roots, out, "ingest.shard_size=4"))
    check_outcome(out, lookalikes)
    m = read_table(storage.join(out, "manifest"), MANIFEST).to_pandas().set_index("sample_id")
    rot = m[m.target_uri.str.contains("vid000")].iloc[0]
    assert (rot.tgt_width, rot.tgt_height) == (48, 64)  # rotated clip probed as displayed
    vfr = m[m.target_uri.str.endswith("mb001.mp4")].iloc[0]
    assert vfr.tgt_frames == 13
    assert os.path.exists(os.path.join(out, "config.yaml"))

    parts = sorted(storage.list_files(storage.join(out, "manifest")))
    mtimes = [os.path.getmtime(p) for p in parts]
    launcher.run(job_yaml("ingest"), overrides(lookalikes.roots, out, "ingest.shard_size=4"))
    assert sorted(storage.list_files(storage.join(out, "manifest"))) == parts
    assert [os.path.getmtime(p) for p in parts] == mtimes  # nothing redone
    check_outcome(out, lookalikes)  # nothing duplicated


def test_ingest_s3_in_and_out(ray_cluster, lookalikes, s3_bucket):
    roots = {}
    for name, root in lookalikes.roots.items():
        uri = storage.join(s3_bucket, "data", os.path.basename(root))
        upload_tree(root, uri)
        roots[name] = uri
    out = storage.join(s3_bucket, "ingest")
    launcher.run(job_yaml("ingest"), overrides(roots, out))
    check_outcome(out, lookalikes)
    uris = read_table(storage.join(out, "manifest"), MANIFEST)["target_uri"].to_pylist()
    assert all(u.startswith(s3_bucket) for u in uris)


def test_ingest_resumes_after_kill(ray_cluster, lookalikes, tmp_path):
    out = str(tmp_path / "out")
    args = overrides(lookalikes.roots, out, "ingest.shard_size=1", "ingest.probe_threads=1")
    env = {**os.environ, "RAY_ADDRESS": ray_cluster, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sama.jobs.cli", "run", job_yaml("ingest"), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    manifest_dir = os.path.join(out, "manifest")
    done_dir = os.path.join(out, "_work", "done", "probe")  # a commit's marker: written after its part
    deadline = time.time() + 120
    while time.time() < deadline and len(storage.list_files(done_dir)) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # The killed job's tasks may still be running in the shared Ray until it reaps them: wait for
    # their writes to stop. A part is finished once its commit's marker is there (a part file
    # without one is redone, rightly).
    seen = wait_until_quiet(lambda: (storage.list_files(manifest_dir), storage.list_files(done_dir)))
    name = lambda path, root: os.path.splitext(os.path.relpath(path, root))[0]  # noqa: E731
    committed = {name(m, done_dir) for m in seen[1]}
    done_before = {p: os.path.getmtime(p) for p in seen[0] if name(p, manifest_dir) in committed}
    total = sum(e.kept + sum(e.reasons.values()) for e in lookalikes.expected.values())
    assert 3 <= len(done_before) < total, "the kill should land midway"

    launcher.run(job_yaml("ingest"), args)
    check_outcome(out, lookalikes)
    for p, t in done_before.items():
        assert os.path.getmtime(p) == t  # finished parts were not redone


def test_changed_metadata_replaces_old_parts(ray_cluster, tmp_path):
    """A rerun with nothing changed writes nothing; parts from an earlier listing never linger
    beside the new ones (no double counting)."""
    from sama.testing.lookalikes import make_lookalikes

    looks = make_lookalikes(str(tmp_path / "data"), n=2, odd=False, only=["nhr_edit"])
    out = str(tmp_path / "out")
    args = [f"output={out}", "ingest.datasets=null", f"ingest.datasets.nhr_edit.root={looks.roots['nhr_edit']}"]
    launcher.run(job_yaml("ingest"), args)
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*")}
    launcher.run(job_yaml("ingest"), args)  # nothing changed: a rerun writes nothing (a read-only copy reruns)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*")} == written
    meta = tmp_path / "data" / "NHR-Edit" / "train" / "metadata.jsonl"
    meta.write_text(meta.read_text().splitlines()[0] + "\n")  # the dataset shrank to one sample
    launcher.run(job_yaml("ingest"), args)
    assert read_table(storage.join(out, "manifest"), MANIFEST).num_rows == 1
    assert json.loads(storage.read_text(storage.join(out, "summary.json")))["datasets"]["nhr_edit"]["kept"] == 1


def test_samples_carry_their_license_and_record_and_a_deny_rule_is_counted(ray_cluster, lookalikes, tmp_path):
    out = str(tmp_path / "out")
    roots = {k: lookalikes.roots[k] for k in ("motionbench", "pico_banana", "nhr_edit")}
    extra = ('ingest.licenses.deny=["*-ND*"]', "ingest.datasets.nhr_edit.version=rev-abc123")
    args = [f"output={out}", "ingest.datasets=null", *[f"ingest.datasets.{k}.root={v}" for k, v in roots.items()]]
    summary = launcher.run(job_yaml("ingest"), [*args, *extra])
    m = read_table(storage.join(out, "manifest"), MANIFEST).to_pandas()
    assert set(m.dataset) == {"motionbench", "nhr_edit"}  # no-derivatives data kept out
    assert set(m[m.dataset == "nhr_edit"].license) == {"Apache-2.0"}
    assert set(m[m.dataset == "motionbench"].license) == {"CC-BY-NC-SA-4.0"}
    assert set(m[m.dataset == "nhr_edit"].dataset_version) == {"rev-abc123"}
    # Each sample points at its original record: the metadata file and line.
    for rec in m.record:
        path, _, line = rec.rpartition(":")
        assert os.path.exists(path) and line.isdigit(), rec
    rejects = validate(storage.read_parquet(storage.join(out, "rejects")), REJECTS).to_pandas()
    banned = rejects[rejects.reason == "license_excluded"]
    exp = lookalikes.expected["pico_banana"]  # every row the reader lists, but those already malformed
    assert set(banned.dataset) == {"pico_banana"}
    assert len(banned) == exp.kept + sum(exp.reasons.values()) - exp.reasons.get("bad_record", 0) > 0
    assert all("CC-BY-NC-ND-4.0 matches ingest.licenses.deny '*-ND*'" in d for d in banned.detail)
    assert summary["license_excluded"] == {"pico_banana": len(banned)}
    assert summary["datasets"]["pico_banana"]["license"]["id"] == "CC-BY-NC-ND-4.0"
    prov = summary["provenance"]
    assert prov["job"] == "probe" and prov["code_version"] and {i["uri"] for i in prov["inputs"]} == set(roots.values())
