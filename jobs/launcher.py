"""Run a job YAML: parse -> resolve config -> connect Ray -> run -> clean up."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import ray

from sama import config as C
from sama import storage

from .registry import JOBS

log = logging.getLogger("sama")


ENV_PREFIX = "env:"  # a job YAML passed in an environment variable (how `sama submit` ships it)


def read_job_yaml(path: str) -> dict:
    """A job YAML from a file, an s3:// object, or ``env:NAME`` (the YAML text in $NAME)."""
    if path.startswith(ENV_PREFIX):
        import yaml

        name = path[len(ENV_PREFIX) :]
        if name not in os.environ:
            raise C.ConfigError(f"{path}: environment variable {name} is not set")
        data = yaml.safe_load(os.environ[name]) or {}
        if not isinstance(data, dict):
            raise C.ConfigError(f"{path}: the top level must be a mapping")
        return data
    return C.load_yaml(path)


def job_name(path: str, overrides: Sequence[str] = ()) -> str:
    data = C.apply_overrides(read_job_yaml(path), overrides)
    name = data.get("job")
    if not name:
        raise C.ConfigError(f"{path}: missing top-level key 'job' (one of {sorted(JOBS)})")
    if name not in JOBS:
        raise C.ConfigError(f"{path}: unknown job '{name}' (known: {sorted(JOBS)})")
    return name


def resolve(path: str, overrides: Sequence[str] = (), entry=None) -> tuple[Any, Any]:
    """The job's typed config (defaults < YAML < overrides) and its entry point."""
    entry = entry or JOBS[job_name(path, overrides)].load()
    return C.load(entry.config, path, overrides, data=read_job_yaml(path)), entry.run


def write_config(cfg) -> None:
    """The resolved config into the output; a first check that the output is writable (a missing
    bucket, a read-only folder), naming it, before Ray starts."""
    uri = storage.join(cfg.output, "config.yaml")
    text = C.dump_yaml(cfg)
    try:
        if storage.exists(uri) and storage.read_text(uri) == text:
            return  # a rerun with the same config writes nothing
        storage.write_text(uri, text)
    except Exception as e:  # noqa: BLE001 - whatever the storage raises, the user needs the path
        cause = getattr(e, "response", {}).get("Error", {}).get("Code") or f"{type(e).__name__}: {e}"
        raise C.ConfigError(f"output={cfg.output}: cannot write there ({cause})") from e


def dry_run(path: str, overrides: Sequence[str] = (), cluster: str | None = None) -> str:
    """The resolved config plus the job's own checks (its ``JOB.dry_run``: e.g. the parts it
    would run, resource consistency, model sizes on the meta device). Does no work.
    ``cluster``: a KubeRay RayCluster or cluster launcher YAML the job's workers must fit on."""
    import inspect

    name = job_name(path, overrides)
    entry = JOBS[name].load()
    cfg = C.load(entry.config, path, overrides, data=read_job_yaml(path))
    text = C.dump_yaml(cfg)
    check = entry.dry_run
    kwargs = {}
    if cluster is not None:
        from sama.clusters import load_cluster

        if check is None or "cluster" not in inspect.signature(check).parameters:
            raise C.ConfigError(f"{path}: --cluster checks worker placement, which job '{name}' does not plan")
        try:
            kwargs["cluster"] = load_cluster(cluster)
        except (OSError, ValueError, KeyError) as e:
            raise C.ConfigError(f"--cluster {cluster}: {e}") from e
    if check is not None:
        try:
            lines = check(cfg, **kwargs)
        except ValueError as e:
            raise C.ConfigError(f"{path}: {e}") from e
        text += "# dry run: nothing was run\n" + "".join(f"# {line}\n" for line in lines)
    return text


# An embedded Ray runs short jobs: Ray Train's controller polls its workers every 2 s by default,
# and each launch waits on a few of those polls. A warm tiny 3-step training launch, 2 cores:
# 18.6-21.8 s at 2 s, 16.3-18.7 s at 0.25 s (0.5 s: no clear gain). Defaults only: a value
# already in the environment wins.
LOCAL_RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25"}


def local_ray_env() -> None:
    """Set :data:`LOCAL_RAY_ENV`'s defaults, before a local Ray starts (its processes inherit them)."""
    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)


def connect(ray_cfg: C.RayConfig) -> bool:
    """Join ``ray.address`` / $RAY_ADDRESS, else start an embedded local Ray. True if we started it."""
    if ray.is_initialized():
        return False
    address = ray_cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return False
    local_ray_env()
    ray.init(num_cpus=ray_cfg.num_cpus, num_gpus=ray_cfg.num_gpus, include_dashboard=False, log_to_driver=True)
    return True


@contextlib.contextmanager
def session(ray_cfg: C.RayConfig | None = None) -> Iterator[None]:
    """One Ray for a sequence of jobs (the demo's): joined or started once, stopped at the end, where
    each :func:`run` alone would start and stop an embedded Ray of its own (seconds each)."""
    started = connect(ray_cfg or C.RayConfig())
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def run(path: str, overrides: Sequence[str] = ()) -> Any:
    job = JOBS[job_name(path, overrides)].load()
    cfg, entry = resolve(path, overrides, job)
    # Workers may run in another directory (an existing cluster's, Ray Train's): a relative
    # local output would land there, so it is made absolute here, against the caller's cwd.
    cfg = dataclasses.replace(cfg, output=storage.normalize(cfg.output))
    if job.preflight is not None:
        job.preflight(cfg)
    write_config(cfg)
    started = connect(cfg.ray)
    t0 = time.time()
    try:
        result = entry(cfg)
        print(f"[sama] {cfg.job} finished in {time.time() - t0:.1f}s; outputs in {cfg.output}", file=sys.stderr)
        return result
    finally:
        if started:
            ray.shutdown()
