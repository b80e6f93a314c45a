"""The paper's math for one beta table: forward process, posterior, reverse process, losses and bits/dim.

`GaussianDiffusion` precomputes every coefficient once, in float64, and each formula below is one small
method citing its equation in Ho, Jain & Abbeel (2020) or Nichol & Dhariwal (2021, "Improved DDPM").
Timestep arguments `t` are either a Python int or a long tensor of shape [B] on the data's device; they are
validated by the scheduler (`hf_ddpm.DDPMScheduler`), which is the public entry point. `DiffusionObjective` holds
a training run's loss settings (loss type and weighting), built once and applied to a `GaussianDiffusion`.

Notation (code indexing, t = 0..T-1): alpha_t = 1 - beta_t, abar_t = prod_{s<=t} alpha_s, abar_prev_t = abar_{t-1}
with abar_prev_0 = 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .gaussian import discretized_gaussian_log_likelihood, mean_over_pixels, normal_kl
from .schedules import check_betas

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")
LEARNED_VARIANCES = ("learned", "learned_range")
LOSS_TYPES = ("simple", "kl", "hybrid")
LOSS_WEIGHTINGS = (None, "min_snr", "p2")
HYBRID_VLB_WEIGHT = 0.001  # lambda of Improved DDPM's L_hybrid = L_simple + lambda L_vlb (Sec. 3.1)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 data stays float64; everything else (fp16/bf16/fp32) is computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}: choose one of {', '.join(map(repr, choices))}.")


class GaussianDiffusion:
    """Forward and reverse Gaussian diffusion over the beta table `betas` (float64 coefficient tables)."""

    def __init__(self, betas, prediction_type: str = "epsilon", variance_type: str = "fixed_small",
                 log_alphas_cumprod: torch.Tensor | None = None):
        """`log_alphas_cumprod`, when given, is log abar_t known more precisely than the sum of log(1 - beta_t): a
        respaced chain keeps abar at its steps, where 1 - beta' may round to 0 while abar_t is still > 0."""
        _check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        _check_choice("variance_type", variance_type, VARIANCE_TYPES)
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
        check_betas(betas)
        self.prediction_type = prediction_type
        self.variance_type = variance_type
        self.num_timesteps = T = betas.numel()

        alphas = 1.0 - betas
        # Through logs: 1 - abar_t as -expm1(log abar_t) keeps full relative precision where abar_t ~ 1 (small t).
        if log_alphas_cumprod is None:
            log_alphas_cumprod = torch.cumsum(torch.log1p(-betas), dim=0)
        alphas_cumprod = torch.exp(log_alphas_cumprod)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        one_minus_alphas_cumprod = -torch.expm1(log_alphas_cumprod)
        # beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t), eq. 7; beta~_0 = 0.
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / one_minus_alphas_cumprod
        # log beta~_0 = log 0, so the release "clips" it to beta~_1 (only the t = 0 decoder ever reads it).
        first_log_variance = posterior_variance[1] if T > 1 else betas[0]
        posterior_log_variance_clipped = torch.log(torch.cat([first_log_variance[None], posterior_variance[1:]]))

        posterior_mean_coef1 = betas * alphas_cumprod_prev.sqrt() / one_minus_alphas_cumprod
        posterior_mean_coef1[0] = 1.0  # beta_0 / (1 - abar_0) = 1 exactly: the last step returns x0_hat itself
        self.tables = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": one_minus_alphas_cumprod.sqrt(),
            "log_one_minus_alphas_cumprod": torch.log(one_minus_alphas_cumprod),
            "sqrt_recip_alphas_cumprod": alphas_cumprod.rsqrt(),  # rsqrt: finite even for subnormal abar
            "sqrt_recipm1_alphas_cumprod": (one_minus_alphas_cumprod / alphas_cumprod).sqrt(),
            "snr": alphas_cumprod / one_minus_alphas_cumprod,
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": posterior_log_variance_clipped,
            "posterior_mean_coef1": posterior_mean_coef1,
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * alphas.sqrt() / one_minus_alphas_cumprod,
            "log_betas": torch.log(betas),
            # fixedlarge: sigma^2 = beta_t, but its log-variance uses beta~_1 at t = 0 (the release's decoder).
            "fixed_large_log_variance": torch.log(torch.cat([first_log_variance[None], betas[1:]])),
        }
        self._cast_tables: dict[tuple, dict[str, torch.Tensor]] = {}

    # ------------------------------------------------------------------ table access
    def coef(self, name: str, t, like: torch.Tensor) -> torch.Tensor:
        """Table `name` at timesteps `t`, shaped to broadcast against `like` ([B, 1, 1, ...] or a 0-d tensor).

        Computations run in float64 for float64 data and in float32 otherwise (also for fp16/bf16 data, so a
        half-precision model never sees half-precision diffusion coefficients).
        """
        dtype = compute_dtype(like)
        key = (like.device, dtype)
        if key not in self._cast_tables:  # cast once per device and dtype, never in the hot loop
            # non-blocking: the first lookup need not wait for the GPU to finish the work queued before it
            self._cast_tables[key] = {k: v.to(device=like.device, dtype=dtype, non_blocking=True)
                                      for k, v in self.tables.items()}
        values = self._cast_tables[key][name][t]
        return values.view(-1, *([1] * (like.ndim - 1))) if values.ndim else values

    # ------------------------------------------------------------------ forward process q
    def q_mean_variance(self, x0: torch.Tensor, t):
        """q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I), eq. 4. Returns (mean, variance, log_variance)."""
        mean = self.coef("sqrt_alphas_cumprod", t, x0) * x0
        variance = (1.0 - self.coef("alphas_cumprod", t, x0)).expand_as(mean)
        log_variance = self.coef("log_one_minus_alphas_cumprod", t, x0).expand_as(mean)
        return mean, variance, log_variance

    def q_sample(self, x0: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, the reparameterized sample of eq. 4."""
        return self.coef("sqrt_alphas_cumprod", t, x0) * x0 + self.coef("sqrt_one_minus_alphas_cumprod", t, x0) * noise

    def velocity(self, x0: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0, the v-prediction target (Salimans & Ho 2022)."""
        return self.coef("sqrt_alphas_cumprod", t, x0) * noise - self.coef("sqrt_one_minus_alphas_cumprod", t, x0) * x0

    def q_posterior_mean_variance(self, x0: torch.Tensor, x_t: torch.Tensor, t):
        """q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I), eqs. 6-7. Returns (mean, variance, log_variance_clipped)."""
        mean = self.coef("posterior_mean_coef1", t, x_t) * x0 + self.coef("posterior_mean_coef2", t, x_t) * x_t
        variance = self.coef("posterior_variance", t, x_t).expand_as(mean)
        log_variance_clipped = self.coef("posterior_log_variance_clipped", t, x_t).expand_as(mean)
        return mean, variance, log_variance_clipped

    # ------------------------------------------------------------------ reverse process p
    def predict_x0(self, model_output: torch.Tensor, x_t: torch.Tensor, t) -> torch.Tensor:
        """x_0 implied by the model output: eq. 15 for eps, identity for x_0, and x_0 = sqrt(abar) x_t - sqrt(1-abar) v."""
        if self.prediction_type == "epsilon":
            return (
                self.coef("sqrt_recip_alphas_cumprod", t, x_t) * x_t
                - self.coef("sqrt_recipm1_alphas_cumprod", t, x_t) * model_output
            )
        if self.prediction_type == "v_prediction":
            return (
                self.coef("sqrt_alphas_cumprod", t, x_t) * x_t
                - self.coef("sqrt_one_minus_alphas_cumprod", t, x_t) * model_output
            )
        return model_output

    def split_model_output(self, model_output: torch.Tensor, x_t: torch.Tensor):
        """Split a learned-variance model's 2C channels into (prediction, variance values); fixed variance: (output, None)."""
        channels = x_t.shape[1]
        if self.variance_type in LEARNED_VARIANCES:
            if model_output.shape[1] != 2 * channels:
                raise ValueError(
                    f"variance_type={self.variance_type!r} needs a model output with 2 x {channels} channels, got "
                    f"{model_output.shape[1]}: use a learned-variance UNet (out_channels={2 * channels})."
                )
            return model_output[:, :channels], model_output[:, channels:]
        if model_output.shape[1] != channels:
            hint = " (a learned-variance model: set variance_type='learned_range')" if model_output.shape[1] == 2 * channels else ""
            raise ValueError(
                f"model output has {model_output.shape[1]} channels but the sample has {channels}{hint}: "
                f"variance_type={self.variance_type!r} expects one prediction channel per image channel."
            )
        return model_output, None

    def model_variance(self, variance_values, t, like: torch.Tensor):
        """sigma_t^2 of p(x_{t-1} | x_t) and its log, for every variance choice. Returns (variance, log_variance).

        fixed_small: sigma^2 = beta~_t (paper Sec. 3.2); fixed_large: sigma^2 = beta_t; learned: the model outputs
        log sigma^2; learned_range (Improved DDPM eq. 15): log sigma^2 = frac log beta_t + (1 - frac) log beta~_t
        with frac = (v + 1) / 2.
        """
        kind = self.variance_type
        if kind in ("fixed_small", "fixed_small_log"):
            variance, log_variance = (self.coef("posterior_variance", t, like), self.coef("posterior_log_variance_clipped", t, like))
        elif kind in ("fixed_large", "fixed_large_log"):
            variance, log_variance = self.coef("betas", t, like), self.coef("fixed_large_log_variance", t, like)
        elif kind == "learned":
            log_variance = variance_values
            variance = torch.exp(log_variance)
        else:
            frac = (variance_values + 1.0) / 2.0
            log_variance = frac * self.coef("log_betas", t, like) + (1.0 - frac) * self.coef("posterior_log_variance_clipped", t, like)
            variance = torch.exp(log_variance)
        return variance, log_variance  # [B, 1, ...] for fixed variances: broadcast, never materialized

    def p_mean_variance(
        self,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        t,
        process_x0: Callable[[torch.Tensor], torch.Tensor] | None = None,
        expand: bool = True,
    ) -> dict:
        """p(x_{t-1} | x_t) = N(mu_theta, sigma_t^2 I), eq. 1, with mu_theta = mu~(x0_hat, x_t) (eq. 7) as in the
        release, where x0_hat comes from the model output and is passed through `process_x0` (clipping).
        With `expand=False` fixed variances stay [B, 1, ...] (the sampler's fast path)."""
        prediction, variance_values = self.split_model_output(model_output, x_t)
        pred_x0 = self.predict_x0(prediction, x_t, t)
        if process_x0 is not None:
            pred_x0 = process_x0(pred_x0)
        mean, _, _ = self.q_posterior_mean_variance(pred_x0, x_t, t)
        variance, log_variance = self.model_variance(variance_values, t, x_t)
        if expand:
            variance, log_variance = variance.expand_as(x_t), log_variance.expand_as(x_t)
        return {"mean": mean, "variance": variance, "log_variance": log_variance, "pred_x0": pred_x0}

    # ------------------------------------------------------------------ variational bound, in bits/dim
    def prior_bpd(self, x0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)) of eq. 5, per sample, in bits/dim (~1e-5 for the linear schedule)."""
        last = self.num_timesteps - 1
        mean, _, log_variance = self.q_mean_variance(x0, last)
        kl = normal_kl(mean, log_variance, torch.zeros_like(mean), torch.zeros_like(mean))
        return mean_over_pixels(kl) / math.log(2.0)

    def vb_terms_bpd(
        self,
        model_output: torch.Tensor,
        x0: torch.Tensor,
        x_t: torch.Tensor,
        t,
        process_x0: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> dict:
        """One term of eq. 5 per sample, in bits/dim: L_{t-1} = KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t > 0,
        and the discretized-Gaussian decoder NLL L_0 = -log p(x_0 | x_1) at t = 0 (eq. 13)."""
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x0, x_t, t)
        p = self.p_mean_variance(model_output, x_t, t, process_x0)
        kl = mean_over_pixels(normal_kl(true_mean, true_log_variance, p["mean"], p["log_variance"])) / math.log(2.0)
        decoder_nll = -mean_over_pixels(
            discretized_gaussian_log_likelihood(x0, mean=p["mean"], log_scale=0.5 * p["log_variance"])
        ) / math.log(2.0)
        is_first = torch.as_tensor(t, device=x0.device) == 0
        return {"output": torch.where(is_first, decoder_nll, kl), "pred_x0": p["pred_x0"]}

    # ------------------------------------------------------------------ training objectives
    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """What the network regresses onto: eps (eq. 14), x_0, or v."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "sample":
            return x0
        return self.velocity(x0, t, noise)

    def training_losses(
        self, model_output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, noise: torch.Tensor, t,
        objective: DiffusionObjective | None = None,
    ) -> dict:
        """Per-sample losses of `objective` (default: L_simple): see `DiffusionObjective.losses`."""
        return (objective or DiffusionObjective()).losses(self, model_output, x0, x_t, noise, t)


