"""``sama submit``: run a job YAML on a Ray cluster through the Job Submission API.

The YAML is resolved and validated here, on the submitter's machine (a config
error never reaches the cluster), then shipped whole in the job's runtime
environment as ``$SAMA_JOB_CONFIG``; the entrypoint is ``sama run env:SAMA_JOB_CONFIG``.
The job spec's ``submit`` section is the one owner of ``runtime_env``.
Credentials are never read from the YAML: names listed in ``submit.pass_env`` are
copied from the submitter's environment, and the Ray token (``RAY_AUTH_TOKEN``)
is read by Ray's own client.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sama import config as C

from . import launcher

JOB_ENV = "SAMA_JOB_CONFIG"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


@dataclass
class Submission:
    """Everything ``JobSubmissionClient.submit_job`` is given (also what --dry-run prints)."""

    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]
    submission_id: str
    entrypoint_num_cpus: float
    entrypoint_num_gpus: float
    entrypoint_resources: dict[str, float] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()  # env var names whose values must never be printed

    def kwargs(self) -> dict[str, Any]:
        out = {
            k: getattr(self, k)
            for k in (
                "entrypoint",
                "runtime_env",
                "metadata",
                "submission_id",
                "entrypoint_num_cpus",
                "entrypoint_num_gpus",
            )
        }
        if self.entrypoint_resources:
            out["entrypoint_resources"] = self.entrypoint_resources
        return out

    def redacted(self) -> dict[str, Any]:
        out = self.kwargs()
        env = dict(out["runtime_env"].get("env_vars", {}))
        for name in self.secrets:
            if name in env:
                env[name] = "***"
        out["runtime_env"] = {**out["runtime_env"], "env_vars": env}
        return out


def build(path: str, overrides: Sequence[str] = (), submission_id: str | None = None) -> Submission:
    cfg, _ = launcher.resolve(path, overrides)
    sub: C.SubmitConfig = cfg.submit
    env = dict(sub.env_vars)
    missing = [n for n in sub.pass_env if n not in os.environ]
    if missing:
        raise C.ConfigError(f"{path}: submit.pass_env names {missing}, which are not set in this environment")
    env.update({n: os.environ[n] for n in sub.pass_env})
    env[JOB_ENV] = C.dump_yaml(cfg)
    runtime_env: dict[str, Any] = {"env_vars": env}
    if sub.working_dir:
        runtime_env["working_dir"] = sub.working_dir
    sid = submission_id or f"sama-{cfg.job}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    return Submission(
        entrypoint=f"sama run {launcher.ENV_PREFIX}{JOB_ENV}",
        runtime_env=runtime_env,
        metadata={
            "sama_job": cfg.job,
            "sama_yaml": os.path.basename(path),
            "sama_overrides": " ".join(overrides),
            "sama_output": cfg.output,
        },
        submission_id=sid,
        entrypoint_num_cpus=sub.entrypoint_num_cpus,
        entrypoint_num_gpus=sub.entrypoint_num_gpus,
        entrypoint_resources=dict(sub.entrypoint_resources),
        secrets=tuple(sub.pass_env),
    )


def client(address: str | None):
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_JOBS_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not address:
        raise C.ConfigError("no cluster address: pass --address http://HEAD:8265 or set RAY_ADDRESS")
    return JobSubmissionClient(address)


async def _follow(c, submission_id: str, out=sys.stdout) -> None:
    async for chunk in c.tail_job_logs(submission_id):
        out.write(chunk)
        out.flush()


def wait(c, submission_id: str, follow: bool = True, poll_s: float = 1.0, timeout_s: float | None = None) -> str:
    """Follow the logs until the job ends; returns its final status."""
    if follow:
        asyncio.run(_follow(c, submission_id))
    deadline = time.time() + timeout_s if timeout_s else None
    while True:
        status = str(c.get_job_status(submission_id).value)
        if status in TERMINAL:
            return status
        if deadline and time.time() > deadline:
            raise TimeoutError(f"job {submission_id} still {status} after {timeout_s}s")
        time.sleep(poll_s)


def submit_with_retry(c, s: Submission, budget_s: float = 120.0) -> str:
    """Submit; a head that has just started may not have its job agent yet, so wait for it."""
    deadline, delay = time.time() + budget_s, 1.0
    while True:
        try:
            return c.submit_job(**s.kwargs())
        except RuntimeError as e:
            if "No available agent" not in str(e):
                raise
            if time.time() > deadline:
                raise RuntimeError(
                    f"no job agent on the cluster at {c.get_address()} after {budget_s:.0f}s; the head's "
                    "dashboard agent did not start (a second Ray on the same host holds its port 52365? "
                    "start the head with --dashboard-agent-listen-port=<free port>)"
                ) from e
            print(f"[sama] the cluster's job agent is not up yet; retrying in {delay:.0f}s", file=sys.stderr)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def submit(
    path: str, overrides: Sequence[str], address: str | None, do_wait: bool, submission_id: str | None = None
) -> int:
    s = build(path, overrides, submission_id)
    c = client(address)
    sid = submit_with_retry(c, s)
    print(f"[sama] submitted {sid} ({s.metadata['sama_job']}) to {c.get_address()}", file=sys.stderr)
    if not do_wait:
        print(sid)
        return 0
    status = wait(c, sid)
    print(f"[sama] {sid}: {status}", file=sys.stderr)
    return 0 if status == "SUCCEEDED" else 1
