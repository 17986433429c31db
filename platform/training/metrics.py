"""Per-step metrics to the console (progress bar), TensorBoard and a JSONL file."""

from __future__ import annotations

import json
import os
import sys
import time


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
    ):
        os.makedirs(log_dir, exist_ok=True)
        self.log_dir, self.prefix = log_dir, prefix
        self.jsonl = open(os.path.join(log_dir, "metrics.jsonl"), "a")
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
