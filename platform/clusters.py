"""What a cluster definition offers per node: read from a KubeRay RayCluster or a Ray cluster
launcher (AWS) YAML, so a dry run can say whether a job's workers can be placed at all.

Ray schedules by logical resources: a node's ``memory`` resource is what is left after the
object store, which Ray sizes at 30% of the node's memory (at most 200 GiB) unless told.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

import yaml

# Instance types the AWS launcher file may name without a `resources:` block.
INSTANCE_TYPES = {  # vCPU, memory GiB, GPUs, GPU type
    "p5.48xlarge": (192, 2048, 8, "H100"),
    "p5e.48xlarge": (192, 2048, 8, "H200"),
    "p5en.48xlarge": (192, 2048, 8, "H200"),
    "p4d.24xlarge": (96, 1152, 8, "A100"),
    "p4de.24xlarge": (96, 1152, 8, "A100"),
    "g6e.48xlarge": (192, 1536, 8, "L40S"),
    "m6i.2xlarge": (8, 32, 0, None),
    "m6i.4xlarge": (16, 64, 0, None),
}


@dataclass
class NodeGroup:
    name: str
    cpus: float
    memory_gib: float
    gpus: int
    max_nodes: int
    gpu_type: Optional[str] = None

    @property
    def schedulable_memory_gib(self) -> float:
        """Ray's ``memory`` resource on such a node (its memory less the object store)."""
        return self.memory_gib - min(0.3 * self.memory_gib, 200.0)


def _quantity(value: Any, kind: str) -> float:
    """A Kubernetes quantity: cpu "500m" -> 0.5, memory "512Gi" -> 512 (GiB)."""
    s = str(value).strip()
    if kind == "cpu":
        return float(s[:-1]) / 1000 if s.endswith("m") else float(s)
    m = re.fullmatch(r"([\d.]+)\s*([KMGTP]i?|)", s)
    if not m:
        raise ValueError(f"memory quantity {value!r}")
    scale = {
        "": 1 / 2**30,
        "K": 1e3 / 2**30,
        "M": 1e6 / 2**30,
        "G": 1e9 / 2**30,
        "T": 1e12 / 2**30,
        "Ki": 1 / 2**20,
        "Mi": 1 / 2**10,
        "Gi": 1.0,
        "Ti": 2**10,
        "Pi": 2**20,
    }[m.group(2)]
    return float(m.group(1)) * scale


def _kuberay(doc: dict, path: str) -> list[NodeGroup]:
    out = []
    for g in doc.get("spec", {}).get("workerGroupSpecs", []):
        container = g["template"]["spec"]["containers"][0]
        res = container.get("resources", {})
        limits = {**res.get("requests", {}), **res.get("limits", {})}
        if "cpu" not in limits or "memory" not in limits:
            raise ValueError(f"{path}: worker group {g.get('groupName')} sets no cpu/memory resources")
        selector = g["template"]["spec"].get("nodeSelector", {})
        gpu_type = next((v for k, v in selector.items() if "gpu" in k.lower() or "accelerator" in k.lower()), None)
        out.append(
            NodeGroup(
                g.get("groupName", "?"),
                _quantity(limits["cpu"], "cpu"),
                _quantity(limits["memory"], "mem"),
                int(limits.get("nvidia.com/gpu", 0)),
                int(g.get("maxReplicas", g.get("replicas", 0))),
                gpu_type,
            )
        )
    return out


def _aws(doc: dict, path: str) -> list[NodeGroup]:
    out = []
    for name, node in doc.get("available_node_types", {}).items():
        if name == doc.get("head_node_type"):
            continue
        instance = node.get("node_config", {}).get("InstanceType")
        cpus, mem, gpus, gpu_type = INSTANCE_TYPES.get(instance, (None, None, None, None))
        res = node.get("resources") or {}
        cpus, gpus = res.get("CPU", cpus), res.get("GPU", gpus)
        mem = res["memory"] / 2**30 if "memory" in res else mem
        if cpus is None or mem is None:
            raise ValueError(
                f"{path}: node type {name} ({instance}): unknown instance type; give its "
                "resources: {CPU, GPU, memory}"
            )
        out.append(
            NodeGroup(
                name,
                float(cpus),
                float(mem),
                int(gpus or 0),
                min(int(node.get("max_workers", 0)), int(doc.get("max_workers", 10**9))),
                gpu_type,
            )
        )
    return out


def load_cluster(path: str) -> list[NodeGroup]:
    """The worker node groups of a KubeRay RayCluster (or RayJob/RayService embedding one) or
    a Ray cluster launcher YAML."""
    with open(path) as f:
        doc = yaml.safe_load(f)
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a cluster definition")
    kind = doc.get("kind")
    if kind == "RayCluster":
        return _kuberay(doc, path)
    if kind in ("RayJob", "RayService"):
        spec = doc["spec"].get("rayClusterSpec") or doc["spec"].get("rayClusterConfig")
        return _kuberay({"spec": spec}, path)
    if "available_node_types" in doc:
        return _aws(doc, path)
    raise ValueError(f"{path}: neither a KubeRay RayCluster nor a Ray cluster launcher file")
