"""The ``sama`` command: thin parsing over the launcher, the submitter and the demo."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from sama.config import ConfigError


def _parser() -> argparse.ArgumentParser:
    from .registry import JOBS

    kinds = "\n".join(f"  {s.name:<12} {s.summary}" for s in JOBS.values())
    p = argparse.ArgumentParser(
        prog="sama",
        description="SAMA platform: datasets -> training -> serving, on Ray",
        epilog=f"jobs a YAML can name (its `job:` key):\n{kinds}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run a job YAML on $RAY_ADDRESS or an embedded local Ray")
    r.add_argument("job", help="a job YAML (jobs/*.yaml), s3:// URI, or env:NAME")
    r.add_argument("overrides", nargs="*", help="key.sub=value overrides (YAML values)")
    r.add_argument("--dry-run", action="store_true", help="resolve and validate the config, print it, do no work")
    r.add_argument(
        "--cluster",
        help="with --dry-run: a KubeRay RayCluster or cluster launcher YAML the workers "
        "must be placeable on (training jobs)",
    )

    s = sub.add_parser("submit", help="submit a job YAML to a Ray cluster (Job Submission API)")
    s.add_argument("job")
    s.add_argument("overrides", nargs="*")
    s.add_argument("--address", help="the head's dashboard, e.g. http://HEAD:8265 (default: $RAY_ADDRESS)")
    s.add_argument("--wait", action="store_true", help="follow the logs; exit with the job's status")
    s.add_argument("--submission-id", help="default: sama-<job>-<time>-<random>")
    s.add_argument("--dry-run", action="store_true", help="print what would be submitted (secrets masked)")

    k = sub.add_parser("render", help="write the KubeRay manifest of a job YAML (RayJob; RayService for serve)")
    k.add_argument("job", nargs="?", help="a job YAML (omit with --all)")
    k.add_argument("overrides", nargs="*")
    k.add_argument("--kuberay", action="store_true", help="KubeRay manifests (the only target, so the default)")
    k.add_argument("-o", "--output", help="the file (with --all: the folder); default: stdout")
    k.add_argument("--all", metavar="DIR", help="render every job YAML in DIR into -o FOLDER, removing stale ones")
    k.add_argument("--check", action="store_true", help="with --all: write nothing, exit 1 if -o is out of date")
    k.add_argument("--cluster", default="sama", help="the existing RayCluster a RayJob runs on (default: sama)")
    k.add_argument("--own-cluster", action="store_true", help="embed the cluster spec: one cluster per job")
    k.add_argument(
        "--cluster-manifest",
        default="infra/kuberay/raycluster.yaml",
        help="the RayCluster to check requests and secrets against (and to embed)",
    )
    k.add_argument("--image", help="with --own-cluster: the image of every node")
    k.add_argument("--ttl", type=int, default=600, help="with --own-cluster: seconds the cluster outlives the job")
    k.add_argument("--name", help="metadata.name (default: sama-<yaml stem>)")
    k.add_argument("--submission-id", help="spec.jobId (default: none, KubeRay picks one per run)")

    j = sub.add_parser("jobs", help="the jobs a YAML can name; list / status / logs / stop submitted ones")
    j.add_argument("action", nargs="?", choices=["list", "status", "logs", "stop"], help="none: the job kinds")
    j.add_argument("submission_id", nargs="?")
    j.add_argument("--address")
    j.add_argument("--follow", action="store_true", help="logs: follow until the job ends")

    v = sub.add_parser("serve", help="start the edit service (a `job: serve` YAML) and block until Ctrl-C")
    v.add_argument("job", nargs="?", default=None, help="default: the packaged jobs/serve.yaml")
    v.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. serve.editor.num_gpus=1")
    v.add_argument("--dry-run", action="store_true", help="resolve and validate the config, print it, do no work")

    e = sub.add_parser("edit", help="edit a video through a running edit service")
    e.add_argument("video", help="a local file to upload (or, with --remote, a path/s3:// URI the server reads)")
    e.add_argument("instruction", help='what to change, e.g. "make the car red"')
    e.add_argument("--endpoint", default="http://127.0.0.1:8000", help="the service URL (default: %(default)s)")
    e.add_argument("--token", help="bearer token (default: $SAMA_SERVE_TOKEN)")
    e.add_argument("-o", "--output", help="where to write the edited mp4 (default: VIDEO's name + .edited.mp4)")
    e.add_argument("--remote", action="store_true", help="VIDEO is a URI on the server's side, not uploaded")
    e.add_argument("--sync", action="store_true", help="use the synchronous endpoint (short clips)")
    for name, kind in (
        ("seed", int),
        ("steps", int),
        ("guidance-scale", float),
        ("source-guidance-scale", float),
        ("num-frames", int),
        ("height", int),
        ("width", int),
    ):
        e.add_argument(f"--{name}", type=kind)

    c = sub.add_parser(
        "convert",
        help="convert a checkpoint: original Wan / SAMA-release names <-> diffusers",
        description="SRC: a weight file (.safetensors/.pt/.pth/.bin) or a folder of shards, local "
        "or s3://; DST: a diffusers folder (--from), or a release-format file "
        "(*.safetensors) or folder (--to). Overrides: model config keys "
        "(num_attention_heads=40, num_semantic_tokens=65, ...) and dtype=bfloat16, "
        "max_shard_size=5GB, base=<original Wan folder filling missing keys>.",
    )
    way = c.add_mutually_exclusive_group(required=True)
    way.add_argument("--from", dest="from_format", choices=["release", "wan"], help="SRC's format (DST: diffusers)")
    way.add_argument("--to", dest="to_format", choices=["release", "wan"], help="DST's format (SRC: diffusers)")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("overrides", nargs="*", help="key=value (YAML values)")

    g = sub.add_parser(
        "lineage",
        help="the chain of jobs and inputs behind an output folder or checkpoint, down to the raw data",
        description="PATH: any job output (or a table folder inside one), a training run or an exported / "
        "converted model folder, local or s3://.",
    )
    g.add_argument("path")
    g.add_argument("--json", action="store_true", help="print the tree as JSON")

    d = sub.add_parser("demo", help="run every job end to end on generated sample data")
    d.add_argument("--dir", default="sama-demo", help="work folder for data and outputs (default: sama-demo)")
    d.add_argument("-n", type=int, default=3, help="good samples per dataset")

    w = sub.add_parser(
        "learning",
        help="score a finished demo's identity / untrained / stage 0 / stage 1 on a larger held-out world benchmark",
    )
    w.add_argument("dir", help="the demo's work folder (sama demo --dir)")
    w.add_argument("--held-out", type=int, default=40, help="held-out items, the demo's 10 first (default: 40)")
    return p


def _jobs(args) -> int:
    if args.action is None:  # what a YAML's `job:` can name; submissions: `sama jobs list`
        from .registry import JOBS

        print("\n".join(f"{s.name:<18} {s.summary}" for s in JOBS.values()))
        print("\nsubmitted runs on a cluster: sama jobs list|status|logs|stop [ID] --address http://HEAD:8265")
        return 0
    if args.action != "list" and not args.submission_id:
        raise ConfigError(f"sama jobs {args.action} needs a submission id")
    from . import submit

    c = submit.client(args.address)
    if args.action == "list":
        for info in sorted(c.list_jobs(), key=lambda i: i.start_time or 0):
            meta = info.metadata or {}
            print(
                f"{info.submission_id or info.job_id:<40} {info.status.value:<10} {meta.get('sama_job', '-'):<12} "
                f"{meta.get('sama_output', '')}"
            )
        return 0
    if args.action == "status":
        print(c.get_job_status(args.submission_id).value)
    elif args.action == "logs":
        if args.follow:
            return 0 if submit.wait(c, args.submission_id) == "SUCCEEDED" else 1
        print(c.get_job_logs(args.submission_id), end="")
    elif args.action == "stop":
        print("stopped" if c.stop_job(args.submission_id) else "not running")
    return 0


def _serve(args) -> int:
    import os

    from . import launcher

    overrides = list(args.overrides)
    if args.job and "=" in args.job and not os.path.exists(args.job):  # `sama serve key=value`: no YAML given
        overrides, args.job = [args.job, *overrides], None
    path = args.job or os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve.yaml")
    if launcher.job_name(path, overrides) != "serve":
        raise ConfigError(f"{path}: `sama serve` runs a `job: serve` YAML (use `sama run` for other jobs)")
    if args.dry_run:
        print(launcher.dry_run(path, overrides), end="")
        return 0
    launcher.run(path, overrides)
    return 0


def _edit(args) -> int:
    import os

    from sama.serve.client import EditClient, EditError, EditOptions

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    opts = EditOptions(
        seed=args.seed,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        source_guidance_scale=args.source_guidance_scale,
        num_frames=args.num_frames,
        height=args.height,
        width=args.width,
    )
    out = args.output or os.path.splitext(os.path.basename(args.video))[0] + ".edited.mp4"
    with EditClient(args.endpoint, args.token) as c:
        try:
            if args.sync:
                with open(out, "wb") as f:
                    f.write(c.edit_sync(args.video, args.instruction, opts, args.remote))
            else:

                def show(job: dict) -> None:
                    print(
                        f"\r[sama] {job['id'][:8]} {job['state']:<9} {job['progress'] * 100:5.1f}%",
                        end="",
                        file=sys.stderr,
                        flush=True,
                    )

                c.edit(args.video, args.instruction, out, opts, args.remote, on_progress=show)
                print(file=sys.stderr)
        except EditError as err:
            print(f"\nsama edit: {err}", file=sys.stderr)
            return 1
    print(out)
    return 0


def _lineage(args) -> int:
    import json

    from sama.lineage import format_tree, walk

    tree = walk(args.path)
    if tree.get("raw"):
        print(f"sama lineage: {args.path}: no job output here (no summary.json or model_card.json with provenance)")
        return 1
    print(
        json.dumps(tree, indent=2, default=str) if args.json else format_tree(tree), end="" if not args.json else "\n"
    )
    return 0


def _convert(args) -> int:
    import time

    import yaml

    from sama.models.convert import CheckpointError, convert

    overrides = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not key=value")
        overrides[key.strip()] = yaml.safe_load(value)
    start = time.perf_counter()
    try:
        if args.from_format:
            result = convert(args.src, args.dst, args.from_format, "diffusers", overrides=overrides)
        else:
            result = convert(args.src, args.dst, "diffusers", args.to_format, overrides=overrides)
    except CheckpointError as err:
        print(f"sama convert: {err}", file=sys.stderr)
        return 2
    cfg = result.config
    size = {
        k: cfg.get(k)
        for k in (
            "num_layers",
            "num_attention_heads",
            "attention_head_dim",
            "ffn_dim",
            "semantic_dim",
            "num_semantic_tokens",
        )
        if cfg.get(k) is not None
    }
    print(
        f"sama convert: {result.tensors} tensors -> {result.dst} ({result.fmt}; {len(result.files)} file(s)) "
        f"in {time.perf_counter() - start:.1f} s; {size}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # `sama run JOB --dry-run a=1 b=2`: argparse stops collecting overrides at the option;
    # what it left over are overrides too (anything else is still an error).
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.cmd == "run":
            from . import launcher

            if args.dry_run:
                print(launcher.dry_run(args.job, args.overrides, args.cluster), end="")
                return 0
            if args.cluster:
                raise ConfigError("--cluster goes with --dry-run")
            launcher.run(args.job, args.overrides)
        elif args.cmd == "submit":
            from . import submit

            if args.dry_run:
                from . import launcher

                print(json.dumps(submit.build(args.job, args.overrides, args.submission_id).redacted(), indent=2))
                checks = launcher.dry_run(args.job, args.overrides).split("# dry run: nothing was run\n")[1:]
                print("".join(checks), end="", file=sys.stderr)
                return 0
            return submit.submit(args.job, args.overrides, args.address, args.wait, args.submission_id)
        elif args.cmd == "render":
            from . import render

            return render.main(args)
        elif args.cmd == "jobs":
            return _jobs(args)
        elif args.cmd == "serve":
            return _serve(args)
        elif args.cmd == "edit":
            return _edit(args)
        elif args.cmd == "convert":
            return _convert(args)
        elif args.cmd == "lineage":
            return _lineage(args)
        elif args.cmd == "demo":
            from .demo import run_demo

            run_demo(args.dir, args.n)
        elif args.cmd == "learning":
            from .world import rescore

            rescore(args.dir, args.held_out)
    except ConfigError as e:
        print(f"sama: config error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from sama.storage import storage_cause

        cause = storage_cause(e)
        if cause is None or os.environ.get("SAMA_TRACEBACK"):
            raise
        print(
            f"sama: storage error: {cause}; rerunning resumes where it stopped ({keep_traceback(e)})", file=sys.stderr
        )
        return 3
    return 0


def keep_traceback(e: BaseException) -> str:
    """Write ``e``'s traceback to a local log (storage may be what failed); say where."""
    import tempfile
    import time
    import traceback

    folder = os.path.join(tempfile.gettempdir(), "sama-logs")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")
    with open(path, "w") as f:
        traceback.print_exception(e, file=f)
    return f"traceback in {path}; SAMA_TRACEBACK=1 shows it here"


if __name__ == "__main__":
    sys.exit(main())
