"""`sama render --kuberay` and infra/: manifests parse, match a fresh render, fit the cluster, hold no secret.

No KubeRay CRD schema ships on PyPI, so KubeRay's own fields are checked against the
small hand-written JSON schemas below (only the fields we render, with the CRD's types,
e.g. entrypointResources is a JSON *string*); the pod templates inside the RayCluster are
core Kubernetes objects and are validated strictly with kubernetes-validate when installed;
the cluster-launcher config is validated with Ray's own schema (ray-schema.json).
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import zipfile

import jsonschema
import pytest
import tomllib
import yaml

from conftest import REPO
from sama import config as C
from sama.jobs import launcher, render, submit
from sama.jobs.cli import main as sama_main

JOBS_DIR = os.path.join(REPO, "jobs")
KUBERAY = os.path.join(REPO, "infra", "kuberay")
CLUSTER = os.path.join(KUBERAY, "raycluster.yaml")
JOB_YAMLS = sorted(f for f in os.listdir(JOBS_DIR) if f.endswith(".yaml"))
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")

_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_POD_TEMPLATE = {
    "type": "object",
    "required": ["spec"],
    "properties": {
        "spec": {
            "type": "object",
            "required": ["containers"],
            "properties": {"containers": {"type": "array", "minItems": 1}},
        }
    },
}
_GROUP = {
    "type": "object",
    "required": ["rayStartParams", "template"],
    "properties": {"rayStartParams": _STR_MAP, "template": _POD_TEMPLATE},
}
CLUSTER_SPEC = {
    "type": "object",
    "required": ["headGroupSpec", "workerGroupSpecs"],
    "properties": {
        "rayVersion": {"type": "string"},
        "enableInTreeAutoscaling": {"type": "boolean"},
        "headGroupSpec": _GROUP,
        "workerGroupSpecs": {
            "type": "array",
            "items": {
                "allOf": [
                    _GROUP,
                    {
                        "required": ["groupName", "replicas", "minReplicas", "maxReplicas"],
                        "properties": {
                            "groupName": {"type": "string"},
                            "replicas": {"type": "integer", "minimum": 0},
                            "minReplicas": {"type": "integer", "minimum": 0},
                            "maxReplicas": {"type": "integer", "minimum": 0},
                        },
                    },
                ]
            },
        },
    },
}
_META = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "labels": _STR_MAP}}
SCHEMAS = {
    "RayCluster": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"apiVersion": {"const": "ray.io/v1"}, "metadata": _META, "spec": CLUSTER_SPEC},
    },
    "RayJob": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "ray.io/v1"},
            "metadata": _META,
            "spec": {
                "type": "object",
                "required": ["entrypoint", "runtimeEnvYAML"],
                "additionalProperties": False,
                "properties": {
                    "entrypoint": {"type": "string"},
                    "runtimeEnvYAML": {"type": "string"},
                    "metadata": _STR_MAP,
                    "entrypointNumCpus": {"type": "number"},
                    "entrypointNumGpus": {"type": "number"},
                    "entrypointResources": {"type": "string"},
                    "jobId": {"type": "string"},
                    "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
                    "clusterSelector": _STR_MAP,
                    "rayClusterSpec": CLUSTER_SPEC,
                    "shutdownAfterJobFinishes": {"type": "boolean"},
                    "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
                },
                "oneOf": [{"required": ["clusterSelector"]}, {"required": ["rayClusterSpec"]}],
            },
        },
    },
    "RayService": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "ray.io/v1"},
            "metadata": _META,
            "spec": {
                "type": "object",
                "required": ["serveConfigV2", "rayClusterConfig"],
                "properties": {"serveConfigV2": {"type": "string"}, "rayClusterConfig": CLUSTER_SPEC},
            },
        },
    },
}


def check_structure(m: dict) -> None:
    jsonschema.validate(m, SCHEMAS[m["kind"]])
    assert DNS_1123_LABEL.match(m["metadata"]["name"]) and len(m["metadata"]["name"]) <= render.MAX_NAME


def cluster() -> dict:
    with open(CLUSTER) as f:
        return yaml.safe_load(f)


def workers(spec: dict) -> dict[str, dict]:
    return {g["groupName"]: g for g in spec["workerGroupSpecs"]}


def gpus_per_pod(group: dict) -> int:
    return int(group["template"]["spec"]["containers"][0]["resources"].get("limits", {}).get("nvidia.com/gpu", 0))


def in_repo(monkeypatch) -> None:
    monkeypatch.chdir(REPO)  # the default --cluster-manifest is relative, like the CLI run from the repo root


def pinned() -> dict[str, str]:
    lines = open(os.path.join(REPO, "infra", "constraints-gpu.txt")).read().splitlines()
    return dict(ln.split("==") for ln in (ln.strip() for ln in lines) if ln and not ln.startswith("#"))


# --- the cluster, the image -------------------------------------------------------------------


def test_raycluster_has_head_cpu_and_gpu_groups_with_sane_autoscaling():
    m = cluster()
    check_structure(m)
    spec = m["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    groups = workers(spec)
    assert {"cpu", "gpu"} <= set(groups)
    for g in groups.values():
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == gpu["requests"]["nvidia.com/gpu"] >= 1  # GPUs can't overcommit
    assert gpus_per_pod(groups["cpu"]) == 0 and groups["gpu"]["maxReplicas"] >= 1


def test_raycluster_image_and_ray_version_match_the_build():
    spec = cluster()["spec"]
    version = tomllib.load(open(os.path.join(REPO, "pyproject.toml"), "rb"))["project"]["version"]
    images = {c["image"] for c in render._containers(spec)}
    assert images == {f"sama-platform:{version}"}
    assert spec["rayVersion"] == pinned()["ray"]


def test_raycluster_credentials_come_only_from_secrets():
    for c in render._containers(cluster()["spec"]):
        names = [e["name"] for e in c["env"]]
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"} <= set(names)
        for e in c["env"]:
            assert "value" not in e and "secretKeyRef" in e["valueFrom"], e


def test_gpu_pins_satisfy_pyproject_and_the_dockerfile_installs_the_wheel():
    from packaging.requirements import Requirement

    pins = pinned()
    deps = tomllib.load(open(os.path.join(REPO, "pyproject.toml"), "rb"))["project"]["dependencies"]
    for dep in map(Requirement, deps):
        name = dep.name.lower()
        assert name in pins, f"infra/constraints-gpu.txt pins no {name}"
        assert dep.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} vs pyproject {dep}"
    docker = open(os.path.join(REPO, "infra", "Dockerfile")).read()
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\S+", docker, re.M) and "FROM ${CUDA_IMAGE}" in docker
    assert "ffmpeg" in docker and "/opt/sama/src" in docker and " -e " not in docker  # non-editable


@pytest.mark.slow
def test_wheel_holds_every_subpackage_and_the_job_yamls(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", REPO, "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    (whl,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    for folder, pkg in (
        ("platform", "sama"),
        ("pipelines", "sama/pipelines"),
        ("serve", "sama/serve"),
        ("jobs", "sama/jobs"),
    ):
        for d, _, files in os.walk(os.path.join(REPO, folder)):
            for f in files:
                if f.endswith((".py", ".yaml")):
                    rel = os.path.relpath(os.path.join(d, f), os.path.join(REPO, folder))
                    assert f"{pkg}/{rel}" in names, f"{folder}/{rel} is missing from the wheel"
    assert not any(n.split("/")[0] in ("platform", "pipelines", "serve", "jobs") for n in names)


@pytest.mark.skipif(
    not __import__("importlib").util.find_spec("kubernetes_validate"), reason="kubernetes-validate not installed"
)
def test_pod_templates_are_valid_kubernetes_strictly():
    import kubernetes_validate

    spec = cluster()["spec"]
    for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        doc = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": g["template"]}
        kubernetes_validate.validate(doc, "1.30", strict=True)


def test_cluster_launcher_config_passes_rays_own_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    with open(os.path.join(REPO, "infra", "cluster-launcher", "aws.yaml")) as f:
        data = yaml.safe_load(f)
    validate_config(prepare_config(copy.deepcopy(data)))  # Ray's ray-schema.json, defaults filled in
    k8s_image = {c["image"] for c in render._containers(cluster()["spec"])}.pop()
    assert data["docker"]["image"].rsplit("/", 1)[-1] == k8s_image  # both launchers run the same build
    types = data["available_node_types"]
    assert types[data["head_node_type"]]["resources"] == {"CPU": 0} and types["gpu"]["max_workers"] >= 1
    for t in types.values():
        assert t.get("min_workers", 0) <= t.get("max_workers", 0) <= data["max_workers"]


# --- rendering every job YAML -----------------------------------------------------------------


@pytest.mark.parametrize("own", [False, True], ids=["cluster-selector", "own-cluster"])
@pytest.mark.parametrize("name", JOB_YAMLS)
def test_every_job_yaml_renders_a_valid_manifest(name, own, monkeypatch):
    in_repo(monkeypatch)
    path = os.path.join("jobs", name)
    m = yaml.safe_load(render.dump(render.render(path, target=render.Target(own_cluster=own)), name))
    check_structure(m)
    spec = m["spec"]
    cfg, _ = launcher.resolve(path)
    sub = submit.build(path)
    if cfg.job == render.SERVE_JOB:
        assert m["kind"] == "RayService"
        (app,) = yaml.safe_load(spec["serveConfigV2"])["applications"]
        assert app["import_path"] == "sama.serve.app:build_app"
        assert app["args"] == C.to_dict(cfg)["serve"]  # build_app receives the job's ServeConfig
        runtime_env = app["runtime_env"]
        cl = spec["rayClusterConfig"]
        asks = [app["deployments"][0]["ray_actor_options"]["num_gpus"]]
    else:
        assert m["kind"] == "RayJob"
        assert spec["entrypoint"] == sub.entrypoint == "sama run env:SAMA_JOB_CONFIG"
        assert spec["metadata"]["sama_job"] == cfg.job and spec["metadata"]["sama_yaml"] == name
        assert (spec["entrypointNumCpus"], spec["entrypointNumGpus"]) == (
            sub.entrypoint_num_cpus,
            sub.entrypoint_num_gpus,
        )
        assert "jobId" not in spec  # each run of a re-created RayJob gets a fresh id
        runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
        cl = spec.get("rayClusterSpec") or cluster()["spec"]
        asks = [spec["entrypointNumGpus"]]
        if own:
            assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] >= 0
        else:
            assert spec["clusterSelector"] == {"ray.io/cluster": cluster()["metadata"]["name"]}
    if own or m["kind"] == "RayService":
        assert cl == cluster()["spec"]  # the embedded cluster is infra/kuberay/raycluster.yaml's
    assert max(asks) <= max(gpus_per_pod(g) for g in cl["workerGroupSpecs"])

    # The shipped YAML resolves, through the launcher, to exactly the config `sama run` would use.
    monkeypatch.setenv(submit.JOB_ENV, runtime_env["env_vars"][submit.JOB_ENV])
    shipped, _ = launcher.resolve(f"env:{submit.JOB_ENV}")
    assert C.to_dict(shipped) == C.to_dict(cfg)


def test_committed_manifests_equal_a_fresh_render(monkeypatch):
    in_repo(monkeypatch)
    stale = render.render_all("jobs", "infra/kuberay", check=True)
    assert stale == [], f"out of date: {stale}; regenerate with `sama render --all jobs/ -o infra/kuberay/`"
    rendered = {f.split("-", 1)[1] for f in os.listdir(KUBERAY) if f.startswith(("rayjob-", "rayservice-"))}
    assert set(JOB_YAMLS) <= rendered


def test_cli_render_to_a_file_and_the_all_check(monkeypatch, tmp_path, capsys):
    in_repo(monkeypatch)
    out = tmp_path / "ingest.yaml"
    args = [
        "render",
        "jobs/ingest.yaml",
        "output=s3://b/ingest",
        "--kuberay",
        "--own-cluster",
        "--image",
        "reg.example/sama:1",
        "--submission-id",
        "ingest-7",
        "-o",
        str(out),
    ]
    assert sama_main(args) == 0
    m = yaml.safe_load(out.read_text())
    assert m["spec"]["jobId"] == "ingest-7" and m["spec"]["metadata"]["sama_overrides"] == "output=s3://b/ingest"
    assert {c["image"] for c in render._containers(m["spec"]["rayClusterSpec"])} == {"reg.example/sama:1"}
    assert sama_main(["render", "--all", "jobs", "-o", str(tmp_path / "k"), "--kuberay"]) == 0
    assert sama_main(["render", "--all", "jobs", "-o", str(tmp_path / "k"), "--check"]) == 0
    (tmp_path / "k" / "rayjob-gone.yaml").write_text("stale")
    assert sama_main(["render", "--all", "jobs", "-o", str(tmp_path / "k"), "--check"]) == 1
    assert sama_main(["render", "jobs/ingest.yaml", "--name", "Not_DNS"]) == 2
    assert "DNS-1123" in capsys.readouterr().err


# --- refusals: secrets, resources, working_dir --------------------------------------------------


def _job(tmp_path, **submit_section) -> str:
    data = C.load_yaml(os.path.join(JOBS_DIR, "ingest.yaml"))
    data["submit"] = submit_section
    p = tmp_path / "ingest_secret.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


def test_pass_env_secrets_are_never_rendered(monkeypatch, tmp_path):
    in_repo(monkeypatch)
    secret = "s3cr3t-" + os.urandom(8).hex()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    path = _job(tmp_path, pass_env=["AWS_SECRET_ACCESS_KEY"], env_vars={"LOG_LEVEL": "debug"})
    for own in (False, True):
        text = render.dump(render.render(path, target=render.Target(own_cluster=own)), "x")
        assert secret not in text and render.SECRET_PLACEHOLDER not in text
        env = yaml.safe_load(yaml.safe_load(text)["spec"]["runtimeEnvYAML"])["env_vars"]
        assert "AWS_SECRET_ACCESS_KEY" not in env and env["LOG_LEVEL"] == "debug"  # plain settings do ship
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == secret  # the renderer's environment is left as it was
    assert submit.build(path).runtime_env["env_vars"]["AWS_SECRET_ACCESS_KEY"] == secret  # `sama submit` forwards it


def test_pass_env_not_wired_from_a_secret_is_refused(monkeypatch, tmp_path):
    in_repo(monkeypatch)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(C.ConfigError, match=r"HF_TOKEN.*secretKeyRef"):
        render.render(_job(tmp_path, pass_env=["HF_TOKEN"]))
    assert "HF_TOKEN" not in os.environ


def test_requests_that_fit_no_pod_are_refused(monkeypatch):
    in_repo(monkeypatch)
    with pytest.raises(C.ConfigError, match=r"submit.entrypoint_num_gpus = 16 gpus.*offers 8"):
        render.render("jobs/ingest.yaml", ["submit.entrypoint_num_gpus=16"])
    with pytest.raises(C.ConfigError, match=r"precompute.encode.num_gpus = 9 gpus"):
        render.render("jobs/precompute_wan.yaml", ["precompute.encode.num_gpus=9"])
    # A replica over 8 processes asks for 8 x its per-process CPUs on one node.
    with pytest.raises(C.ConfigError, match=r"serve.editor.gpus_per_replica x num_cpus = 72 cpus.*offers 64"):
        render.render("jobs/serve_sama14b.yaml", ["serve.editor.num_cpus=9"])
    with pytest.raises(C.ConfigError, match=r"entrypoint_resources.TPU"):
        render.render("jobs/ingest.yaml", ["submit.entrypoint_resources={TPU: 4}"])
    # A cluster whose GPU group can never scale up offers no GPU at all.
    spec = copy.deepcopy(cluster()["spec"])
    workers(spec)["gpu"]["maxReplicas"] = 0
    sub = submit.build("jobs/precompute_wan.yaml")
    with pytest.raises(C.ConfigError, match="offers 0"):
        render.check_fits(C.to_dict(launcher.resolve("jobs/precompute_wan.yaml")[0]), sub, spec, "x")


def test_local_working_dir_is_refused(monkeypatch, tmp_path):
    in_repo(monkeypatch)
    with pytest.raises(C.ConfigError, match="local folder"):
        render.render(_job(tmp_path, working_dir="."))
    m = render.render(_job(tmp_path, working_dir="s3://b/code.zip"))
    assert yaml.safe_load(m["spec"]["runtimeEnvYAML"])["working_dir"] == "s3://b/code.zip"


def test_entrypoint_resources_render_as_the_crds_json_string(monkeypatch):
    in_repo(monkeypatch)
    spec = copy.deepcopy(cluster()["spec"])
    workers(spec)["gpu"]["rayStartParams"]["resources"] = '"{\\"H100\\": 8}"'
    sub = submit.build("jobs/ingest.yaml", ["submit.entrypoint_resources={H100: 1}"])
    render.check_fits({}, sub, spec, "x")
    m = render.rayjob(sub, "sama-ingest", {"spec": spec}, render.Target())
    check_structure(m)
    assert json.loads(m["spec"]["entrypointResources"]) == {"H100": 1.0}


# --- the RayService -----------------------------------------------------------------------------

SERVE_SECTION = {  # the shape of sama.serve's ServeConfig, as plain data (jobs/serve.yaml's `serve:`)
    "name": "sama-edit",
    "route_prefix": "/",
    "results": "s3://b/results",
    "model": {"checkpoint": "s3://b/models/sama-14b"},
    "editor": {
        "num_gpus": 1.0,
        "num_cpus": 4.0,
        "max_ongoing_requests": 1,
        "autoscaling": {
            "min_replicas": 1,
            "max_replicas": 8,
            "initial_replicas": None,
            "target_ongoing_requests": 1.0,
            "downscale_delay_s": 600.0,
        },
    },
}


def test_rayservice_from_a_serve_config():
    spec = render.serve_spec(SERVE_SECTION)
    sub = submit.Submission(
        entrypoint="-",
        runtime_env={"env_vars": {submit.JOB_ENV: "job: serve\n"}},
        metadata={"sama_job": "serve", "sama_yaml": "serve.yaml"},
        submission_id="-",
        entrypoint_num_cpus=1,
        entrypoint_num_gpus=0,
    )
    m = render.rayservice(sub, spec, "sama-serve", cluster(), render.Target(image="reg/sama:2"))
    check_structure(m)
    (app,) = yaml.safe_load(m["spec"]["serveConfigV2"])["applications"]
    assert app["import_path"] == "sama.serve.app:build_app" and app["name"] == "sama-edit"
    assert app["args"] == SERVE_SECTION  # build_app receives the ServeConfig
    assert app["runtime_env"] == sub.runtime_env
    (dep,) = app["deployments"]
    auto = dep["autoscaling_config"]
    assert dep["name"] == "Editor" and "initial_replicas" not in auto
    assert 1 <= auto["min_replicas"] <= auto["max_replicas"] == 8
    gpu_groups = [g for g in m["spec"]["rayClusterConfig"]["workerGroupSpecs"] if gpus_per_pod(g)]
    assert gpu_groups and dep["ray_actor_options"]["num_gpus"] <= max(map(gpus_per_pod, gpu_groups))
    # The 14B editor: one replica over one node's 8 GPUs, in one placement group packed on it.
    dep14 = render.serve_config(render.serve_spec(C.load_yaml("jobs/serve_sama14b.yaml")["serve"]), {})
    (dep14,) = dep14["applications"][0]["deployments"]
    assert dep14["placement_group_strategy"] == "STRICT_PACK"
    assert dep14["placement_group_bundles"] == [{"CPU": 7, "GPU": 1}] * 8
    assert {c["image"] for c in render._containers(m["spec"]["rayClusterConfig"])} == {"reg/sama:2"}


def test_serve_autoscaling_bounds_are_checked():
    bad = {**SERVE_SECTION, "editor": {"autoscaling": {"min_replicas": 3, "max_replicas": 2}}}
    with pytest.raises(C.ConfigError, match="min_replicas"):
        render.serve_spec(bad)
