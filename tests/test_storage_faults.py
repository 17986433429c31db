"""Storage under faults: a real S3 server behind a fault-injecting proxy on 127.0.0.1
(503 SlowDown, connections reset mid-body, responses cut inside their headers, delays)."""

from __future__ import annotations

import os
import subprocess
import sys

import boto3
import pytest

from sama import media, storage
from sama.testing.faultproxy import FaultProxy
from sama.testing.media import write_video


@pytest.fixture
def bucket(s3_bucket, s3_server) -> str:
    return s3_bucket


@pytest.fixture
def proxy(s3_server, monkeypatch):
    """The proxy in front of moto, as the endpoint every storage call in this process uses."""
    with FaultProxy(s3_server, seed=7) as p:
        monkeypatch.setenv("AWS_ENDPOINT_URL", p.url)
        monkeypatch.setenv("SAMA_STORAGE_RETRIES", "12")
        yield p


def put(bucket: str, key: str, data: bytes, endpoint: str) -> str:
    boto3.client("s3", endpoint_url=endpoint).put_object(Bucket=bucket.removeprefix("s3://"), Key=key, Body=data)
    return f"{bucket}/{key}"


def test_tiny_reads_are_buffered_and_survive_faults(bucket, proxy, s3_server):
    data = os.urandom(300_000)
    uri = put(bucket, "blob.bin", data, s3_server)
    proxy.rate = 0.2
    with storage.open_input(uri) as f:  # 3-byte reads, as a container parser makes them
        got = b"".join(iter(lambda: f.read(3), b""))
    assert got == data
    gets = proxy.requests["GET"]
    assert gets <= 10, proxy.requests  # 100,000 reads -> 2 blocks of 256 KiB (+ retries of faulted ones)
    assert sum(proxy.faults.values()) > 0  # it did meet faults
    assert storage.read_bytes(uri) == data


