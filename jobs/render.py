"""``sama render --kuberay``: a job YAML -> a KubeRay manifest (RayJob; RayService for the serve app).

The manifest is built from the same :func:`submit.build` Submission that ``sama submit``
sends (entrypoint, runtime env with the resolved YAML in ``$SAMA_JOB_CONFIG``, metadata,
entrypoint resources), so a rendered RayJob and a submitted job never drift.

Secrets: ``submit.pass_env`` values are never rendered. A manifest is a file that gets
committed and applied, so each name must come from a Kubernetes Secret wired into the
cluster's containers (``env[].valueFrom.secretKeyRef`` in infra/kuberay/raycluster.yaml);
the render refuses, naming the variable, when the target cluster spec does not define it
that way. Ray workers inherit their pod's environment, so the job sees the value.

The target cluster spec (``--cluster-manifest``) is read in both modes: embedded with
``--own-cluster``, and otherwise used to check that the job's resource requests fit a
node and that its secrets are wired, before anything reaches Kubernetes.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from sama import config as C
from sama.serve.settings import replica_placement

from . import launcher, submit

API_VERSION = "ray.io/v1"
CLUSTER_MANIFEST = "infra/kuberay/raycluster.yaml"
SERVE_JOB = "serve"  # the job (and its config section) whose manifest is a RayService, not a RayJob
# KubeRay derives "<name>-raycluster-xxxxx" and "-head-svc" names from a RayJob's name;
# 47 characters keeps those within the 63 of a DNS-1123 label.
MAX_NAME = 47
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
SECRET_PLACEHOLDER = "<from-kubernetes-secret>"
# Config keys that request Ray resources per task/actor; each must fit one node of the cluster.
RESOURCE_KEYS = {
    "num_cpus": "cpus",
    "task_cpus": "cpus",
    "cpus_per_worker": "cpus",
    "num_gpus": "gpus",
    "gpus_per_worker": "gpus",
}
# Keys that make one actor span several processes on one node (STRICT_PACK): its requests times this must fit.
GROUP_KEYS = ("gpus_per_replica", "gpus_per_actor")
# Sections that describe the submitter or an embedded local Ray, not cluster requests.
SKIP_SECTIONS = ("ray", "submit")


@dataclass(frozen=True)
class Target:
    """Where the manifest runs: an existing RayCluster (by name) or one embedded per job."""

    cluster: str = "sama"  # clusterSelector ray.io/cluster
    own_cluster: bool = False
    cluster_manifest: str = CLUSTER_MANIFEST
    image: str | None = None  # replaces every container image of the embedded cluster
    ttl_seconds: int = 600  # own cluster: kept this long after the job ends, for logs


@dataclass(frozen=True)
class Group:
    """What one pod of a head/worker group offers to Ray."""

    name: str
    cpus: float
    gpus: float
    resources: dict[str, float]
    max_pods: int


# --- the RayService's serve app (the serve job plugs in here) ------------------------------


@dataclass
class ServeSpec:
    """How the serve app is deployed on a RayService (``serveConfigV2``'s one application)."""

    app: str = "sama-edit"
    import_path: str = "sama.serve.app:build_app"
    route_prefix: str = "/"
    args: dict[str, Any] = field(default_factory=dict)  # what build_app receives
    deployment: str = "Editor"  # the GPU deployment, autoscaled
    num_gpus: float = 1.0
    num_cpus: float = 1.0
    max_ongoing_requests: int = 1
    autoscaling: dict[str, Any] = field(default_factory=lambda: {"min_replicas": 1, "max_replicas": 2})
    placement: dict[str, Any] = field(default_factory=dict)  # a replica over several GPUs: its placement group

    def validate(self) -> None:
        lo, hi = self.autoscaling.get("min_replicas", 1), self.autoscaling.get("max_replicas", 1)
        init = self.autoscaling.get("initial_replicas")
        init = lo if init is None else init
        if not 0 <= lo <= init <= hi or hi < 1:
            raise ValueError(
                f"autoscaling needs 0 <= min_replicas <= initial_replicas <= max_replicas, max >= 1; "
                f"got {self.autoscaling}"
            )


def serve_spec(serve: dict[str, Any]) -> ServeSpec:
    """The serve job's ``serve:`` section (sama.serve's ServeConfig, as plain data) -> its deployment.

    The whole section is the app's ``args`` (``build_app`` takes a ServeConfig); the editor's
    resources and autoscaling are also rendered as deployment options so they show in the manifest.
    """
    editor = serve.get("editor", {})
    spec = ServeSpec(
        app=serve.get("name", ServeSpec.app),
        route_prefix=serve.get("route_prefix", "/"),
        args=serve,
        num_gpus=editor.get("num_gpus", ServeSpec.num_gpus),
        num_cpus=editor.get("num_cpus", ServeSpec.num_cpus),
        max_ongoing_requests=editor.get("max_ongoing_requests", ServeSpec.max_ongoing_requests),
        autoscaling={
            k: v for k, v in editor.get("autoscaling", {"min_replicas": 1, "max_replicas": 2}).items() if v is not None
        },
    )
    spec.placement = replica_placement(spec.num_gpus, spec.num_cpus, editor.get("gpus_per_replica", 1))
    try:
        spec.validate()
    except ValueError as e:
        raise C.ConfigError(f"serve.editor: {e}") from e
    return spec


# --- YAML out ---------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (runtimeEnvYAML, serveConfigV2, the job YAML) as readable ``|`` blocks."""


def _str(dumper: yaml.SafeDumper, s: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None)


_Dumper.add_representer(str, _str)


def to_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=120)


