"""`hf_ddpm.DDPMLikelihoodPipeline`: the variational bound on the NLL in bits/dim (paper Table 2).

For each image: total = L_T + sum_{t=0}^{T-1} L_t, where each L_t is estimated with one fresh noise draw,
exactly as the release's `calc_bpd_loop`. The T model evaluations per image are batched across images and
timesteps together (`model_batch_size` at a time), so the cost is the UNet's and little else.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .checks import check_generator, check_positive_int
from .gaussian import mean_over_pixels
from .gaussian_diffusion import VARIANCE_TYPES
from .pipeline_ddpm import DDPMPipelineMixin, images_to_tensor
from .scheduling_ddpm import DDPMScheduler


@dataclass
class DDPMLikelihoodOutput(BaseOutput):
    """Per image: `bpd` [B] (total bound), `prior_bpd` [B] (L_T), `terms_bpd` [B, T] (L_t, t = 0..T-1) and
    `x0_mse` [B, T] (mean squared error of x0_hat in [-1, 1] units at each t: the distortion of paper Fig. 5)."""

    bpd: torch.Tensor
    prior_bpd: torch.Tensor
    terms_bpd: torch.Tensor
    x0_mse: torch.Tensor


class DDPMLikelihoodPipeline(DDPMPipelineMixin, DiffusionPipeline):
    """Bits/dim of images under a DDPM. Build it from any DDPM pipeline: `DDPMLikelihoodPipeline(**pipe.components)`.

    The bound is the DDPM's, whatever sampler the pipeline was using: any other scheduler is converted to hf_ddpm's
    DDPMScheduler from its config, which must say the model's `variance_type` (a config converted from the DDPM
    one, e.g. `DDIMScheduler.from_config(ddpm.config)`, keeps it).
    """

    @staticmethod
    def _adopt_scheduler(scheduler: SchedulerMixin) -> DDPMScheduler:
        if isinstance(scheduler, DDPMScheduler):
            return scheduler
        # the bound depends on the model's variance, which only DDPM configs record; guessing it would be silent
        if scheduler.config.get("variance_type") not in VARIANCE_TYPES:
            raise ValueError(
                f"scheduler: a {type(scheduler).__name__} whose config has no DDPM variance_type cannot give the "
                "bound: pass hf_ddpm.DDPMScheduler.from_config(scheduler.config, variance_type=...) with the "
                "model's variance."
            )
        return DDPMScheduler.from_config(scheduler.config)

    @torch.no_grad()
    def __call__(
        self,
        images,
        generator: torch.Generator | None = None,
        model_batch_size: int = 256,
        clip_denoised: bool = True,
        return_dict: bool = True,
    ) -> DDPMLikelihoodOutput | tuple:
        """Evaluate the bound for `images` (PIL images, uint8 pixels, or floats in [-1, 1] shaped [B, C, H, W]).

        `model_batch_size` is how many (image, timestep) pairs go through the UNet at once; `clip_denoised`
        clips x0_hat to [-1, 1] as the paper's evaluation does.
        """
        check_positive_int(model_batch_size, "model_batch_size", "pass how many (image, timestep) pairs go through "
                           "the UNet at once, e.g. 256")
        if isinstance(generator, (list, tuple)) and len(generator) == 1:
            generator = generator[0]
        # the bound's noise is drawn for (image, timestep) pairs in chunks, not per image: one generator
        check_generator(generator, 1, allow_list=False)
        device, dtype = self._execution_device, self.unet.dtype
        x0 = images_to_tensor(images, self.unet.config.in_channels).to(device=device, dtype=torch.float32)
        self._check_sample_shape(x0)
        scheduler = self.scheduler
        num_images, T = x0.shape[0], scheduler.config.num_train_timesteps
        terms = torch.empty(num_images * T, device=device)
        mse = torch.empty(num_images * T, device=device)
        # (image, timestep) pairs in image-major order, evaluated model_batch_size at a time
        for start in self.progress_bar(range(0, num_images * T, model_batch_size)):
            pairs = torch.arange(start, min(start + model_batch_size, num_images * T), device=device)
            x0_batch, t = x0[pairs // T], pairs % T
            noise = randn_tensor(x0_batch.shape, generator=generator, device=device, dtype=torch.float32)
            x_t = scheduler.q_sample(x0_batch, t, noise)
            model_output = self.unet(x_t.to(dtype), t).sample.float()
            vb = scheduler.vb_terms_bpd(model_output, x0_batch, x_t, t, clip_denoised=clip_denoised)
            terms[pairs] = vb["output"]
            mse[pairs] = mean_over_pixels((vb["pred_x0"] - x0_batch) ** 2)
        terms, mse = terms.view(num_images, T), mse.view(num_images, T)
        prior = scheduler.prior_bpd(x0)
        output = DDPMLikelihoodOutput(bpd=prior + terms.sum(dim=1), prior_bpd=prior, terms_bpd=terms, x0_mse=mse)
        self.maybe_free_model_hooks()
        return output if return_dict else output.to_tuple()
