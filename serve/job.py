"""``sama serve jobs/serve.yaml``: deploy the edit service on the launcher's Ray and keep it up.

On an embedded Ray (the default) it blocks until Ctrl-C, then tears the app down; with
``detach: true`` (e.g. on a cluster) it deploys and returns, leaving the app running.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
import time

from ray import serve

from sama.config import JobEntry

from .app import build_app
from .config import ServeJobConfig

log = logging.getLogger(__name__)


def ensure_token(cfg: ServeJobConfig) -> None:
    """A local run with no token set gets a random one (printed), so it is never open by accident."""
    name = cfg.serve.auth.token_env
    if cfg.generate_token and name and not os.environ.get(name):
        os.environ[name] = secrets.token_urlsafe(24)
        print(f"[sama] ${name} was empty: generated a token for this run: {os.environ[name]}", file=sys.stderr)


def url(cfg: ServeJobConfig) -> str:
    host = "127.0.0.1" if cfg.http.host in ("0.0.0.0", "::") else cfg.http.host
    return f"http://{host}:{cfg.http.port}{cfg.serve.route_prefix.rstrip('/')}/"


def deploy(cfg: ServeJobConfig) -> str:
    """Start Serve's HTTP proxy and deploy the app; returns its URL once every replica is up."""
    ensure_token(cfg)
    serve.start(http_options={"host": cfg.http.host, "port": cfg.http.port})
    serve.run(build_app(cfg.serve), name=cfg.serve.name, route_prefix=cfg.serve.route_prefix)
    return url(cfg)


def dry_run(cfg: ServeJobConfig) -> list[str]:
    """What ``sama serve`` would deploy (``--dry-run``): replicas, resources, limits, auth."""
    from sama.buckets import make_buckets

    sv, ed = cfg.serve, cfg.serve.editor
    a = ed.autoscaling
    buckets = make_buckets(sv.buckets)
    lines = [
        f"url: {url(cfg)}",
        f"editor: {a.min_replicas}..{a.max_replicas} replicas x ({ed.num_gpus:g} GPU, {ed.num_cpus:g} CPU), "
        f"{ed.max_ongoing_requests} edit(s) each, target {a.target_ongoing_requests:g} in flight per replica",
        f"ingress: {sv.ingress.num_replicas} replica(s) x {sv.ingress.num_cpus:g} CPU; at most {sv.queue.max_pending} "
        f"edits queued+running each; records under {sv.results or 'a temp folder'}, kept {sv.records.retention_s:g}s",
        f"model: {sv.model.checkpoint or sv.model.transformer.pretrained or 'tiny random model'}, "
        f"{len(buckets)} buckets of ~{sv.buckets.area} px, <= {sv.buckets.max_frames} frames",
        f"limits: {sv.limits.max_upload_mb:g} MB, {sv.limits.max_duration_s:g}s, {sv.limits.max_source_frames} "
        f"frames, {sv.limits.max_side}px; uri roots {sv.limits.allowed_roots}, buckets {sv.limits.allowed_buckets}",
    ]
    name = sv.auth.token_env
    if not name:
        lines.append("warning: auth.token_env is null: the API is open")
    elif not os.environ.get(name):
        lines.append(
            f"auth: ${name} is empty: "
            + (
                "a random token will be generated and printed"
                if cfg.generate_token
                else "the service will refuse to start"
            )
        )
    if sv.model.pipeline.sampler == "unipc" and sv.limits.max_steps > 350:
        lines.append("warning: limits.max_steps > 350 with the unipc sampler (it repeats timesteps beyond ~350)")
    return lines


def run(cfg: ServeJobConfig) -> str:
    address = deploy(cfg)
    print(f"[sama] edit service up at {address}  (API: {address}v1/edits, health: {address}healthz)", file=sys.stderr)
    if cfg.detach:
        return address
    print("[sama] Ctrl-C to stop", file=sys.stderr)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        print("\n[sama] stopping", file=sys.stderr)
    finally:
        serve.delete(cfg.serve.name)
    return address


JOB = JobEntry(ServeJobConfig, run, dry_run)
