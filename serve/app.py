"""``build_app``: the typed application builder, the one way the service is assembled.

The same import path works from everywhere::

    serve run sama.serve.app:build_app config=jobs/serve.yaml model.checkpoint=s3://b/sama editor.num_gpus=1
    # RayService serveConfigV2:
    #   applications: [{name: sama-edit, import_path: "sama.serve.app:build_app",
    #                   args: {config: /app/jobs/serve.yaml, editor: {num_gpus: 1}}}]
    sama serve jobs/serve.yaml        # the launcher calls build_app(cfg.serve)

``args`` is a :class:`ServeConfig` or a mapping: nested keys (``{editor: {num_gpus: 1}}``)
and dotted ones (``editor.num_gpus: "1"``, values parsed as YAML, as ``serve run``
passes strings) both work; ``config`` names a YAML file whose ``serve:`` section (or
whole body, for a file without ``job:``) is the base. Unknown keys fail loudly.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from ray.serve import Application

from sama import config as C

from .config import ServeConfig
from .editor import Editor
from .ingress import Ingress

log = logging.getLogger(__name__)


def resolve_args(args: ServeConfig | Mapping[str, Any] | None) -> ServeConfig:
    if isinstance(args, ServeConfig):
        return args
    args = dict(args or {})
    base: dict[str, Any] = {}
    source = "<build_app args>"
    path = args.pop("config", None)
    if path:
        data = C.load_yaml(path)
        base = data.get("serve", {}) if "job" in data else data
        source = path
    nested = {k: v for k, v in args.items() if "." not in k}
    overrides = [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in args.items() if "." in k]
    merged = C.apply_overrides(_merge(base, nested), overrides)
    return C.from_dict(ServeConfig, merged, source=source)


def _merge(base: dict, top: Mapping) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def read_token(cfg: ServeConfig) -> str | None:
    """The bearer token, from the environment of the process that builds the app."""
    name = cfg.auth.token_env
    if not name:
        log.warning("auth.token_env is null: the edit API is open to anyone who can reach it")
        return None
    token = os.environ.get(name, "").strip()
    if token:
        return token
    if cfg.auth.required:
        raise C.ConfigError(
            f"auth: ${name} is empty; set it to the bearer token clients must send "
            "(or set auth.required=false to run without auth)"
        )
    log.warning("$%s is empty and auth.required is false: the edit API is open", name)
    return None


def build_app(args: ServeConfig | Mapping[str, Any] | None = None) -> Application:
    cfg = resolve_args(args)
    ed = cfg.editor
    editor = Editor.options(
        **ed.placement(),
        max_ongoing_requests=ed.max_ongoing_requests,
        max_queued_requests=ed.max_queued_requests,
        autoscaling_config=ed.autoscaling.as_ray(),
        health_check_period_s=ed.health_check_period_s,
        graceful_shutdown_timeout_s=ed.graceful_shutdown_timeout_s,
    ).bind(cfg.model, ed.max_running, ed.group())
    ingress = Ingress.options(
        num_replicas=cfg.ingress.num_replicas,  # records live on the results storage (serve/jobstore.py)
        ray_actor_options={"num_cpus": cfg.ingress.num_cpus},
        max_ongoing_requests=cfg.ingress.max_ongoing_requests,
    )
    return ingress.bind(editor, cfg.ingress_settings(), read_token(cfg))
