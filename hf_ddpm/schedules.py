"""Noise schedules beta_1..beta_T, always built in float64.

The paper's release (``get_beta_schedule`` in its ``diffusion_utils``) names ``linear``, ``quad``, ``const``,
``jsd``, ``warmup10`` and ``warmup50``; ``cosine`` is Nichol & Dhariwal (2021, eq. 17). diffusers' own names
(``scaled_linear``, ``squaredcos_cap_v2``, ``sigmoid``, ``laplace``) are kept so that every stock config
still means the same schedule. Coefficient tables derived from these betas are float64 too: a float32
cumulative product drifts by ~1e-6 relative in abar and ~4e-4 in the posterior variance, which is visible in
bits/dim.
"""

from __future__ import annotations

import math

import torch

# Names stock diffusers' DDPMScheduler understands itself; any other schedule is saved as explicit
# `trained_betas` so that stock diffusers loads the very same schedule.
STOCK_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")
PAPER_SCHEDULES = ("linear", "quad", "const", "jsd", "warmup10", "warmup50", "cosine")
SCHEDULES = tuple(dict.fromkeys(PAPER_SCHEDULES + STOCK_SCHEDULES))


def _warmup(beta_start: float, beta_end: float, num_timesteps: int, fraction: float) -> torch.Tensor:
    """beta_end everywhere, after a linear warm-up from beta_start over the first `fraction` of the steps."""
    betas = torch.full((num_timesteps,), beta_end, dtype=torch.float64)
    warmup_steps = int(num_timesteps * fraction)
    betas[:warmup_steps] = torch.linspace(beta_start, beta_end, warmup_steps, dtype=torch.float64)
    return betas


def _alpha_bar_schedule(alpha_bar, num_timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """Discretize a continuous abar(u), u in [0, 1]: beta_i = min(1 - abar((i+1)/T) / abar(i/T), max_beta)."""
    betas = [
        min(1.0 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
        for i in range(num_timesteps)
    ]
    return torch.tensor(betas, dtype=torch.float64)


def _cosine_alpha_bar(u: float) -> float:
    """Nichol & Dhariwal (2021) eq. 17 with offset s = 0.008: f(u) = cos^2((u + s) / (1 + s) * pi / 2)."""
    return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2


def _laplace_alpha_bar(u: float) -> float:
    """diffusers' `laplace` schedule (Hang et al. 2024), kept so stock configs mean the same thing."""
    log_snr = -0.5 * math.copysign(1, 0.5 - u) * math.log(1 - 2 * math.fabs(0.5 - u) + 1e-6)
    snr = math.exp(log_snr)
    return math.sqrt(snr / (1 + snr))


def make_beta_schedule(
    name: str, num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> torch.Tensor:
    """Return the float64 betas of schedule `name` (paper default: ``linear``, 1e-4 -> 0.02, T = 1000)."""
    if not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be an integer >= 1, got {num_timesteps!r}.")
    T = num_timesteps
    if name == "linear":
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    elif name in ("quad", "scaled_linear"):  # the same schedule under the release's and diffusers' names
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    elif name == "const":
        betas = torch.full((T,), beta_end, dtype=torch.float64)
    elif name == "jsd":  # 1/T, 1/(T-1), ..., 1: the last beta is 1, so abar_T = 0
        betas = 1.0 / torch.linspace(T, 1, T, dtype=torch.float64)
    elif name == "warmup10":
        betas = _warmup(beta_start, beta_end, T, 0.1)
    elif name == "warmup50":
        betas = _warmup(beta_start, beta_end, T, 0.5)
    elif name in ("cosine", "squaredcos_cap_v2"):
        betas = _alpha_bar_schedule(_cosine_alpha_bar, T)
    elif name == "laplace":
        betas = _alpha_bar_schedule(_laplace_alpha_bar, T)
    elif name == "sigmoid":  # GeoDiff's sigmoid schedule, as in diffusers
        betas = torch.sigmoid(torch.linspace(-6, 6, T, dtype=torch.float64)) * (beta_end - beta_start) + beta_start
    else:
        raise ValueError(f"Unknown beta_schedule {name!r}: choose one of {', '.join(SCHEDULES)}.")
    return betas


def check_betas(betas: torch.Tensor) -> None:
    """Every beta must lie in (0, 1]: beta = 0 makes the posterior degenerate, beta > 1 is not a variance."""
    if betas.ndim != 1 or betas.numel() < 1:
        raise ValueError(f"betas must be a non-empty 1-D sequence, got shape {tuple(betas.shape)}.")
    bad = ~((betas > 0) & (betas <= 1))
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"beta[{i}] = {float(betas[i])!r} is outside (0, 1]: fix beta_start/beta_end or the trained_betas."
        )
