"""DDPMPipeline with any diffusers scheduler: the general denoising loop, the extras' limits, stock-named saving."""

import json
import subprocess
import sys
import textwrap

import diffusers
import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from hf_ddpm import DDPMLikelihoodPipeline, DDPMPipeline, DDPMScheduler, DDPMUNet2DModel

T = 20
STEPS = 8  # fewer than T: the fast samplers' use, and a respaced chain for DDPM


def tiny_unet():
    torch.manual_seed(0)
    return DDPMUNet2DModel.from_preset("small28", block_out_channels=(16, 32, 32), norm_num_groups=8).eval()


def ddpm_config(**overrides):
    return DDPMScheduler(num_train_timesteps=T, **overrides).config


# name: (scheduler class, from_config overrides, eta passed to the pipeline, whether step takes a generator,
#        the class stock DDPMPipeline runs correctly with, or None where it fails or skips the input scaling)
SAMPLERS = {
    "ddpm": (DDPMScheduler, {}, None, True, diffusers.DDPMScheduler),
    "ddim-eta0": (DDIMScheduler, {}, 0.0, True, DDIMScheduler),
    "ddim-eta1": (DDIMScheduler, {}, 1.0, True, None),  # stock passes no eta
    "dpm-solver++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}, None, True,
                     DPMSolverMultistepScheduler),
    "unipc": (UniPCMultistepScheduler, {}, None, False, None),  # stock passes generator=, which UniPC rejects
    "euler": (EulerDiscreteScheduler, {}, None, True, None),  # stock skips init_noise_sigma and scale_model_input
    "euler-ancestral": (EulerAncestralDiscreteScheduler, {}, None, True, None),
}


def reference_loop(unet, scheduler, steps, seed, batch=2, eta=None, takes_generator=True, record=()):
    """diffusers' general denoising loop, written out plainly: ([0, 1] images, {t: x0_hat in [-1, 1]})."""
    generator = torch.Generator().manual_seed(seed)
    scheduler.set_timesteps(steps)
    x = torch.randn((batch, 1, 28, 28), generator=generator) * scheduler.init_noise_sigma
    kwargs = ({"generator": generator} if takes_generator else {}) | ({} if eta is None else {"eta": eta})
    x0s = {}
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = scheduler.step(unet(scheduler.scale_model_input(x, t), t).sample, t, x, **kwargs)
            x = out.prev_sample
            if t.item() in record:
                x0s[t.item()] = out.pred_original_sample
    return (x / 2 + 0.5).clamp(0, 1), x0s


def make_pipeline(scheduler_cls, overrides, idiom):
    if idiom == "constructor":
        pipe = DDPMPipeline(tiny_unet(), scheduler_cls.from_config(ddpm_config(), **overrides))
    else:
        pipe = DDPMPipeline(tiny_unet(), DDPMScheduler(num_train_timesteps=T))
        pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config, **overrides)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("idiom", ["constructor", "assignment"])
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_pipeline_runs_the_general_loop_for_every_scheduler(name, idiom):
    scheduler_cls, overrides, eta, takes_generator, stock_cls = SAMPLERS[name]
    pipe = make_pipeline(scheduler_cls, overrides, idiom)
    assert type(pipe.scheduler) is scheduler_cls and pipe.config.scheduler[1] == scheduler_cls.__name__
    ours = pipe(2, torch.Generator().manual_seed(3), STEPS, output_type="pt", eta=eta).images
    reference, _ = reference_loop(
        pipe.unet, scheduler_cls.from_config(pipe.scheduler.config), STEPS, 3, eta=eta, takes_generator=takes_generator
    )
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
    if stock_cls is not None:
        stock = diffusers.DDPMPipeline(pipe.unet, stock_cls.from_config(pipe.scheduler.config))
        stock.set_progress_bar_config(disable=True)
        stock_images = stock(2, torch.Generator().manual_seed(3), STEPS, output_type="np").images
        np.testing.assert_allclose(pipe(2, torch.Generator().manual_seed(3), STEPS, output_type="np", eta=eta).images,
                                   stock_images, atol=1e-4)