def dump(manifest: dict, source: str) -> str:
    head = (
        f"# Generated by `sama render --kuberay` from {source}: edit the job YAML and re-render\n"
        f"# (`sama render --all jobs/ -o infra/kuberay/`), never this file.\n"
    )
    return head + to_yaml(manifest)


# --- the cluster spec -------------------------------------------------------------------------


def load_cluster(path: str) -> dict:
    """A RayCluster manifest (the target of a RayJob, or the cluster a RayJob/RayService embeds)."""
    if not os.path.exists(path):
        raise C.ConfigError(
            f"cluster manifest not found: {path} (run from the repository root or pass --cluster-manifest)"
        )
    data = C.load_yaml(path)
    if data.get("kind") != "RayCluster" or data.get("apiVersion") != API_VERSION:
        raise C.ConfigError(f"{path}: expected apiVersion {API_VERSION}, kind RayCluster")
    return data


def _quantity(v: Any) -> float:
    """Kubernetes CPU/GPU quantity ("500m", "16", 8) -> a number."""
    s = str(v)
    return float(s[:-1]) / 1000 if s.endswith("m") else float(s)


def _containers(cluster_spec: dict) -> Iterator[dict]:
    for g in [cluster_spec["headGroupSpec"], *cluster_spec.get("workerGroupSpecs", [])]:
        yield from g["template"]["spec"]["containers"]


def groups(cluster_spec: dict) -> list[Group]:
    """Per-pod Ray resources of each group, as Ray will see them (rayStartParams win over limits)."""
    out = []
    for g in [cluster_spec["headGroupSpec"], *cluster_spec.get("workerGroupSpecs", [])]:
        params = g.get("rayStartParams", {}) or {}
        res = g["template"]["spec"]["containers"][0].get("resources", {})
        lim = {**res.get("requests", {}), **res.get("limits", {})}
        cpus = _quantity(params.get("num-cpus", lim.get("cpu", 0)))
        gpus = _quantity(params.get("num-gpus", lim.get("nvidia.com/gpu", 0)))
        custom = params.get("resources")
        custom = json.loads(custom.strip("'\"").replace('\\"', '"')) if custom else {}
        is_head = g is cluster_spec["headGroupSpec"]
        out.append(
            Group(
                name="head" if is_head else g["groupName"],
                cpus=cpus,
                gpus=gpus,
                resources=custom,
                max_pods=1 if is_head else int(g.get("maxReplicas", g.get("replicas", 0))),
            )
        )
    return out


