"""hf-ddpm: Denoising Diffusion Probabilistic Models (Ho, Jain & Abbeel 2020), exactly, native to diffusers."""

from .gaussian_diffusion import GaussianDiffusion
from .pipeline_ddpm import DDPMPipeline, DDPMPipelineOutput
from .pipeline_likelihood import DDPMLikelihoodOutput, DDPMLikelihoodPipeline
from .scheduling_ddpm import DDPMScheduler
from .timestep_sampling import LossSecondMomentSampler, UniformTimestepSampler
from .unet import UNET_PRESETS, DDPMUNet2DModel

__version__ = "0.1.0"
__all__ = [
    "DDPMLikelihoodOutput",
    "DDPMLikelihoodPipeline",
    "DDPMPipeline",
    "DDPMPipelineOutput",
    "DDPMScheduler",
    "DDPMUNet2DModel",
    "GaussianDiffusion",
    "LossSecondMomentSampler",
    "UNET_PRESETS",
    "UniformTimestepSampler",
]
