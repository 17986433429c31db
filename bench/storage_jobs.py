"""Whole jobs on S3 under faults: requests and bytes per sample of ingest and precompute, and
their time at 0 / 5 / 20 % injected faults.

    python bench/storage_jobs.py --n 4 --baseline-ref fe15ff0^

A moto S3 server on 127.0.0.1 behind ``sama.testing.faultproxy.FaultProxy`` holds look-alikes of
MotionBench (JSONL + videos), X2Edit (tar shards of images) and Ditto-1M (JSON + video pairs).
Every job runs as a user runs it (``sama run``, its own process and Ray, every worker speaking
through the proxy), reading from and writing to S3. Baseline, in the same run: the same jobs of
an older commit (``--baseline-ref``; default: the one before reads went through a buffer and
listings through validated calls), checked out in a temporary worktree, at 0 % faults (it
did not finish under faults). Printed per job: requests by method per sample, KiB per sample, the
ratio baseline/ours, then ours at each fault rate: time, faults met, whether the output
equals the clean run's (same ids, same values, no spurious rejects).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from storage_faults import moto_server  # noqa: E402

DATASETS = ("motionbench", "x2edit", "ditto1m")


def overlay(ref: str) -> tuple[str, str]:
    """(PYTHONPATH under which ``import sama`` is the code at ``ref``, its git worktree)."""
    base = tempfile.mkdtemp(prefix="sama-baseline-")
    wt = os.path.join(base, "wt")
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", wt, ref], check=True, capture_output=True)
    pkg = os.path.join(base, "ov", "sama")
    os.makedirs(pkg)
    for name in os.listdir(os.path.join(wt, "platform")):
        os.symlink(os.path.join(wt, "platform", name), os.path.join(pkg, name))
    for sub in ("pipelines", "serve", "jobs"):
        os.symlink(os.path.join(wt, sub), os.path.join(pkg, sub))
    return os.path.join(base, "ov"), wt


def run_job(job: str, overrides: list[str], env: dict[str, str], code: str = ROOT) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "sama.jobs.cli", "run", os.path.join(code, "jobs", f"{job}.yaml"), *overrides],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if res.returncode != 0:
        raise RuntimeError(f"{job} failed:\n{res.stderr[-2000:]}")
    return time.perf_counter() - t0


def tables(out: str) -> dict[str, list]:
    """Rows of every table the jobs wrote, without the columns that say where the files were."""
    from sama import storage
    from sama.latents import LATENTS
    from sama.schemas import MANIFEST, REJECTS, read_table

    got = {}
    for key, schema in (("ingest/manifest", MANIFEST), ("ingest/rejects", REJECTS), ("pc/latents", LATENTS)):
        if not storage.list_files(f"{out}/{key}"):
            got[key] = []
            continue
        rows = read_table(f"{out}/{key}", schema).to_pylist()
        drop = ("source_uri", "target_uri", "record")
        got[key] = sorted(({k: v for k, v in r.items() if k not in drop} for r in rows), key=lambda r: r["sample_id"])
    return got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=4, help="samples per dataset")
    ap.add_argument("--baseline-ref", default="fe15ff0^", help="git ref of the baseline ('' to skip)")
    args = ap.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x", AWS_REGION="us-east-1")
    os.environ.pop("RAY_ADDRESS", None)

    import boto3

    from sama.testing.faultproxy import FaultProxy
    from sama.testing.lookalikes import make_lookalikes, upload_tree

    with moto_server() as s3, FaultProxy(s3, seed=5) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = s3
        boto3.client("s3", endpoint_url=s3).create_bucket(Bucket="bench")
        local = make_lookalikes(tempfile.mkdtemp(prefix="sama-jobs-bench-"), n=args.n, odd=True, only=list(DATASETS))
        roots = []
        for name in DATASETS:
            uri = f"s3://bench/data/{os.path.basename(local.roots[name])}"
            upload_tree(local.roots[name], uri)
            roots.append(f"ingest.datasets.{name}.root={uri}")
        print(f"{len(DATASETS)} datasets x {args.n} look-alikes on S3 (moto) behind a fault proxy on 127.0.0.1")

        def both(out: str, baseline: tuple[str, str] | None = None) -> dict[str, dict]:
            env = {**os.environ, "AWS_ENDPOINT_URL": proxy.url, "SAMA_STORAGE_RETRIES": "12"}
            code = ROOT
            if baseline:
                env["PYTHONPATH"], code = baseline
            stats = {}
            for job, overrides in (
                ("ingest", [f"output={out}/ingest", "ingest.datasets=null", *roots]),
                ("precompute", [f"output={out}/pc", f"precompute.manifest={out}/ingest/manifest"]),
            ):
                proxy.reset_counts()
                seconds = run_job(job, overrides, env, code)
                stats[job] = {
                    "seconds": seconds,
                    "requests": dict(proxy.requests),
                    "bytes": proxy.bytes_out,
                    "faults": sum(proxy.faults.values()),
                }
            return stats

        def per_sample(stats: dict, out: str) -> dict[str, tuple[dict, float, float]]:
            got = tables(out)
            n = {
                "ingest": len(got["ingest/manifest"]) + len(got["ingest/rejects"]),
                "precompute": len(got["pc/latents"]),
            }
            return {
                job: (
                    {m: round(c / n[job], 1) for m, c in sorted(s["requests"].items())},
                    sum(s["requests"].values()) / n[job],
                    s["bytes"] / n[job] / 1024,
                )
                for job, s in stats.items()
            }

        proxy.rate = 0.0
        runs = {}
        if args.baseline_ref:
            ov = overlay(args.baseline_ref)
            try:
                runs["baseline"] = per_sample(both("s3://bench/base", ov), "s3://bench/base")
            finally:
                subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", ov[1]], capture_output=True)
        clean_stats = both("s3://bench/ours0")
        runs["ours"] = per_sample(clean_stats, "s3://bench/ours0")
        clean = tables("s3://bench/ours0")
        for job in ("ingest", "precompute"):
            for who, r in runs.items():
                by_method, total, kib = r[job]
                print(f"  {job:<10} {who:<8} {total:7.1f} requests/sample {by_method}  {kib:8.1f} KiB/sample")
            if "baseline" in runs:
                ratio = runs["baseline"][job][1] / runs["ours"][job][1]
                print(f"  {job:<10} ratio baseline/ours: {ratio:.1f}x fewer requests")
        for rate in (0.0, 0.05, 0.2):
            proxy.rate, proxy.kinds = rate, ("slowdown", "reset", "cut_headers")
            out = f"s3://bench/ours{int(rate * 100)}"
            stats = clean_stats if rate == 0 else both(out)
            same = tables(out) == clean
            times = ", ".join(f"{j} {s['seconds']:.1f} s" for j, s in stats.items())
            faults = sum(s["faults"] for s in stats.values())
            print(f"  faults {rate:4.0%}: {times}; faults met {faults}; tables equal to the clean run: {same}")
        print(json.dumps({"runs": runs}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