@dataclass(frozen=True)
class DiffusionObjective:
    """What training minimizes, chosen once per run: the loss and the weighting of its MSE term.

    `loss_type`: `simple` = L_simple (eq. 14, on the chosen target), `kl` = the bound's term L_{t-1} in bits/dim,
    `hybrid` = L_simple + lambda L_vlb (Improved DDPM) where L_vlb = T * L_{t-1} trains only the variance
    (stop-gradient on the mean). `loss_weighting` weights the MSE term (so it applies to `simple` and `hybrid`):
    `min_snr` with `snr_gamma`, `p2` with `p2_k` and `p2_gamma`.
    """

    loss_type: str = "simple"
    loss_weighting: str | None = None
    snr_gamma: float = 5.0
    p2_k: float = 1.0
    p2_gamma: float = 1.0

    def __post_init__(self):
        _check_choice("loss_type", self.loss_type, LOSS_TYPES)
        _check_choice("loss_weighting", self.loss_weighting, LOSS_WEIGHTINGS)

    @property
    def has_mse(self) -> bool:
        """Whether the loss has the MSE term (the only term a `loss_weighting` acts on)."""
        return self.loss_type in ("simple", "hybrid")

    def mse_weight(self, diffusion: GaussianDiffusion, t, like: torch.Tensor) -> torch.Tensor:
        """Per-sample weight of the MSE term, written as a weight on the eps-MSE and converted to the target.

        min_snr (Hang et al. 2023): w_eps = min(SNR, gamma) / SNR. p2 (Choi et al. 2022): w_eps = (k + SNR)^-gamma.
        Since ||eps - eps_hat||^2 = SNR ||x0 - x0_hat||^2 = SNR / (1 + SNR) ||v - v_hat||^2, the weight on an x_0
        or v MSE is w_eps times SNR or SNR / (1 + SNR).
        """
        snr = diffusion.coef("snr", t, like)
        if self.loss_weighting == "min_snr":
            eps_weight = (self.snr_gamma / snr).clamp(max=1.0)
        else:
            eps_weight = (self.p2_k + snr) ** (-self.p2_gamma)
        if diffusion.prediction_type == "sample":
            return eps_weight * snr
        if diffusion.prediction_type == "v_prediction":
            return eps_weight * snr / (1.0 + snr)
        return eps_weight

    def losses(
        self, diffusion: GaussianDiffusion, model_output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor,
        noise: torch.Tensor, t,
    ) -> dict:
        """Per-sample losses under `diffusion`: {"loss", and "mse" and/or "vb"}, each of shape [B]."""
        prediction, variance_values = diffusion.split_model_output(model_output, x_t)
        terms = {}
        if self.has_mse:
            target = diffusion.training_target(x0, noise, t)
            dtype = compute_dtype(prediction)
            mse = mean_over_pixels((target.to(dtype) - prediction.to(dtype)) ** 2)
            if self.loss_weighting is not None:
                mse = mse * self.mse_weight(diffusion, t, mse)
            terms["mse"] = mse
        if self.loss_type == "kl":
            terms["vb"] = diffusion.vb_terms_bpd(model_output, x0, x_t, t)["output"]
        elif self.loss_type == "hybrid" and variance_values is not None:
            # Only the variance learns from the bound; the mean is trained by L_simple alone (Improved DDPM 3.1).
            frozen = torch.cat([prediction.detach(), variance_values], dim=1)
            vb = diffusion.vb_terms_bpd(frozen, x0, x_t, t)["output"]
            terms["vb"] = vb * (diffusion.num_timesteps * HYBRID_VLB_WEIGHT)
        terms["loss"] = terms.get("mse", 0.0) + terms.get("vb", 0.0)
        return terms
