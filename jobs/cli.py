"""The ``sama`` command: thin parsing over the launcher."""

from __future__ import annotations

import argparse
import logging
import sys

from sama.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sama", description="SAMA platform: datasets -> training -> serving, on Ray")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run a job YAML on $RAY_ADDRESS or an embedded local Ray")
    r.add_argument("job", help="path to a job YAML (jobs/*.yaml)")
    r.add_argument("overrides", nargs="*", help="key.sub=value overrides (YAML values)")
    r.add_argument("--dry-run", action="store_true", help="resolve and validate the config, print it, do no work")

    d = sub.add_parser("demo", help="run every job end to end on generated sample data")
    d.add_argument("--dir", default="sama-demo", help="work folder for data and outputs (default: sama-demo)")
    d.add_argument("-n", type=int, default=3, help="good samples per dataset")

    sub.add_parser("jobs", help="list the jobs a YAML can name")

    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.cmd == "run":
            from . import launcher

            if args.dry_run:
                from sama.config import dump_yaml

                cfg, _ = launcher.resolve(args.job, args.overrides)
                print(dump_yaml(cfg), end="")
                return 0
            launcher.run(args.job, args.overrides)
        elif args.cmd == "demo":
            from .demo import run_demo

            run_demo(args.dir, args.n)
        elif args.cmd == "jobs":
            from .registry import JOBS

            for s in JOBS.values():
                print(f"{s.name:<12} {s.summary}")
    except ConfigError as e:
        print(f"sama: config error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
