"""Gaussian densities used by the variational bound (paper Sec. 3.3 and eq. 5)."""

from __future__ import annotations

import math

import torch

# Pixels are k/255 scaled to [-1, 1], so neighbouring values are 2/255 apart and each bin is +-1/255 wide.
HALF_BIN = 1.0 / 255.0
LOG_FLOOR = 1e-12  # the release floors probabilities here before taking logs


def mean_over_pixels(x: torch.Tensor) -> torch.Tensor:
    """Average over every dimension but the batch one: per-sample values, per dimension."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(mean1, log_var1, mean2, log_var2) -> torch.Tensor:
    """KL(N(mean1, e^log_var1) || N(mean2, e^log_var2)) per dimension, in nats.

    0.5 * (-1 + log_var2 - log_var1 + e^(log_var1 - log_var2) + (mean1 - mean2)^2 e^(-log_var2)).
    Used for L_T and L_{t-1} of eq. 5, where both distributions are Gaussian.
    """
    return 0.5 * (
        -1.0 + log_var2 - log_var1 + torch.exp(log_var1 - log_var2) + (mean1 - mean2) ** 2 * torch.exp(-log_var2)
    )


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Phi(x) ~ 0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), the approximation the release's decoder uses."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log p(x) per pixel under the discretized Gaussian decoder L_0 (paper eq. 13).

    Each pixel value x in {-1, -1 + 2/255, ..., 1} owns the bin [x - 1/255, x + 1/255]; the edge bins extend to
    -inf (x = -1) and +inf (x = 1) so the probabilities of the 256 values sum to one. `log_scale` is the log of
    the decoder's standard deviation (half the model's log-variance).
    """
    inv_std = torch.exp(-log_scale)
    centered = x - mean
    cdf_upper = approx_standard_normal_cdf(inv_std * (centered + HALF_BIN))
    cdf_lower = approx_standard_normal_cdf(inv_std * (centered - HALF_BIN))
    log_cdf_upper = torch.log(cdf_upper.clamp(min=LOG_FLOOR))  # mass of (-inf, x + 1/255]: the x = -1 bin
    log_survival_lower = torch.log((1.0 - cdf_lower).clamp(min=LOG_FLOOR))  # mass of [x - 1/255, inf): x = 1
    log_bin = torch.log((cdf_upper - cdf_lower).clamp(min=LOG_FLOOR))
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_survival_lower, log_bin))