def test_opening_a_file_needs_no_head(bucket, proxy, s3_server):
    """The first ranged GET's Content-Range gives the size: a small file is one request, a Parquet
    footer is found from the last block, a missing file fails at open, an empty one reads empty."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    uri = put(bucket, "small.json", b'{"a": 1}\n' * 100, s3_server)
    put(bucket, "empty.bin", b"", s3_server)
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table({"x": list(range(50_000))}), buf, row_group_size=10_000)
    table = put(bucket, "t.parquet", buf.getvalue().to_pybytes(), s3_server)
    proxy.reset_counts()
    with storage.open_input(uri) as f:
        assert f.read() == b'{"a": 1}\n' * 100
    assert storage.read_text(uri).count("\n") == 100
    assert dict(proxy.requests) == {"GET": 2}  # no HEAD
    proxy.reset_counts()
    assert storage.read_row_group(table, 3)["x"].to_pylist() == list(range(30_000, 40_000))
    assert dict(proxy.requests) == {"GET": 1}  # the last block holds footer and group (a small file)
    assert storage.read_bytes(f"{bucket}/empty.bin") == b""
    with storage.open_input(f"{bucket}/empty.bin") as f:
        assert f.read() == b""
    with pytest.raises(FileNotFoundError):
        storage.open_input(f"{bucket}/missing.bin")


def test_a_cut_head_is_never_a_zero_size(bucket, proxy, s3_server, tmp_path):
    clip = write_video(str(tmp_path / "c.mp4"), frames=9, width=64, height=48)
    uri = put(bucket, "c.mp4", open(clip, "rb").read(), s3_server)
    proxy.kinds, proxy.rate = ("cut_headers",), 0.4
    for _ in range(6):
        assert storage.size(uri) == os.path.getsize(clip)
    info = media.probe(uri)
    assert (info.width, info.height, info.frames) == (64, 48, 9)
    assert proxy.faults["cut_headers"] > 0


def test_listings_and_lookups_under_faults_never_come_back_empty(bucket, proxy, s3_server):
    """A cut or throttled LIST or HEAD is retried: never an empty folder, a missing file or size 0
    (a folder seen empty made a precompute fail with "no Parquet files" at 20% faults)."""
    names = [f"d/part-{i:03d}.parquet" for i in range(12)] + ["d/sub/x.json", "d/.tmp-y.parquet"]
    for n in names:
        put(bucket, n, n.encode() * 10, s3_server)
    want = sorted(f"{bucket}/{n}" for n in names[:12])
    proxy.rate, proxy.kinds = 0.3, ("slowdown", "reset", "cut_headers")
    for _ in range(10):
        assert storage.list_files(f"{bucket}/d", ".parquet") == want
        assert storage.list_files(f"{bucket}/d", recursive=False) == want
        assert storage.exists(f"{bucket}/d") and not storage.exists(f"{bucket}/nothing")
        assert storage.size(want[3]) == len(names[3]) * 10
        assert storage.stamp(want[3]).startswith(f"{len(names[3]) * 10}-")
    assert sum(proxy.faults.values()) >= 20, proxy.faults
    assert storage.list_files(f"{bucket}/nothing") == []


def test_probes_and_decodes_at_20_percent_faults_match_a_clean_read(bucket, proxy, s3_server, tmp_path):
    clip = write_video(str(tmp_path / "v.mp4"), frames=17, width=64, height=64)
    uri = put(bucket, "v.mp4", open(clip, "rb").read(), s3_server)
    clean_info, clean = media.probe(uri), media.read_frames(uri, 4, 64)
    proxy.reset_counts()
    proxy.rate, proxy.kinds = 0.2, ("slowdown", "reset", "cut_headers")
    for _ in range(3):
        assert media.probe(uri) == clean_info
        assert (media.read_frames(uri, 4, 64) == clean).all()
    assert proxy.faults["slowdown"] and proxy.faults["reset"]


def test_when_the_budget_runs_out_one_error_names_uri_cause_and_attempts(bucket, proxy, s3_server, monkeypatch):
    uri = put(bucket, "x.bin", b"abc" * 1000, s3_server)
    monkeypatch.setenv("SAMA_STORAGE_RETRIES", "2")
    proxy.rate, proxy.kinds = 1.0, ("slowdown",)
    with pytest.raises(storage.StorageError) as e:
        storage.read_bytes(uri)
    msg = str(e.value)
    assert uri in msg and "gave up after 2 attempts" in msg and ("SlowDown" in msg or "503" in msg), msg
    # Not a media verdict: a probe raises the storage error instead of calling the file undecodable.
    with pytest.raises(storage.StorageError):
        media.probe(uri)


FAULTY_INGEST = """
import json, os, sys
from sama.testing.faultproxy import FaultProxy
with FaultProxy(os.environ["UPSTREAM"], rate=0.2, kinds=("slowdown", "reset", "cut_headers"), seed=3) as proxy:
    os.environ["AWS_ENDPOINT_URL"] = proxy.url  # before Ray starts: its workers inherit it
    from sama.jobs import launcher
    from sama.jobs.demo import job_yaml
    out = json.loads(sys.argv[1])[0].split("=", 1)[1]
    launcher.run(job_yaml("ingest"), json.loads(sys.argv[1]))
    launcher.run(job_yaml("precompute"), [f"precompute.manifest={out}/manifest", f"output={out}/pc", *PRECOMPUTE])
    print(json.dumps({"faults": dict(proxy.faults), "requests": dict(proxy.requests)}))
    # then every GET is throttled (the folders still list: the job starts, its Ray tasks fail)
    proxy.rate, proxy.kinds, proxy.methods = 1.0, ("slowdown",), ("GET",)
    from sama.jobs.cli import main
    print("--- dead endpoint ---", file=sys.stderr, flush=True)
    print(json.dumps({"rc": main(["run", job_yaml("ingest"), *json.loads(sys.argv[2])])}))
