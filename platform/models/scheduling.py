"""Flow-matching samplers: the SAMA release's Euler schedule, and diffusers' as options.

``FlowMatchEulerScheduler`` is the sampler the public SAMA release (and DiffSynth's Wan
pipelines) use, written here from its stated settings:

    sigmas    = linspace(1, 0, N + 1)[:-1]                  the "extra one step": N values, no 0
    sigmas    = shift * sigmas / (1 + (shift - 1) * sigmas) shift 5
    timesteps = 1000 * sigmas                               what the transformer sees
    step:       x <- x + v * (sigma_next - sigma)           sigma_next = 0 after the last step

It differs from diffusers' ``FlowMatchEulerDiscreteScheduler`` (whose grid ends at
sigma = 1/1000 before shifting) and from Wan's default UniPC, so a released checkpoint
only reproduces its authors' outputs with this one. ``step`` is stateless (the sigma is
looked up from the timestep), so one instance steps both the latents and the semantic
tokens, as the release does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SAMPLERS = ("flow_euler", "unipc", "euler")


@dataclass
class SchedulerStep:
    prev_sample: torch.Tensor


class FlowMatchEulerScheduler:
    """Flow-match Euler on shifted sigmas with the release's "extra one step" grid."""

    order = 1

    def __init__(
        self,
        shift: float = 5.0,
        num_train_timesteps: int = 1000,
        sigma_max: float = 1.0,
        sigma_min: float = 0.0,
        extra_one_step: bool = True,
    ):
        self.shift = float(shift)
        self.num_train_timesteps = num_train_timesteps
        self.sigma_max, self.sigma_min = float(sigma_max), float(sigma_min)
        self.extra_one_step = extra_one_step
        self.timesteps = torch.empty(0)
        self.sigmas = torch.empty(0)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """``timesteps`` (N,) and ``sigmas`` (N + 1,), the last sigma 0 (diffusers' convention)."""
        if num_inference_steps < 1:
            raise ValueError("num_inference_steps must be >= 1")
        # Same float32 arithmetic, in the same order, as the release: equal timesteps bit for bit.
        if self.extra_one_step:
            sigmas = torch.linspace(self.sigma_max, self.sigma_min, num_inference_steps + 1)[:-1]
        else:
            sigmas = torch.linspace(self.sigma_max, self.sigma_min, num_inference_steps)
        sigmas = self.shift * sigmas / (1 + (self.shift - 1) * sigmas)
        self.timesteps = (sigmas * self.num_train_timesteps).to(device)
        self.sigmas = torch.cat([sigmas, sigmas.new_zeros(1)]).to(device)

    def index_for_timestep(self, timestep: torch.Tensor | float) -> int:
        t = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1)[0].cpu()
        return int(torch.argmin((self.timesteps.cpu() - t).abs()))

    def step(
        self, model_output: torch.Tensor, timestep: torch.Tensor | float, sample: torch.Tensor, return_dict: bool = True
    ) -> SchedulerStep | tuple[torch.Tensor]:
        """One Euler step of the velocity ``model_output`` from ``timestep``'s sigma to the next."""
        i = self.index_for_timestep(timestep)
        delta = (self.sigmas[i + 1] - self.sigmas[i]).to(sample.device)
        prev = sample + model_output * delta
        return SchedulerStep(prev) if return_dict else (prev,)


def make_scheduler(sampler: str, shift: float, num_train_timesteps: int = 1000):
    """The release's ``flow_euler``, or diffusers' ``unipc`` (Wan's default) / ``euler``."""
    if sampler == "flow_euler":
        return FlowMatchEulerScheduler(shift=shift, num_train_timesteps=num_train_timesteps)
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if sampler == "euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=shift)
    if sampler == "unipc":
        return UniPCMultistepScheduler(
            num_train_timesteps=num_train_timesteps,
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            flow_shift=shift,
        )
    raise ValueError(f"sampler={sampler!r}: choose one of {SAMPLERS}")