def test_ddim_eta_reaches_the_step():
    pipe = make_pipeline(DDIMScheduler, {}, "constructor")
    default, eta0, eta1 = (pipe(2, torch.Generator().manual_seed(0), STEPS, output_type="pt", eta=eta).images
                           for eta in (None, 0.0, 1.0))
    torch.testing.assert_close(default, eta0, rtol=0, atol=0)  # DDIM's own default is eta = 0
    assert not torch.allclose(eta0, eta1, atol=1e-3)  # eta = 1 adds fresh noise at every step


def test_stock_ddpm_scheduler_becomes_hf_ddpm_and_others_are_kept():
    stock = diffusers.DDPMScheduler.from_config(ddpm_config())
    pipe = DDPMPipeline(tiny_unet(), stock)
    assert type(pipe.scheduler) is DDPMScheduler and dict(pipe.scheduler.config) == dict(ddpm_config())
    ddim = DDIMScheduler.from_config(ddpm_config())
    pipe.scheduler = ddim
    assert pipe.scheduler is ddim
    pipe.scheduler = stock
    assert type(pipe.scheduler) is DDPMScheduler and pipe.config.scheduler[1] == "DDPMScheduler"


@pytest.mark.parametrize("scheduler_cls", [DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler])
def test_record_timesteps_with_any_scheduler_that_predicts_x0(scheduler_cls):
    pipe = make_pipeline(scheduler_cls, {}, "assignment")
    probe = scheduler_cls.from_config(pipe.scheduler.config)
    probe.set_timesteps(STEPS)
    picks = [probe.timesteps[0].item(), probe.timesteps[STEPS // 2].item()]  # Euler's are floats
    out = pipe(2, torch.Generator().manual_seed(1), STEPS, output_type="pt", record_timesteps=picks)
    _, x0s = reference_loop(pipe.unet, probe, STEPS, 1, record=picks)
    assert sorted(out.pred_original_samples) == sorted(picks)
    for t in picks:
        torch.testing.assert_close(out.pred_original_samples[t], (x0s[t] / 2 + 0.5).clamp(0, 1), rtol=0, atol=1e-6)


@pytest.mark.parametrize("scheduler_cls", [DPMSolverMultistepScheduler, UniPCMultistepScheduler])
def test_record_timesteps_without_x0_predictions_is_refused(scheduler_cls):
    pipe = make_pipeline(scheduler_cls, {}, "assignment")
    pipe.scheduler.set_timesteps(STEPS)
    first = pipe.scheduler.timesteps[0].item()
    with pytest.raises(ValueError, match=f"x0 predictions that {scheduler_cls.__name__}.step does not return"):
        pipe(1, num_inference_steps=STEPS, record_timesteps=[first])


def test_ddpm_only_options_are_refused_clearly_with_other_schedulers():
    pipe = make_pipeline(DDIMScheduler, {}, "assignment")
    with pytest.raises(ValueError, match=r"clip_sample is not an argument of DDIMScheduler.step: set it in the "
                                         r"scheduler's config instead"):
        pipe(1, num_inference_steps=2, clip_sample=False)
    image = torch.zeros(1, 1, 28, 28)
    with pytest.raises(ValueError, match="interpolate needs hf_ddpm's DDPMScheduler, but the scheduler is a DDIM"):
        pipe.interpolate(image, image, t=5)
    pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(ValueError, match="eta is not an argument of DDPMScheduler.step: leave eta=None"):
        pipe(1, num_inference_steps=2, eta=0.5)
    assert pipe.interpolate(image, image, t=5, num_points=2, output_type="pt").images.shape == (2, 1, 28, 28)


def test_likelihood_pipeline_converts_to_the_ddpm_scheduler_or_refuses():
    ddpm = DDPMPipeline(tiny_unet(), DDPMScheduler(num_train_timesteps=T, variance_type="fixed_large"))
    sampler = DDPMPipeline(ddpm.unet, DDIMScheduler.from_config(ddpm.scheduler.config))
    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    likelihoods = [DDPMLikelihoodPipeline(**p.components) for p in (ddpm, sampler)]
    assert type(likelihoods[1].scheduler) is DDPMScheduler
    assert likelihoods[1].scheduler.config.variance_type == "fixed_large"  # kept through the DDIM config
    bpds = [lk(images, generator=torch.Generator().manual_seed(4)).bpd for lk in likelihoods]
    torch.testing.assert_close(bpds[0], bpds[1], rtol=0, atol=0)
    with pytest.raises(ValueError, match="a DDIMScheduler whose config has no DDPM variance_type cannot give the bound"):
        DDPMLikelihoodPipeline(unet=ddpm.unet, scheduler=DDIMScheduler(num_train_timesteps=T))
    likelihoods[0].scheduler = EulerDiscreteScheduler.from_config(ddpm.scheduler.config)
    assert type(likelihoods[0].scheduler) is DDPMScheduler


def test_ddim_pipeline_saves_as_stock_and_loads_in_a_stock_only_process(tmp_path):
    pipe = make_pipeline(DDIMScheduler, {}, "assignment")
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline"
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"] and index["unet"] == ["diffusers", "UNet2DModel"]
    expected = pipe(2, torch.Generator().manual_seed(5), STEPS, output_type="np").images
    reloaded = DDPMPipeline.from_pretrained(tmp_path / "pipe")
    reloaded.set_progress_bar_config(disable=True)
    assert type(reloaded.scheduler) is DDIMScheduler
    np.testing.assert_array_equal(reloaded(2, torch.Generator().manual_seed(5), STEPS, output_type="np").images, expected)
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, torch, diffusers
        pipe = diffusers.DDPMPipeline.from_pretrained({str(tmp_path / "pipe")!r})
        assert type(pipe.scheduler) is diffusers.DDIMScheduler, type(pipe.scheduler)
        pipe.set_progress_bar_config(disable=True)
        np.save({str(tmp_path / "stock.npy")!r}, pipe(2, torch.Generator().manual_seed(5), {STEPS}, output_type="np").images)
        assert not any(name.startswith("hf_ddpm") for name in sys.modules), "hf_ddpm was imported"
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(np.load(tmp_path / "stock.npy"), expected, atol=1e-5)


@pytest.mark.parametrize("scheduler_cls", [DDIMScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler])
def test_learned_variance_models_sample_with_any_scheduler_from_their_prediction_channels(scheduler_cls):
    torch.manual_seed(0)
    unet = DDPMUNet2DModel.from_preset("small28", learned_variance=True, block_out_channels=(16, 32, 32),
                                       norm_num_groups=8).eval()
    assert unet.config.out_channels == 2
    config = DDPMScheduler(num_train_timesteps=T, variance_type="learned_range").config
    pipe = DDPMPipeline(unet, scheduler_cls.from_config(config))
    pipe.set_progress_bar_config(disable=True)
    ours = pipe(2, torch.Generator().manual_seed(2), STEPS, output_type="pt").images

    class PredictionOnly(torch.nn.Module):  # the general loop on the first C channels: eps, not the variance
        def forward(self, x, t):
            return type("Out", (), {"sample": unet(x, t).sample[:, :1]})()

    takes_generator = scheduler_cls is not UniPCMultistepScheduler
    reference, _ = reference_loop(PredictionOnly(), scheduler_cls.from_config(config), STEPS, 2,
                                  takes_generator=takes_generator)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
    pipe.scheduler = DDPMScheduler.from_config(config)  # hf_ddpm's DDPM scheduler uses the learned variance
    assert pipe(1, torch.Generator().manual_seed(2), STEPS, output_type="pt").images.shape == (1, 1, 28, 28)