def secret_env(cluster_spec: dict) -> set[str]:
    """Env var names that every container takes from a Secret (jobs may run on any node)."""
    names = None
    for c in _containers(cluster_spec):
        mine = {e["name"] for e in c.get("env", []) if "secretKeyRef" in (e.get("valueFrom") or {})}
        names = mine if names is None else names & mine
    return names or set()


def _requests(tree: Any, path: str = "") -> Iterator[tuple[str, str, float]]:
    """(dotted key, cpus|gpus, amount) for every per-task/actor resource request in a config tree."""
    if isinstance(tree, dict):
        for g in GROUP_KEYS:
            n = tree.get(g)
            if isinstance(n, int) and n > 1:
                for k in ("num_cpus", "num_gpus"):
                    if isinstance(tree.get(k), (int, float)):
                        yield f"{path}.{g} x {k}", RESOURCE_KEYS[k], float(n * tree[k])
        for k, v in tree.items():
            key = f"{path}.{k}" if path else str(k)
            if not path and k in SKIP_SECTIONS:
                continue
            if k in RESOURCE_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool):
                yield key, RESOURCE_KEYS[k], float(v)
            else:
                yield from _requests(v, key)


def check_fits(cfg_tree: dict, sub: submit.Submission, cluster_spec: dict, source: str) -> None:
    """Every request (entrypoint, tasks, actors) must fit one pod of a group that can exist."""
    live = [g for g in groups(cluster_spec) if g.max_pods > 0]
    asks = [
        ("submit.entrypoint_num_cpus", "cpus", sub.entrypoint_num_cpus),
        ("submit.entrypoint_num_gpus", "gpus", sub.entrypoint_num_gpus),
        *_requests(cfg_tree),
    ]
    for key, kind, amount in asks:
        best = max((getattr(g, kind) for g in live), default=0.0)
        if amount > best:
            raise C.ConfigError(
                f"{source}: {key} = {amount:g} {kind}, but the largest pod of the cluster "
                f"offers {best:g} (groups: {', '.join(f'{g.name}={getattr(g, kind):g}' for g in live)})"
            )
    for name, amount in sub.entrypoint_resources.items():
        if not any(g.resources.get(name, 0) >= amount for g in live):
            raise C.ConfigError(
                f"{source}: submit.entrypoint_resources.{name} = {amount:g}, which no group's "
                f"rayStartParams.resources provides"
            )


def check_secrets(names: Sequence[str], cluster_spec: dict, source: str, manifest: str) -> None:
    wired = secret_env(cluster_spec)
    missing = [n for n in names if n not in wired]
    if missing:
        raise C.ConfigError(
            f"{source}: submit.pass_env names {missing}, which {manifest} does not take from a Kubernetes Secret "
            f"in every container; a manifest never holds secret values: add to each container's env "
            f"`- name: {missing[0]}` with `valueFrom: {{secretKeyRef: {{name: sama-credentials, key: {missing[0]}}}}}`"
        )


# --- the manifests ----------------------------------------------------------------------------


def manifest_name(path: str, job: str) -> str:
    """``sama-<yaml stem>``, made a DNS-1123 label (jobs/precompute_wan.yaml -> sama-precompute-wan)."""
    stem = job if path.startswith(launcher.ENV_PREFIX) else os.path.splitext(os.path.basename(path))[0]
    name = re.sub(r"[^a-z0-9-]+", "-", f"sama-{stem}".lower())[:MAX_NAME].strip("-")
    return check_name(name)


