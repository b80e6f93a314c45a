"""The samplers a DDPM checkpoint can be sampled with, by name: one table for `hf-ddpm sample --scheduler` (and any
other command that lets the user pick a sampler), mapping each name to a diffusers scheduler class and the config
overrides that make it that sampler.

    scheduler = make_scheduler("dpmsolver++", pipe.scheduler.config)
    pipe.scheduler = scheduler  # hf_ddpm.DDPMPipeline runs the general diffusers loop for any of them

Every scheduler is built from the pipeline's own config (`from_config`), so the noise schedule (betas, T,
prediction type, clipping) is the one the model was trained with. `ddpm` is hf_ddpm's DDPMScheduler: with fewer
steps than T it samples the respaced chain with the right variances (Improved DDPM Sec. 4).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Mapping

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .options import UsageError
from .scheduling_ddpm import DDPMScheduler


@dataclass(frozen=True)
class Sampler:
    """A named sampler: the scheduler class, the config overrides that make it this sampler, and a line for help."""

    name: str
    scheduler_class: type[SchedulerMixin]
    overrides: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    # diffusers' multistep solvers give NaN images with steps = T (their last timestep reaches t = 0, where the
    # log-SNR is infinite): they can run at most T - 1 steps
    runs_all_T_steps: bool = True

    def max_steps(self, num_train_timesteps: int) -> int:
        """The most steps this sampler can take on a model trained with T = `num_train_timesteps` steps."""
        return num_train_timesteps if self.runs_all_T_steps else num_train_timesteps - 1

    @property
    def takes_eta(self) -> bool:
        """Whether its `step` takes `eta` (DDIM's noise level)."""
        return "eta" in inspect.signature(self.scheduler_class.step).parameters


SAMPLERS: dict[str, Sampler] = {s.name: s for s in (
    Sampler("ddpm", DDPMScheduler, {}, "ancestral DDPM (paper Algorithm 2); fewer steps than T: respaced chain"),
    Sampler("ddim", DDIMScheduler, {}, "DDIM; --eta 0 deterministic (default), 1 DDPM-like"),
    Sampler("dpmsolver++", DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2},
            "DPM-Solver++(2M), multistep second order; at most T - 1 steps", runs_all_T_steps=False),
    Sampler("unipc", UniPCMultistepScheduler, {}, "UniPC multistep predictor-corrector; at most T - 1 steps",
            runs_all_T_steps=False),
    Sampler("euler", EulerDiscreteScheduler, {}, "Euler (Karras et al. 2022's discretization of the ODE)"),
    Sampler("euler-ancestral", EulerAncestralDiscreteScheduler, {}, "Euler with ancestral noise"),
)}
SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)
DEFAULT_FAST_STEPS = 50  # what the fast samplers use when no step count is given


def get_sampler(name: str) -> Sampler:
    if name not in SAMPLERS:
        raise UsageError(f"unknown sampler {name!r}", "--scheduler", f"choose one of: {', '.join(SAMPLER_NAMES)}")
    return SAMPLERS[name]


def make_scheduler(name: str, base_config: Mapping[str, Any], **overrides) -> SchedulerMixin:
    """Scheduler `name` (a key of SAMPLERS) built from `base_config` (a pipeline's scheduler config), with the
    sampler's own settings and then `overrides` on top."""
    sampler = get_sampler(name)
    return sampler.scheduler_class.from_config(dict(base_config), **{**sampler.overrides, **overrides})


def default_steps(name: str, num_train_timesteps: int) -> int:
    """The step count used when none is given: all T for ddpm, else DEFAULT_FAST_STEPS (at most what it can run)."""
    sampler = get_sampler(name)
    if name == "ddpm":
        return num_train_timesteps
    return min(DEFAULT_FAST_STEPS, sampler.max_steps(num_train_timesteps))


def check_steps(name: str, steps: int, num_train_timesteps: int, option: str = "--steps") -> None:
    """Refuse more steps than sampler `name` can take on a model with T = `num_train_timesteps`."""
    most = get_sampler(name).max_steps(num_train_timesteps)
    if steps > most:
        T = num_train_timesteps
        why = f"the model's T = {T} diffusion steps" if most == T else f"T - 1 = {most} for {name} (T = {T})"
        raise UsageError(f"{option} {steps} is more than {why}", option, f"pass at most {most}")
