"""`hf_ddpm.DDPMPipeline`: stock DDPMPipeline sampling plus progressive generation and interpolation.

Calling it with stock arguments gives stock's images for the same generator. It also takes `clip_sample`,
records x0 predictions along the chain (paper Fig. 6) and interpolates between two images in latent space at a
chosen t (paper Sec. 4.4). It saves as a stock `DDPMPipeline` of stock components.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import PIL.Image
import torch
from diffusers import DDPMPipeline as StockDDPMPipeline
from diffusers import UNet2DModel
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from .scheduling_ddpm import DDPMScheduler
from .stock_compat import StockConfigMixin, load_safetensors_only


@dataclass
class DDPMPipelineOutput(ImagePipelineOutput):
    """`images` as in stock; `pred_original_samples` maps a timestep to the x0 predictions made there."""

    pred_original_samples: dict[int, list[PIL.Image.Image] | np.ndarray | torch.Tensor] | None = None


def images_to_tensor(images, channels: int) -> torch.Tensor:
    """PIL images, uint8 arrays/tensors in [0, 255] or float tensors in [-1, 1] -> float [B, C, H, W] in [-1, 1]."""
    if isinstance(images, PIL.Image.Image):
        images = [images]
    if isinstance(images, (list, tuple)) and images and isinstance(images[0], PIL.Image.Image):
        mode = "L" if channels == 1 else "RGB"
        images = np.stack([np.asarray(image.convert(mode)) for image in images])
        images = images[..., None] if images.ndim == 3 else images
        images = torch.from_numpy(images).permute(0, 3, 1, 2)
    images = torch.as_tensor(images)
    if images.dtype == torch.uint8:
        return images.float() * (2.0 / 255.0) - 1.0
    if not images.dtype.is_floating_point:
        raise ValueError(f"images must be PIL images, uint8 pixels or floats in [-1, 1], got dtype {images.dtype}.")
    if images.ndim != 4 or images.shape[1] != channels:
        raise ValueError(f"images must have shape [B, {channels}, H, W], got {tuple(images.shape)}.")
    if images.numel() and (images.min() < -1 or images.max() > 1):
        raise ValueError("float images must lie in [-1, 1]: scale pixels k in 0..255 as 2k/255 - 1.")
    return images


class DDPMPipelineMixin(StockConfigMixin):
    """Shared by hf_ddpm's pipelines: stock components in, hf_ddpm scheduler inside, stock names when saved."""

    _stock_class_name = "DDPMPipeline"

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin):
        DiffusionPipeline.__init__(self)  # the stock pipelines' __init__ only registers the same two modules
        if not isinstance(scheduler, DDPMScheduler):  # e.g. a stock DDPMScheduler loaded from a shared repo
            scheduler = DDPMScheduler.from_config(scheduler.config)
        self.register_modules(unet=unet, scheduler=scheduler)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """diffusers' loader, restricted to safetensors unless `use_safetensors=False` is passed explicitly."""
        return load_safetensors_only(super().from_pretrained, pretrained_model_name_or_path, **kwargs)

    def _check_sample_shape(self, images: torch.Tensor) -> None:
        size = self.unet.config.sample_size
        expected = (size, size) if isinstance(size, int) else tuple(size)
        if tuple(images.shape[2:]) != expected:
            raise ValueError(f"images must be {expected[0]}x{expected[1]} for this model, got {tuple(images.shape[2:])}.")

    def postprocess(self, images: torch.Tensor, output_type: str):
        """[-1, 1] tensors -> stock DDPMPipeline's outputs: "pil", "np" (HWC in [0, 1]) or "pt" (CHW in [0, 1])."""
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}.")
        images = (images / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return images
        images = images.cpu().permute(0, 2, 3, 1).float().numpy()
        return self.numpy_to_pil(images) if output_type == "pil" else images

    def denoise(
        self,
        x_t: torch.Tensor,
        generator=None,
        clip_sample: bool | None = None,
        record_timesteps: Sequence[int] = (),
        shared_noise_groups: int = 1,
    ):
        """Run the reverse chain over `scheduler.timesteps` from x_t. Returns (x_0, {t: x0_hat at t}).

        With `shared_noise_groups` = G > 1 the batch is G groups that get the same reverse noise (interpolation).
        """
        recorded = {}
        record = set(int(t) for t in record_timesteps)
        for t in self.progress_bar(self.scheduler.timesteps):
            model_output = self.unet(x_t, t).sample
            noise = None
            if shared_noise_groups > 1:
                group_shape = (x_t.shape[0] // shared_noise_groups, *x_t.shape[1:])
                noise = randn_tensor(group_shape, generator=generator, device=x_t.device, dtype=model_output.dtype)
                noise = noise.repeat(shared_noise_groups, *([1] * (x_t.ndim - 1)))
            step = self.scheduler.step(
                model_output, t, x_t, generator=generator, variance_noise=noise, clip_sample=clip_sample
            )
            x_t = step.prev_sample
            if int(t) in record:
                recorded[int(t)] = step.pred_original_sample
        return x_t, recorded


class DDPMPipeline(DDPMPipelineMixin, StockDDPMPipeline):
    """Unconditional DDPM sampling (paper Algorithm 2); loads stock and hf_ddpm checkpoints alike."""

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        clip_sample: bool | None = None,
        record_timesteps: Sequence[int] | None = None,
    ) -> DDPMPipelineOutput | tuple:
        """Sample `batch_size` images with `num_inference_steps` steps: all T by default (stock's 1000, for any T),
        fewer than T gives the respaced chain.

        `clip_sample` overrides the scheduler's x0 clipping; `record_timesteps` returns the x0 predictions at those
        timesteps (values of `scheduler.timesteps`) as `pred_original_samples`, for progressive generation.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        size = self.unet.config.sample_size
        spatial = (size, size) if isinstance(size, int) else tuple(size)
        shape = (batch_size, self.unet.config.in_channels, *spatial)
        image = randn_tensor(shape, generator=generator, device=self._execution_device, dtype=self.unet.dtype)
        self.scheduler.set_timesteps(num_inference_steps or self.scheduler.config.num_train_timesteps)
        record_timesteps = list(record_timesteps or ())
        missing = sorted(set(record_timesteps) - set(self.scheduler.timesteps.tolist()))
        if missing:
            raise ValueError(f"record_timesteps {missing} are not in this run's timesteps: pick values of scheduler.timesteps.")
        image, recorded = self.denoise(image, generator, clip_sample, record_timesteps)
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
        """
        channels = self.unet.config.in_channels
        x_a, x_b = images_to_tensor(image_a, channels), images_to_tensor(image_b, channels)
        if x_a.shape != x_b.shape:
            raise ValueError(f"image_a and image_b must have the same shape, got {tuple(x_a.shape)} and {tuple(x_b.shape)}.")
        self._check_sample_shape(x_a)
        T = self.scheduler.config.num_train_timesteps
        if not 0 <= t < T:
            raise ValueError(f"t must lie in [0, {T - 1}], got {t}.")
        if num_points < 2:
            raise ValueError(f"num_points must be >= 2 (the two end points), got {num_points}.")
        device, dtype = self._execution_device, self.unet.dtype
        x_a, x_b = x_a.to(device), x_b.to(device)
        noise_a = randn_tensor(x_a.shape, generator=generator, device=device, dtype=x_a.dtype)
        noise_b = randn_tensor(x_b.shape, generator=generator, device=device, dtype=x_b.dtype)
        latent_a = self.scheduler.q_sample(x_a, t, noise_a)
        latent_b = self.scheduler.q_sample(x_b, t, noise_b)
        lambdas = torch.linspace(0, 1, num_points, device=device).view(-1, 1, 1, 1, 1)
        x_t = ((1 - lambdas) * latent_a + lambdas * latent_b).flatten(0, 1).to(dtype)
        steps = t + 1 if num_inference_steps is None else num_inference_steps
        chain = np.unique(np.linspace(0, t, min(steps, t + 1)).round().astype(np.int64))[::-1]
        self.scheduler.set_timesteps(timesteps=chain.tolist())
        images, _ = self.denoise(x_t, generator, shared_noise_groups=num_points)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=self.postprocess(images, output_type))