"""
PRECOMPUTE = ["precompute.shard_size=4"]
FAULTY_INGEST = f"PRECOMPUTE = {PRECOMPUTE!r}\n" + FAULTY_INGEST
PLACE = ("source_uri", "target_uri", "record")  # where the files are: local in one run, s3:// in the other


@pytest.mark.slow
def test_ingest_and_precompute_on_s3_at_20_percent_faults_match_a_clean_run(
    ray_cluster, lookalikes, s3_bucket, s3_server, tmp_path
):
    """The same data ingested and precomputed from local disk without faults, and from and to S3
    through the proxy at 20% faults (its own process and Ray, so every worker speaks through the
    proxy): same tables, value for value."""
    import json

    from sama.jobs import launcher
    from sama.jobs.demo import job_yaml
    from sama.latents import LATENTS
    from sama.schemas import MANIFEST, REJECTS, read_table
    from sama.testing.lookalikes import upload_tree

    names = ("motionbench", "x2edit")  # JSONL + videos, tar shards of images
    base = ["ingest.datasets=null", "ingest.shard_size=4"]
    local = [f"ingest.datasets.{k}.root={lookalikes.roots[k]}" for k in names]
    launcher.run(job_yaml("ingest"), [f"output={tmp_path}/clean", *base, *local])
    launcher.run(
        job_yaml("precompute"),
        [f"precompute.manifest={tmp_path}/clean/manifest", f"output={tmp_path}/clean/pc", *PRECOMPUTE],
    )
    remote = []
    for name in names:
        uri = storage.join(s3_bucket, "data", os.path.basename(lookalikes.roots[name]))
        upload_tree(lookalikes.roots[name], uri)
        remote.append(f"ingest.datasets.{name}.root={uri}")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(UPSTREAM=s3_server, SAMA_STORAGE_RETRIES="12")
    args = [f"output={s3_bucket}/faulty", *base, *remote]
    dead = [f"output={s3_bucket}/dead", *base, *remote]
    res = subprocess.run(
        [sys.executable, "-c", FAULTY_INGEST, json.dumps(args), json.dumps(dead)],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    met = json.loads(res.stdout.strip().splitlines()[-2])["faults"]
    assert sum(met.values()) >= 10 and len(met) == 3, met

    def rows(out: str, schema, key: str) -> list[dict]:
        table = read_table(f"{out}/{key}", schema).to_pylist()
        return sorted(({k: v for k, v in r.items() if k not in PLACE} for r in table), key=lambda r: r["sample_id"])

    clean, faulty = f"{tmp_path}/clean", f"{s3_bucket}/faulty"
    assert rows(faulty, MANIFEST, "manifest") == rows(clean, MANIFEST, "manifest")  # same ids, same probed values
    reasons = lambda out: [(r["sample_id"], r["reason"]) for r in rows(out, REJECTS, "rejects")]  # noqa: E731
    assert reasons(faulty) == reasons(clean)  # no spurious reject
    latents = rows(f"{faulty}/pc", LATENTS, "latents")
    assert latents == rows(f"{clean}/pc", LATENTS, "latents") and len(latents) >= 4  # every sample, same bytes
    pc_rejects = [[] if not storage.list_files(f"{o}/pc/rejects") else reasons(f"{o}/pc") for o in (clean, faulty)]
    assert pc_rejects[0] == pc_rejects[1]

    # A job that fails on storage says so in one line: the URI, the cause, the attempts, what to
    # change; no Ray traceback on the terminal (it is kept in a log the line names).
    assert json.loads(res.stdout.strip().splitlines()[-1]) == {"rc": 3}, res.stderr[-1500:]
    after = res.stderr.split("--- dead endpoint ---", 1)[1]
    line = after.strip().splitlines()[-1]
    assert line.startswith("sama: storage error: ") and s3_bucket in line, line
    assert "gave up after 12 attempts" in line and "SlowDown" in line and "SAMA_STORAGE_RETRIES" in line, line
    assert "Traceback" not in after, after[-3000:]
    log = line.split("traceback in ")[1].split(";")[0]
    assert "StorageError" in open(log).read()
