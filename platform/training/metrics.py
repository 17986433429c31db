"""Per-step metrics to the console (progress bar), TensorBoard, a JSONL file and MLflow."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional


@dataclass
class TrackingConfig:
    """Experiment tracking where users already look: MLflow (a server, or a local ``file:`` store)."""

    mlflow_uri: Optional[str] = None  # e.g. http://mlflow:5000 or file:/data/mlruns; null: off
    experiment: str = "sama"
    run_name: Optional[str] = None  # null: the job's run name


def flat_params(tree: Any, prefix: str = "") -> dict[str, str]:
    """A config tree as MLflow params (dotted keys, values as text, at most 500 characters)."""
    if isinstance(tree, dict):
        out: dict[str, str] = {}
        for k, v in tree.items():
            out.update(flat_params(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): str(tree)[:500]}


def start_mlflow(tracking: TrackingConfig, run_name: str, params: dict[str, Any]):
    """The ``mlflow`` module with a run started (Ray Train's integration inside a train worker,
    plain MLflow elsewhere), or None when tracking is off."""
    if not tracking.mlflow_uri:
        return None
    name = tracking.run_name or run_name
    if tracking.mlflow_uri.startswith("file:"):
        # MLflow 3 keeps the file store (offline, no server) behind an opt-in: this config is the opt-in.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        from ray import train

        train.get_context().get_world_rank()  # raises outside a Ray Train worker
        from ray.air.integrations.mlflow import setup_mlflow

        mlflow = setup_mlflow(
            tracking_uri=tracking.mlflow_uri,
            experiment_name=tracking.experiment,
            run_name=name,
            create_experiment_if_not_exists=True,
            rank_zero_only=True,
        )
    except (ImportError, RuntimeError, AttributeError):
        import mlflow

        mlflow.set_tracking_uri(tracking.mlflow_uri)
        mlflow.set_experiment(tracking.experiment)
        mlflow.start_run(run_name=name)
    mlflow.log_params(flat_params(params))
    return mlflow


class MetricsLogger:
    """Rank 0's metric sink. ``log_dir``: a local folder (events + ``metrics.jsonl``)."""

    def __init__(
        self,
        log_dir: str,
        total_steps: int,
        start_step: int = 0,
        tensorboard: bool = True,
        progress_bar: bool = True,
        prefix: str = "",
        mlflow=None,
    ):
        os.makedirs(log_dir, exist_ok=True)
        self.log_dir, self.prefix = log_dir, prefix
        self.jsonl = open(os.path.join(log_dir, "metrics.jsonl"), "a")
        self.mlflow = mlflow  # a module with a run started (start_mlflow), or None
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir)
        self.bar = None
        if progress_bar:
            from tqdm import tqdm

            # mininterval: worker stdout is forwarded line by line; don't flood the driver.
            self.bar = tqdm(
                total=total_steps,
                initial=start_step,
                desc=prefix or "train",
                file=sys.stderr,
                mininterval=5.0,
                dynamic_ncols=False,
                ncols=120,
            )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.jsonl.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)
        if self.mlflow is not None:  # MLflow keys allow / but not every character TensorBoard does
            self.mlflow.log_metrics({k.replace(":", "_"): float(v) for k, v in metrics.items()}, step=step)
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(
                {k: f"{metrics[k]:.4g}" for k in ("loss", "lr", "samples_per_s") if k in metrics}, refresh=False
            )

    def line(self, step: int, metrics: dict[str, float]) -> None:
        """A plain console line (survives log collection where a progress bar does not)."""
        text = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        print(f"[{self.prefix or 'train'}] step {step}: {text}", file=sys.stderr, flush=True)

    def flush(self) -> None:
        self.jsonl.flush()
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        self.flush()
        self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
        if self.bar is not None:
            self.bar.close()
        if self.mlflow is not None:
            self.mlflow.end_run()
