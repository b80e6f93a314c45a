"""`hf_ddpm.DDPMScheduler`: stock diffusers' DDPMScheduler with the paper's complete math.

A drop-in subclass: the same config keys and defaults (so saved configs load in stock diffusers), the same
`set_timesteps`, `step`, `add_noise` and `get_velocity` outputs for every stock configuration, up to the
float64-built coefficient tables. On top it adds the math API of `GaussianDiffusion` (q_sample, posterior,
p_mean_variance, bits/dim, training losses), batched over timesteps, and fixes stock's known bugs:

- `fixed_large_log` sampled with sqrt(log beta) (NaN); here it is beta_t, like `fixed_large`.
- `_get_variance` returned a standard deviation for `fixed_small_log` and a log-variance for `fixed_large_log`;
  here it always returns the variance.
- `learned` treated the model output as a variance; here it is the log-variance, as in Improved DDPM.
- `step` took only a scalar timestep; here it also takes a [B] tensor of timesteps (one per sample).
- Respaced or custom chains that stop above t = 0 added noise at their last step; here the last step of any
  chain returns the posterior mean, as in Improved DDPM's respacing.
- `trailing` spacing could produce a timestep of -1 for some step counts (61 of 1000, say); it is dropped.
- The paper's schedules (`quad`, `const`, `jsd`, `warmup10`, `warmup50`) and `cosine`, which stock does not
  know, are saved with their explicit `trained_betas` so stock diffusers rebuilds the same schedule.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from diffusers import DDPMScheduler as StockDDPMScheduler
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_ddpm import DDPMSchedulerOutput, rescale_zero_terminal_snr
from diffusers.utils.torch_utils import randn_tensor

from .checks import (
    batch_of,
    check_generator,
    check_model_output,
    check_positive_int,
    check_timestep_batch,
    scalar_timestep,
    train_timesteps,
)
from .gaussian_diffusion import PREDICTION_TYPES, VARIANCE_TYPES, DiffusionObjective, GaussianDiffusion, _check_choice
from .schedules import SCHEDULES, STOCK_SCHEDULES, make_beta_schedule
from .stock_compat import StockConfigMixin

TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


def device_noise(shape, generator, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """diffusers' `randn_tensor(shape, generator, device, dtype)`: the same numbers for the same generator(s), but a
    CPU generator's draw reaches a CUDA device without stopping the host.

    randn_tensor draws on the CPU and copies with a blocking `.to(device)`, a host synchronization per call. Here
    the draw goes through pinned memory and a non-blocking copy, so the host draws step k's noise while the GPU
    is still running the steps before it. A generator on the device, or none, draws on the device directly.
    """
    device = torch.device(device)
    first = generator[0] if isinstance(generator, list) else generator
    if device.type == "cuda" and first is not None and first.device.type == "cpu":
        on_host = randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=dtype)
        return on_host.pin_memory().to(device, non_blocking=True)
    return randn_tensor(shape, generator=generator, device=device, dtype=dtype)


class DDPMScheduler(StockConfigMixin, StockDDPMScheduler):
    """DDPM scheduler with the paper's schedules, posterior, variances, bound and losses (see module docstring).

    Two processes live here. `self.diffusion` is the T-step training process: the math API (q_sample,
    p_mean_variance, vb_terms_bpd, training_losses...) indexes it with the original timesteps t in [0, T). The
    sampling process follows `set_timesteps`: with fewer steps than T it is the respaced process of Improved
    DDPM (beta_k = 1 - abar_{S_k} / abar_{S_{k-1}}), while the model keeps receiving the original timesteps.
    """

    _stock_class_name = "DDPMScheduler"

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        variance_type: Literal[
            "fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range"
        ] = "fixed_small",
        clip_sample: bool = True,
        prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: Literal["linspace", "leading", "trailing"] = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        _check_choice("beta_schedule", beta_schedule, SCHEDULES)
        _check_choice("variance_type", variance_type, VARIANCE_TYPES)
        _check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        _check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        if trained_betas is not None:
            try:
                betas = torch.as_tensor(np.asarray(trained_betas, dtype=np.float64))
            except (TypeError, ValueError):
                raise ValueError("trained_betas must be a sequence of numbers in (0, 1], one per timestep.") from None
            if betas.ndim != 1 or len(betas) != num_train_timesteps:
                raise ValueError(
                    f"trained_betas has {betas.numel()} entries but num_train_timesteps={num_train_timesteps}: pass "
                    f"one beta per timestep, or trained_betas=None to build the {beta_schedule!r} schedule."
                )
        else:
            betas = make_beta_schedule(beta_schedule, num_train_timesteps, beta_start, beta_end)
            if beta_schedule not in STOCK_SCHEDULES:  # stock can only rebuild this schedule from explicit betas
                self.register_to_config(trained_betas=betas.tolist())
        if rescale_betas_zero_snr:
            betas = rescale_zero_terminal_snr(betas)

        self.diffusion = GaussianDiffusion(betas, prediction_type, variance_type)
        # The attributes stock DDPMScheduler methods and callers read, derived from the float64 tables.
        self.betas = betas.float()
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = self.diffusion.tables["alphas_cumprod"].float()
        self.one = torch.tensor(1.0)
        self.init_noise_sigma = 1.0
        self.custom_timesteps = False
        self.num_inference_steps = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.int64)
        self.variance_type = variance_type
        self._set_sampling_chain(self.timesteps.tolist())

    # ------------------------------------------------------------------ sampling chain (respacing)
    def set_timesteps(self, num_inference_steps: int | None = None, device=None, timesteps: list[int] | None = None):
        """Stock timesteps for `num_inference_steps` (or custom `timesteps`), plus the respaced process for them."""
        if num_inference_steps is None and timesteps is None:
            raise ValueError("set_timesteps needs num_inference_steps (e.g. 1000) or a descending list of timesteps.")
        if num_inference_steps is not None:
            num_inference_steps = check_positive_int(num_inference_steps, "num_inference_steps")
        super().set_timesteps(num_inference_steps, device, timesteps)
        if (self.timesteps < 0).any():  # stock's "trailing" rounding can append t = -1 (e.g. 61 of 1000 steps)
            self.timesteps = self.timesteps[self.timesteps >= 0]
        self._set_sampling_chain(self.timesteps.tolist())

    def _set_sampling_chain(self, timesteps: list[int]) -> None:
        """Build the process the sampler walks: the kept timesteps S (ascending) with respaced betas."""
        T = self.config.num_train_timesteps
        chain = sorted(int(t) for t in timesteps)
        if chain[0] < 0 or chain[-1] >= T or len(set(chain)) != len(chain):
            raise ValueError(
                f"timesteps must be distinct integers in [0, {T - 1}], got {chain[0]}..{chain[-1]}: check "
                "steps_offset and the custom timesteps."
            )
        if chain == list(range(T)):
            self._sampling_diffusion = self.diffusion
        else:
            alphas_cumprod = self.diffusion.tables["alphas_cumprod"][chain]
            alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
            respaced_betas = 1.0 - alphas_cumprod / alphas_cumprod_prev  # Improved DDPM, Sec. 4
            self._sampling_diffusion = GaussianDiffusion(
                respaced_betas, self.config.prediction_type, self.config.variance_type, alphas_cumprod.log()
            )
        self._chain_position = {t: k for k, t in enumerate(chain)}
        position_table = torch.full((T,), -1, dtype=torch.long)
        position_table[chain] = torch.arange(len(chain))
        self._chain_position_table = position_table
        self._chain_position_tables_on_device: dict[torch.device, torch.Tensor] = {}

    def _chain_positions(self, timestep, sample: torch.Tensor):
        """Map original timesteps to positions in the sampling chain: an int, or a [B] long tensor on the device."""
        if isinstance(timestep, torch.Tensor) and timestep.ndim > 0:
            check_timestep_batch(timestep, batch_of(sample))
            if timestep.device.type == "cpu" and (
                (timestep < 0).any() or (timestep >= len(self)).any()
                or (self._chain_position_table[timestep.clamp(0, len(self) - 1)] < 0).any()
            ):
                raise ValueError(
                    f"timesteps {timestep.tolist()} are not all in the sampling chain: step() takes the values of "
                    "scheduler.timesteps after set_timesteps()."
                )
            device = sample.device
            if device not in self._chain_position_tables_on_device:
                self._chain_position_tables_on_device[device] = self._chain_position_table.to(device)
            return self._chain_position_tables_on_device[device][timestep.to(device=device, dtype=torch.long)]
        timestep = scalar_timestep(timestep)  # never truncates a float
        position = self._chain_position.get(timestep)
        if position is None:
            raise ValueError(
                f"timestep {timestep} is not in the sampling chain: step() takes the values of "
                "scheduler.timesteps after set_timesteps()."
            )
        return position

    def _x0_processor(self, clip_sample: bool | None):
        """How x0_hat is post-processed: stock's rule (thresholding, else clip_sample) unless told explicitly."""
        if clip_sample is None:
            clip_sample = self.config.clip_sample or self.config.thresholding
        if not clip_sample:
            return None
        if self.config.thresholding:
            return self._threshold_sample
        limit = self.config.clip_sample_range
        return lambda x0: x0.clamp(-limit, limit)

    def _threshold_sample(self, sample: torch.Tensor) -> torch.Tensor:
        """Stock's dynamic thresholding, also for [B, C] samples: stock flattens with C * np.prod([]), a float, and
        raises TypeError there; with a spatial dim of size 1 the quantile per image is the same."""
        if sample.ndim == 2:
            return super()._threshold_sample(sample[..., None])[..., 0]
        return super()._threshold_sample(sample)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
        variance_noise: torch.Tensor | None = None,
        clip_sample: bool | None = None,
    ) -> DDPMSchedulerOutput | tuple:
        """One ancestral step x_t -> x_{t-1} ~ p(x_{t-1} | x_t) (paper Algorithm 2, release's clipped-x0 form).

        `timestep` is an int, a 0-d tensor (stock) or a [B] tensor, one timestep per sample. An int is a lookup in
        coefficient tables cached on the device, so a loop of steps given ints (as `DDPMPipeline` does) never waits
        for a GPU; a 0-d tensor is read on the host first. `variance_noise` replaces the drawn noise (e.g. to share
        it across a batch); `clip_sample` overrides the config.
        """
        self._check_model_output(model_output, sample)
        position = self._chain_positions(timestep, sample)
        p = self._sampling_diffusion.p_mean_variance(
            model_output, sample, position, self._x0_processor(clip_sample), expand=False
        )
        prev_sample = p["mean"]
        adds_noise = position > 0  # the last step of the chain returns the mean: no noise at t = 0
        if not isinstance(adds_noise, bool) or adds_noise:
            if variance_noise is None:
                check_generator(generator, sample.shape[0])
                variance_noise = device_noise(sample.shape, generator, model_output.device, model_output.dtype)
            std = torch.exp(0.5 * p["log_variance"])
            if not isinstance(adds_noise, bool):
                std = std * adds_noise.view(-1, *([1] * (sample.ndim - 1)))
            prev_sample = prev_sample + std * variance_noise
        prev_sample = prev_sample.to(sample.dtype)
        pred_x0 = p["pred_x0"].to(sample.dtype)
        if not return_dict:
            return (prev_sample, pred_x0)
        return DDPMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_x0)

    def _get_variance(self, t, predicted_variance=None, variance_type=None):
        """The sampling variance sigma_t^2 at timestep t (a variance for every variance_type, unlike stock)."""
        position = self._chain_positions(t, torch.empty(0))
        diffusion = self._sampling_diffusion
        if variance_type is not None and variance_type != diffusion.variance_type:
            diffusion = GaussianDiffusion(diffusion.tables["betas"], self.config.prediction_type, variance_type)
        like = torch.empty(()) if predicted_variance is None else predicted_variance
        variance, _ = diffusion.model_variance(predicted_variance, position, like)
        return variance

    # ------------------------------------------------------------------ the paper's math, batched over t
    def _check_batch(self, t: torch.Tensor, x: torch.Tensor) -> None:
        check_timestep_batch(t, batch_of(x))

    def _train_timesteps(self, t, x: torch.Tensor):
        """Validate timesteps of the T-step process: an int, or a [B] integer tensor moved to x's device
        (`hf_ddpm.checks.train_timesteps`: floats are never truncated; accelerator tensors are not range-checked,
        which would cost a host synchronization on every call)."""
        return train_timesteps(t, x, self.config.num_train_timesteps)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """Stock `add_noise` (the same numbers), with the timesteps checked: an int or a [B] integer tensor in
        [0, T) (stock indexes with them unchecked: IndexError, or silent float truncation)."""
        t = self._train_timesteps(timesteps, original_samples)
        t = torch.tensor(t, device=original_samples.device) if isinstance(t, int) else t
        return super().add_noise(original_samples, noise, t)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """Stock `get_velocity` (v = sqrt(abar) eps - sqrt(1 - abar) x0), timesteps checked as in `add_noise`."""
        t = self._train_timesteps(timesteps, sample)
        t = torch.tensor(t, device=sample.device) if isinstance(t, int) else t
        return super().get_velocity(sample, noise, t)

    @staticmethod
    def _check_same_shape(**tensors: torch.Tensor) -> None:
        shapes = {name: tuple(x.shape) for name, x in tensors.items()}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"shapes must match, got {shapes}.")

    def _check_model_output(self, model_output: torch.Tensor, x_t: torch.Tensor) -> None:
        check_model_output(model_output, x_t)

    def q_mean_variance(self, x0: torch.Tensor, t):
        """Mean, variance and log-variance of q(x_t | x_0) (eq. 4)."""
        return self.diffusion.q_mean_variance(x0, self._train_timesteps(t, x0))

    def q_sample(self, x0: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        """Sample x_t ~ q(x_t | x_0) with the given noise (eq. 4)."""
        self._check_same_shape(x0=x0, noise=noise)
        return self.diffusion.q_sample(x0, self._train_timesteps(t, x0), noise)

    def q_posterior_mean_variance(self, x0: torch.Tensor, x_t: torch.Tensor, t):
        """(mean, variance, log_variance_clipped) of q(x_{t-1} | x_t, x_0) (eqs. 6-7)."""
        self._check_same_shape(x0=x0, x_t=x_t)
        return self.diffusion.q_posterior_mean_variance(x0, x_t, self._train_timesteps(t, x_t))

    def predict_x0(self, model_output: torch.Tensor, x_t: torch.Tensor, t) -> torch.Tensor:
        """x0_hat from an eps / x_0 / v prediction (eq. 15); a learned-variance output's extra channels are dropped."""
        self._check_model_output(model_output, x_t)
        prediction, _ = self.diffusion.split_model_output(model_output, x_t)
        return self.diffusion.predict_x0(prediction, x_t, self._train_timesteps(t, x_t))

    def p_mean_variance(self, model_output: torch.Tensor, x_t: torch.Tensor, t, clip_denoised: bool = True) -> dict:
        """{"mean", "variance", "log_variance", "pred_x0"} of p(x_{t-1} | x_t) in the T-step process (eq. 1)."""
        self._check_model_output(model_output, x_t)
        t = self._train_timesteps(t, x_t)
        return self.diffusion.p_mean_variance(model_output, x_t, t, self._x0_processor(clip_denoised))

    def prior_bpd(self, x0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)) per sample in bits/dim."""
        return self.diffusion.prior_bpd(x0)

    def vb_terms_bpd(
        self, model_output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t, clip_denoised: bool = True
    ) -> dict:
        """{"output": per-sample L_{t-1} in bits/dim (decoder NLL at t = 0), "pred_x0": x0_hat} (eq. 5)."""
        self._check_same_shape(x0=x0, x_t=x_t)
        self._check_model_output(model_output, x_t)
        t = self._train_timesteps(t, x_t)
        return self.diffusion.vb_terms_bpd(model_output, x0, x_t, t, self._x0_processor(clip_denoised))

    def training_losses(
        self,
        model_output: torch.Tensor,
        x0: torch.Tensor,
        x_t: torch.Tensor,
        noise: torch.Tensor,
        t,
        loss_type: str = "simple",
        loss_weighting: str | None = None,
        snr_gamma: float = 5.0,
        p2_k: float = 1.0,
        p2_gamma: float = 1.0,
        *,
        objective: DiffusionObjective | None = None,
    ) -> dict:
        """Per-sample `simple` / `kl` / `hybrid` losses with optional min-SNR or P2 weighting; see
        `DiffusionObjective`. A training loop builds the `objective` once and passes it instead of the loss
        keywords. x0_hat is not clipped here, so gradients reach every prediction."""
        if objective is None:
            objective = DiffusionObjective(loss_type, loss_weighting, snr_gamma, p2_k, p2_gamma)
        self._check_same_shape(x0=x0, x_t=x_t, noise=noise)
        self._check_model_output(model_output, x_t)
        t = self._train_timesteps(t, x_t)
        return self.diffusion.training_losses(model_output, x0, x_t, noise, t, objective)