def check_name(name: str) -> str:
    if len(name) > MAX_NAME or not DNS_1123.match(name):
        raise C.ConfigError(
            f"manifest name {name!r} must be a DNS-1123 label of at most {MAX_NAME} characters "
            f"(lowercase letters, digits, '-')"
        )
    return name


def _labels(job: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "sama", "app.kubernetes.io/managed-by": "sama-render", "sama.io/job": job}


def _embedded(cluster: dict, image: str | None) -> dict:
    spec = copy.deepcopy(cluster["spec"])
    if image:
        for c in _containers(spec):
            c["image"] = image
    return spec


def rayjob(sub: submit.Submission, name: str, cluster: dict, target: Target, job_id: str | None = None) -> dict:
    spec: dict[str, Any] = {
        "entrypoint": sub.entrypoint,
        "runtimeEnvYAML": to_yaml(sub.runtime_env),
        "metadata": dict(sub.metadata),
        "entrypointNumCpus": sub.entrypoint_num_cpus,
        "entrypointNumGpus": sub.entrypoint_num_gpus,
        "submissionMode": "K8sJobMode",  # a submitter pod runs `ray job submit` and follows the job
    }
    if sub.entrypoint_resources:
        spec["entrypointResources"] = json.dumps(sub.entrypoint_resources)  # the CRD takes a JSON string
    if job_id:  # optional: without one KubeRay picks a fresh id, so re-creating the RayJob re-runs it
        spec["jobId"] = job_id
    if target.own_cluster:
        spec["rayClusterSpec"] = _embedded(cluster, target.image)
        spec["shutdownAfterJobFinishes"] = True
        spec["ttlSecondsAfterFinished"] = target.ttl_seconds
    else:
        spec["clusterSelector"] = {"ray.io/cluster": target.cluster}
    return {
        "apiVersion": API_VERSION,
        "kind": "RayJob",
        "metadata": {"name": name, "labels": _labels(sub.metadata["sama_job"])},
        "spec": spec,
    }


def serve_config(spec: ServeSpec, runtime_env: dict) -> dict:
    """The ``serveConfigV2`` document: one application, its deployment autoscaled on GPUs."""
    return {
        "applications": [
            {
                "name": spec.app,
                "import_path": spec.import_path,
                "route_prefix": spec.route_prefix,
                "args": spec.args,
                "runtime_env": runtime_env,
                "deployments": [
                    {
                        "name": spec.deployment,
                        "max_ongoing_requests": spec.max_ongoing_requests,
                        "autoscaling_config": spec.autoscaling,
                        "ray_actor_options": {"num_cpus": spec.num_cpus, "num_gpus": spec.num_gpus},
                        **spec.placement,
                    }
                ],
            }
        ]
    }


def rayservice(sub: submit.Submission, spec: ServeSpec, name: str, cluster: dict, target: Target) -> dict:
    """A RayService always owns its cluster (KubeRay upgrades it by swapping whole clusters)."""
    return {
        "apiVersion": API_VERSION,
        "kind": "RayService",
        "metadata": {"name": name, "labels": _labels(sub.metadata["sama_job"])},
        "spec": {
            "serveConfigV2": to_yaml(serve_config(spec, sub.runtime_env)),
            "rayClusterConfig": _embedded(cluster, target.image),
        },
    }


# --- job YAML -> manifest ---------------------------------------------------------------------


@contextlib.contextmanager
def _placeholders(names: Sequence[str]) -> Iterator[None]:
    """submit.build() copies pass_env values from os.environ; a render must never see real ones."""
    saved = {n: os.environ.get(n) for n in names}
    os.environ.update({n: SECRET_PLACEHOLDER for n in names})
    try:
        yield
    finally:
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


def build(path: str, overrides: Sequence[str] = (), submission_id: str | None = None) -> tuple[Any, submit.Submission]:
    """The resolved config and the Submission, with secrets removed from the runtime env."""
    cfg, _ = launcher.resolve(path, overrides)
    with _placeholders(cfg.submit.pass_env):
        sub = submit.build(path, overrides, submission_id)
    env = {k: v for k, v in sub.runtime_env["env_vars"].items() if k not in sub.secrets}
    return cfg, dataclasses.replace(sub, runtime_env={**sub.runtime_env, "env_vars": env})


