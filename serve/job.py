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


def run(cfg: ServeJobConfig) -> str:
    address = deploy(cfg)
    print(f"[sama] edit service up at {address}  (API: {address}v1/edits, health: {address}healthz)",
          file=sys.stderr)
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
