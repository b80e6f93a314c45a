"""`hf_ddpm.DDPMPipeline`: sampling with any diffusers scheduler, plus progressive generation and interpolation.

Calling it with stock arguments gives stock's images for the same generator. It runs the general diffusers
denoising loop, so DDIM, DPM-Solver, UniPC, Euler and the others work as well as hf_ddpm's DDPMScheduler, with
which the loop reads nothing from the device: a GPU runs the chain without a host synchronization per step. It
also takes `clip_sample` and `eta`, records x0 predictions along the chain (paper Fig. 6) and interpolates
between two images in latent space at a chosen t (paper Sec. 4.4). It saves as a stock `DDPMPipeline` of stock
components, whichever scheduler it holds.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import PIL.Image
import torch
from diffusers import DDPMPipeline as StockDDPMPipeline
from diffusers import DDPMScheduler as StockDDPMScheduler
from diffusers import UNet2DModel
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .checks import (
    check_finite,
    check_generator,
    check_image_layout,
    check_num_inference_steps,
    check_spatial_size,
    scalar_timestep,
)
from .scheduling_ddpm import DDPMScheduler, device_noise
from .stock_compat import StockConfigMixin, load_safetensors_only


@dataclass
class DDPMPipelineOutput(ImagePipelineOutput):
    """`images` as in stock; `pred_original_samples` maps a timestep to the x0 predictions made there."""

    pred_original_samples: dict[int, list[PIL.Image.Image] | np.ndarray | torch.Tensor] | None = None


def images_to_tensor(images, channels: int) -> torch.Tensor:
    """PIL images, uint8 arrays/tensors in [0, 255] or float tensors in [-1, 1] -> float [B, C, H, W] in [-1, 1].

    Every form is checked for the [B, C, H, W] layout with the model's C (channels-last arrays are refused with the
    permutation to apply), and float pixels for NaN/Inf and the [-1, 1] range."""
    if isinstance(images, PIL.Image.Image):
        images = [images]
    if isinstance(images, (list, tuple)) and images and isinstance(images[0], PIL.Image.Image):
        mode = "L" if channels == 1 else "RGB"
        sizes = sorted({image.size for image in images})
        if len(sizes) > 1:
            raise ValueError(f"images have mixed sizes {sizes}: resize them to the model's size first.")
        images = np.stack([np.asarray(image.convert(mode)) for image in images])
        images = images[..., None] if images.ndim == 3 else images
        images = torch.from_numpy(images).permute(0, 3, 1, 2)
    try:
        images = torch.as_tensor(images)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"images must be PIL images, a uint8 array or a float tensor [B, C, H, W], got "
                         f"{type(images).__name__}: stack them into one array first.") from None
    if images.dtype != torch.uint8 and not images.dtype.is_floating_point:
        raise ValueError(f"images must be PIL images, uint8 pixels or floats in [-1, 1], got dtype {images.dtype}: "
                         "pass uint8 pixels 0..255, or floats scaled as 2k/255 - 1.")
    check_image_layout(images.shape, channels)
    if images.dtype == torch.uint8:
        return images.float() * (2.0 / 255.0) - 1.0
    check_finite(images)
    if images.numel() and (images.min() < -1 or images.max() > 1):
        raise ValueError("float images must lie in [-1, 1]: scale pixels k in 0..255 as 2k/255 - 1.")
    return images


class DDPMPipelineMixin(StockConfigMixin):
    """Shared by hf_ddpm's pipelines: stock components in, stock names when saved; `_adopt_scheduler` decides
    what a scheduler becomes when it is passed in or assigned."""

    _stock_class_name = "DDPMPipeline"

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin):
        DiffusionPipeline.__init__(self)  # the stock pipelines' __init__ only registers the same two modules
        self.register_modules(unet=unet, scheduler=scheduler)

    def __setattr__(self, name, value):
        # register_modules and `pipe.scheduler = ...` both land here, so every way in gets the same treatment
        if name == "scheduler":
            value = self._adopt_scheduler(value)
        super().__setattr__(name, value)

    @staticmethod
    def _adopt_scheduler(scheduler: SchedulerMixin) -> SchedulerMixin:
        """Any scheduler is kept as it is, except a stock DDPMScheduler (e.g. from a google/ddpm-* repo), which
        becomes hf_ddpm's: the same config and images, plus the exact math and the extras."""
        if type(scheduler) is StockDDPMScheduler:
            return DDPMScheduler.from_config(scheduler.config)
        return scheduler

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """diffusers' loader, restricted to safetensors unless `use_safetensors=False` is passed explicitly."""
        return load_safetensors_only(super().from_pretrained, pretrained_model_name_or_path, kind="pipeline", **kwargs)

    def _check_sample_shape(self, images: torch.Tensor) -> None:
        size = self.unet.config.sample_size
        check_spatial_size(images.shape, (size, size) if isinstance(size, int) else tuple(size))

    def postprocess(self, images: torch.Tensor, output_type: str):
        """[-1, 1] tensors -> stock DDPMPipeline's outputs: "pil", "np" (HWC in [0, 1]) or "pt" (CHW in [0, 1])."""
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}.")
        images = (images / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return images
        images = images.cpu().permute(0, 2, 3, 1).float().numpy()
        return self.numpy_to_pil(images) if output_type == "pil" else images

    def _step_kwargs(self, generator, clip_sample: bool | None, eta: float | None) -> dict:
        """The keyword arguments to pass to this scheduler's `step`, read once from its signature.

        Schedulers differ in what `step` takes (UniPC: no generator, DDIM: eta, only hf_ddpm's DDPMScheduler:
        clip_sample), so only accepted arguments are passed; options the user set explicitly must be accepted.
        """
        scheduler_name = type(self.scheduler).__name__
        accepted = inspect.signature(self.scheduler.step).parameters
        kwargs = {"generator": generator} if "generator" in accepted else {}
        if clip_sample is not None:
            if "clip_sample" not in accepted:
                raise ValueError(
                    f"clip_sample is not an argument of {scheduler_name}.step: set it in the scheduler's config "
                    f"instead: pipe.scheduler = {scheduler_name}.from_config(pipe.scheduler.config, clip_sample=...)."
                )
            kwargs["clip_sample"] = clip_sample
        if eta is not None:
            if "eta" not in accepted:
                raise ValueError(
                    f"eta is not an argument of {scheduler_name}.step: leave eta=None, or use a scheduler that takes "
                    "it such as DDIMScheduler."
                )
            kwargs["eta"] = eta
        return kwargs

    def denoise(
        self,
        x_t: torch.Tensor,
        generator=None,
        clip_sample: bool | None = None,
        record_timesteps: Sequence[float] = (),
        shared_noise_groups: int = 1,
        eta: float | None = None,
    ):
        """Run the general diffusers denoising loop over `scheduler.timesteps` from x_t (already scaled by
        `init_noise_sigma`). Returns (x_0, {t: x0_hat at t}).

        With hf_ddpm's DDPMScheduler the loop never reads the device: the UNet gets the elements of
        `scheduler.timesteps` (on the device after `set_timesteps(..., device=...)`), `step` gets them as host ints
        (lookups in its coefficient tables, cached on the device) and noise is drawn by `device_noise`. On a GPU the
        host then queues the whole chain without waiting for it.

        With `shared_noise_groups` = G > 1 the batch is G groups that get the same reverse noise (interpolation);
        that passes `variance_noise` to the step, as hf_ddpm's DDPMScheduler takes it.
        """
        scheduler = self.scheduler
        step_kwargs = self._step_kwargs(generator, clip_sample, eta)
        # host ints for hf_ddpm's step, read once per call: given the 0-d tensors, step would read one per step
        host_timesteps = scheduler.timesteps.tolist() if isinstance(scheduler, DDPMScheduler) else None
        recorded = {}
        record = set(record_timesteps)
        for i, t in enumerate(self.progress_bar(scheduler.timesteps)):
            model_output = self.unet(scheduler.scale_model_input(x_t, t), t).sample
            if model_output.shape[1] != x_t.shape[1] and not isinstance(scheduler, DDPMScheduler):
                # a learned-variance UNet outputs [prediction, variance] (2C channels); only hf_ddpm's DDPM
                # scheduler uses the variance, the others sample from the prediction alone
                model_output = model_output[:, : x_t.shape[1]]
            if shared_noise_groups > 1:
                group_shape = (x_t.shape[0] // shared_noise_groups, *x_t.shape[1:])
                noise = device_noise(group_shape, generator, x_t.device, model_output.dtype)
                step_kwargs["variance_noise"] = noise.repeat(shared_noise_groups, *([1] * (x_t.ndim - 1)))
            step_timestep = t if host_timesteps is None else host_timesteps[i]
            step = scheduler.step(model_output, step_timestep, x_t, **step_kwargs)
            x_t = step.prev_sample
            if record and getattr(step, "pred_original_sample", None) is None:
                raise ValueError(
                    f"record_timesteps needs the x0 predictions that {type(scheduler).__name__}.step does not "
                    "return: use a scheduler whose step output has pred_original_sample (e.g. DDPMScheduler, "
                    "DDIMScheduler, EulerDiscreteScheduler), or leave record_timesteps out."
                )
            if record:
                timestep = t.item() if host_timesteps is None else step_timestep  # .item() is a host sync
                if timestep in record:
                    recorded[timestep] = step.pred_original_sample
        return x_t, recorded


class DDPMPipeline(DDPMPipelineMixin, StockDDPMPipeline):
    """Unconditional sampling (paper Algorithm 2 with the DDPM scheduler); loads stock and hf_ddpm checkpoints alike.

    The pipeline keeps the scheduler it is given, passed in, assigned (`pipe.scheduler =
    DDIMScheduler.from_config(pipe.scheduler.config)`) or loaded, except that a stock DDPMScheduler becomes
    hf_ddpm's (the same images, the exact math). It saves as a stock `DDPMPipeline` with that scheduler's name.
    """

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        clip_sample: bool | None = None,
        record_timesteps: Sequence[float] | None = None,
        eta: float | None = None,
    ) -> DDPMPipelineOutput | tuple:
        """Sample `batch_size` images with `num_inference_steps` steps of the pipeline's scheduler.

        The loop is diffusers' general one: noise times `scheduler.init_noise_sigma`, `scale_model_input` before
        the UNet, and `step` given only the arguments it accepts (the generator where it takes one).
        `num_inference_steps` defaults to T, whatever the scheduler: the full chain for DDPM, and stock
        DDPMPipeline's 1000 for the usual T = 1000; pass fewer for fast samplers (DDIM, DPM-Solver: 10 to 50) or
        for a respaced DDPM chain.

        `clip_sample` overrides the DDPM scheduler's x0 clipping (other schedulers set it in their config);
        `eta` is DDIM's noise level (0 by default: deterministic; 1: DDPM-like), for schedulers whose step takes
        it. `record_timesteps` returns the x0 predictions at those timesteps (values of `scheduler.timesteps`) as
        `pred_original_samples`, for progressive generation, with schedulers whose step output has them.

        With hf_ddpm's DDPMScheduler the chain runs without a host synchronization per step (see `denoise`); a
        generator on the execution device (`torch.Generator("cuda").manual_seed(0)`) draws the noise there too
        (a CPU generator gives the CPU's numbers, copied without blocking). For a fixed batch shape,
        `pipe.unet.compile(mode="reduce-overhead")` adds torch.compile and, on a GPU, CUDA graphs: the same images
        up to float rounding.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        check_generator(generator, batch_size)
        device, scheduler = self._execution_device, self.scheduler
        takes_device = "device" in inspect.signature(scheduler.set_timesteps).parameters
        T = scheduler.config.num_train_timesteps
        steps = check_num_inference_steps(num_inference_steps, T) or T
        scheduler.set_timesteps(steps, **({"device": device} if takes_device else {}))
        record_timesteps = list(record_timesteps or ())
        missing = sorted(set(record_timesteps) - set(scheduler.timesteps.tolist()))
        if missing:
            raise ValueError(f"record_timesteps {missing} are not in this run's timesteps: pick values of scheduler.timesteps.")
        size = self.unet.config.sample_size
        spatial = (size, size) if isinstance(size, int) else tuple(size)
        shape = (batch_size, self.unet.config.in_channels, *spatial)
        # after set_timesteps: sigma-based schedulers (Euler...) derive init_noise_sigma from the chosen sigmas
        image = device_noise(shape, generator, device, self.unet.dtype)
        image = image * scheduler.init_noise_sigma
        image, recorded = self.denoise(image, generator, clip_sample, record_timesteps, eta=eta)
        images = self.postprocess(image, output_type)
        pred_x0 = {t: self.postprocess(x0, output_type) for t, x0 in recorded.items()} if record_timesteps else None
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,) if pred_x0 is None else (images, pred_x0)
        return DDPMPipelineOutput(images=images, pred_original_samples=pred_x0)

    @torch.no_grad()
    def interpolate(
        self,
        image_a,
        image_b,
        t: int = 500,
        num_points: int = 9,
        generator: torch.Generator | None = None,
        num_inference_steps: int | None = None,
        output_type: str = "pil",
    ):
        """Interpolate two images through the diffusion latent space (paper Sec. 4.4, Fig. 8).

        Both images are encoded with q to x_t and x'_t (the same noise for every mixing weight), mixed as
        (1 - lambda) x_t + lambda x'_t for `num_points` values of lambda in [0, 1], and decoded by the reverse
        chain from t (all t steps, or `num_inference_steps` respaced ones) with noise shared across lambdas.
        Returns an `ImagePipelineOutput` whose images are ordered lambda-major: [lambda_0 pairs..., lambda_1 ...].
        It needs hf_ddpm's DDPMScheduler (q(x_t | x_0), a chain that starts at t, shared noise).
        """
        if not isinstance(self.scheduler, DDPMScheduler):
            raise ValueError(
                f"interpolate needs hf_ddpm's DDPMScheduler, but the scheduler is a {type(self.scheduler).__name__}: "
                "set pipe.scheduler = hf_ddpm.DDPMScheduler.from_config(pipe.scheduler.config) first."
            )
        channels = self.unet.config.in_channels
        x_a, x_b = images_to_tensor(image_a, channels), images_to_tensor(image_b, channels)
        if x_a.shape != x_b.shape:
            raise ValueError(f"image_a and image_b must have the same shape, got {tuple(x_a.shape)} and {tuple(x_b.shape)}.")
        self._check_sample_shape(x_a)
        T = self.scheduler.config.num_train_timesteps
        t = scalar_timestep(t, "t")
        if not 0 <= t < T:
            raise ValueError(f"t must lie in [0, {T - 1}], got {t}: pick the diffusion step to mix at in that range.")
        if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 2:
            raise ValueError(f"num_points must be an integer >= 2 (the two end points), got {num_points!r}.")
        check_num_inference_steps(num_inference_steps)  # at most t + 1 steps: one value serves every t
        check_generator(generator, x_a.shape[0])
        device, dtype = self._execution_device, self.unet.dtype
        x_a, x_b = x_a.to(device), x_b.to(device)
        noise_a = device_noise(x_a.shape, generator, device, x_a.dtype)
        noise_b = device_noise(x_b.shape, generator, device, x_b.dtype)
        latent_a = self.scheduler.q_sample(x_a, t, noise_a)
        latent_b = self.scheduler.q_sample(x_b, t, noise_b)
        lambdas = torch.linspace(0, 1, num_points, device=device).view(-1, 1, 1, 1, 1)
        x_t = ((1 - lambdas) * latent_a + lambdas * latent_b).flatten(0, 1).to(dtype)
        steps = t + 1 if num_inference_steps is None else num_inference_steps
        chain = np.unique(np.linspace(0, t, min(steps, t + 1)).round().astype(np.int64))[::-1]
        self.scheduler.set_timesteps(timesteps=chain.tolist(), device=device)
        images, _ = self.denoise(x_t, generator, shared_noise_groups=num_points)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=self.postprocess(images, output_type))