def render(
    path: str,
    overrides: Sequence[str] = (),
    target: Target = Target(),
    name: str | None = None,
    job_id: str | None = None,
) -> dict:
    """One job YAML -> its KubeRay manifest (RayService for the serve job, RayJob otherwise)."""
    cfg, sub = build(path, overrides, job_id)
    source = sub.metadata["sama_yaml"]
    workdir = sub.runtime_env.get("working_dir")
    if workdir and "://" not in workdir:
        raise C.ConfigError(
            f"{source}: submit.working_dir = {workdir!r} is a local folder, which a RayJob cannot "
            f"upload: bake the code into the image (infra/Dockerfile) or give an s3:// or https:// zip"
        )
    cluster = load_cluster(target.cluster_manifest)
    check_secrets(cfg.submit.pass_env, cluster["spec"], source, target.cluster_manifest)
    check_fits(C.to_dict(cfg), sub, cluster["spec"], source)
    name = check_name(name) if name else manifest_name(path, cfg.job)
    if cfg.job == SERVE_JOB:
        spec = serve_spec(C.to_dict(cfg)[SERVE_JOB])
        return rayservice(sub, spec, name, cluster, target)
    return rayjob(sub, name, cluster, target, job_id)


def file_name(manifest: dict, path: str) -> str:
    return f"{manifest['kind'].lower()}-{os.path.splitext(os.path.basename(path))[0]}.yaml"


def render_all(folder: str, out_dir: str, target: Target = Target(), check: bool = False) -> list[str]:
    """Render every job YAML in ``folder`` into ``out_dir``; stale generated files are removed.

    Returns the files that were (with ``check``: would be) written or removed.
    """
    wanted: dict[str, str] = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith((".yaml", ".yml")):
            path = os.path.join(folder, f)
            m = render(path, target=target)
            wanted[file_name(m, path)] = dump(m, f)
    existing = (
        {f for f in os.listdir(out_dir) if f.startswith(("rayjob-", "rayservice-"))}
        if os.path.isdir(out_dir)
        else set()
    )
    changed = []
    for f, text in wanted.items():
        p = os.path.join(out_dir, f)
        if not os.path.exists(p) or open(p).read() != text:
            changed.append(p)
            if not check:
                os.makedirs(out_dir, exist_ok=True)
                with open(p, "w") as fh:
                    fh.write(text)
    for f in sorted(existing - set(wanted)):
        changed.append(os.path.join(out_dir, f))
        if not check:
            os.remove(os.path.join(out_dir, f))
    return changed


def main(args) -> int:
    """``sama render`` (argparse namespace from jobs/cli.py)."""
    target = Target(
        cluster=args.cluster,
        own_cluster=args.own_cluster,
        cluster_manifest=args.cluster_manifest,
        image=args.image,
        ttl_seconds=args.ttl,
    )
    if args.all:
        if args.job or not args.output:
            raise C.ConfigError("sama render --all DIR takes no job YAML and needs -o FOLDER")
        changed = render_all(args.all, args.output, target, check=args.check)
        verb = "out of date" if args.check else "written"
        for p in changed:
            print(f"[sama] {verb}: {p}", file=sys.stderr)
        return 1 if args.check and changed else 0
    if not args.job:
        raise C.ConfigError("sama render needs a job YAML (or --all DIR)")
    m = render(args.job, args.overrides, target, name=args.name, job_id=args.submission_id)
    text = dump(m, os.path.basename(args.job))
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(text)
        print(f"[sama] {m['kind']} {m['metadata']['name']} -> {args.output}", file=sys.stderr)
    else:
        print(text, end="")
    return 0
