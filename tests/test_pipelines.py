"""Pipelines: stock-identical sampling, progressive generation, interpolation, likelihood, stock loading."""

import json
import os
import subprocess
import sys
import textwrap

import diffusers
import numpy as np
import pytest
import torch

from hf_ddpm import DDPMLikelihoodPipeline, DDPMPipeline, DDPMScheduler, DDPMUNet2DModel
from hf_ddpm.gaussian import mean_over_pixels

T = 40


def tiny_unet(**kwargs):
    torch.manual_seed(0)
    return DDPMUNet2DModel.from_preset("small28", block_out_channels=(16, 32, 32), norm_num_groups=8, **kwargs).eval()


@pytest.fixture(scope="module")
def pipe():
    pipeline = DDPMPipeline(tiny_unet(), DDPMScheduler(num_train_timesteps=T))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def stock_copy(pipeline):
    stock = diffusers.DDPMPipeline(pipeline.unet, diffusers.DDPMScheduler.from_config(pipeline.scheduler.config))
    stock.set_progress_bar_config(disable=True)
    return stock


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("num_inference_steps", [T, 7])
def test_same_images_as_stock_for_the_same_generator(variance_type, num_inference_steps):
    pipeline = DDPMPipeline(tiny_unet(), DDPMScheduler(num_train_timesteps=T, variance_type=variance_type))
    pipeline.set_progress_bar_config(disable=True)
    ours = pipeline(2, torch.Generator().manual_seed(3), num_inference_steps, output_type="np").images
    stock = stock_copy(pipeline)(2, torch.Generator().manual_seed(3), num_inference_steps, output_type="np").images
    assert ours.shape == stock.shape == (2, 28, 28, 1)
    np.testing.assert_allclose(ours, stock, atol=1e-4)
    pil = pipeline(1, torch.Generator().manual_seed(3), num_inference_steps).images
    assert pil[0].size == (28, 28)


def test_progressive_x0_predictions(pipe):
    out = pipe(2, torch.Generator().manual_seed(0), output_type="pt", record_timesteps=[T - 1, 20, 0])
    assert sorted(out.pred_original_samples) == [0, 20, T - 1]
    # the last step of the chain returns x0_hat itself
    torch.testing.assert_close(out.pred_original_samples[0], out.images)
    assert not torch.allclose(out.pred_original_samples[T - 1], out.images)
    images, x0s = pipe(2, torch.Generator().manual_seed(0), output_type="pt", record_timesteps=[0], return_dict=False)
    torch.testing.assert_close(images, out.images)
    with pytest.raises(ValueError, match=r"record_timesteps \[5\] are not in this run's timesteps"):
        pipe(1, num_inference_steps=4, record_timesteps=[5])


def test_clip_sample_override(pipe):
    default = pipe(2, torch.Generator().manual_seed(1), output_type="pt").images
    clipped = pipe(2, torch.Generator().manual_seed(1), output_type="pt", clip_sample=True).images
    raw = pipe(2, torch.Generator().manual_seed(1), output_type="pt", clip_sample=False).images
    torch.testing.assert_close(default, clipped)  # the scheduler's config clips by default
    assert not torch.allclose(clipped, raw)  # an untrained model's x0_hat leaves [-1, 1], so clipping matters


def test_interpolation(pipe):
    gen = torch.Generator().manual_seed(0)
    a, b, c = (torch.randint(0, 256, (1, 1, 28, 28), dtype=torch.uint8, generator=gen) for _ in range(3))
    out = pipe.interpolate(a, b, t=20, num_points=5, generator=torch.Generator().manual_seed(7), output_type="pt").images
    assert out.shape == (5, 1, 28, 28)
    again = pipe.interpolate(a, b, t=20, num_points=5, generator=torch.Generator().manual_seed(7), output_type="pt").images
    torch.testing.assert_close(out, again)
    # noise is fixed across lambdas, so the lambda = 0 image depends on image_a only
    other = pipe.interpolate(a, c, t=20, num_points=5, generator=torch.Generator().manual_seed(7), output_type="pt").images
    torch.testing.assert_close(out[0], other[0])
    assert not torch.allclose(out[-1], other[-1])
    respaced = pipe.interpolate(a, b, t=20, num_points=3, num_inference_steps=5, output_type="pt").images
    assert respaced.shape == (3, 1, 28, 28)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 39\]"):
        pipe.interpolate(a, b, t=40)
    with pytest.raises(ValueError, match="images must be 28x28"):
        pipe.interpolate(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))


def test_likelihood_pipeline_batches_pairs_of_images_and_timesteps(pipe):
    likelihood = DDPMLikelihoodPipeline(**pipe.components)
    likelihood.set_progress_bar_config(disable=True)
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    out = likelihood(images, generator=torch.Generator().manual_seed(0), model_batch_size=3 * T)
    assert out.terms_bpd.shape == out.x0_mse.shape == (3, T) and out.bpd.shape == (3,)
    torch.testing.assert_close(out.bpd, out.prior_bpd + out.terms_bpd.sum(1))
    # recompute by hand with the same noise draw: pairs are (image, t) in image-major order
    x0 = images.float() * 2 / 255 - 1
    x0_pairs, t = x0.repeat_interleave(T, 0), torch.arange(T).repeat(3)
    noise = torch.randn(x0_pairs.shape, generator=torch.Generator().manual_seed(0))
    sched = likelihood.scheduler
    x_t = sched.q_sample(x0_pairs, t, noise)
    with torch.no_grad():
        vb = sched.vb_terms_bpd(likelihood.unet(x_t, t).sample, x0_pairs, x_t, t)
    torch.testing.assert_close(out.terms_bpd, vb["output"].view(3, T), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.x0_mse, mean_over_pixels((vb["pred_x0"] - x0_pairs) ** 2).view(3, T), rtol=1e-4, atol=1e-6)
    # small model batches give the same kind of answer (different noise draws, same bound in expectation)
    chunked = likelihood(images, generator=torch.Generator().manual_seed(0), model_batch_size=16)
    assert torch.allclose(chunked.bpd, out.bpd, rtol=0.2)


def test_saved_pipeline_names_stock_classes_and_loads_in_stock_only_process(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline"
    assert index["unet"] == ["diffusers", "UNet2DModel"] and index["scheduler"] == ["diffusers", "DDPMScheduler"]
    assert sorted(os.listdir(tmp_path / "pipe" / "unet")) == ["config.json", "diffusion_pytorch_model.safetensors"]
    expected = pipe(2, torch.Generator().manual_seed(5), output_type="np").images
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, torch, diffusers
        for cls in (diffusers.DiffusionPipeline, diffusers.DDPMPipeline):
            pipe = cls.from_pretrained({str(tmp_path / "pipe")!r})
            assert type(pipe) is diffusers.DDPMPipeline, type(pipe)
            pipe.set_progress_bar_config(disable=True)
            images = pipe(2, torch.Generator().manual_seed(5), {T}, output_type="np").images
            np.save({str(tmp_path / "stock.npy")!r}, images)
        assert not any(name.startswith("hf_ddpm") for name in sys.modules), "hf_ddpm was imported"
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "hf_ddpm" not in result.stderr  # no warning mentions hf_ddpm classes or config keys
    np.testing.assert_allclose(np.load(tmp_path / "stock.npy"), expected, atol=1e-4)
    reloaded = DDPMPipeline.from_pretrained(tmp_path / "pipe")
    assert isinstance(reloaded.scheduler, DDPMScheduler)


def test_loads_google_ddpm_layout(tmp_path):
    """The layout of the `google/ddpm-*` repos: stock classes, an old scheduler config with legacy keys."""
    unet = diffusers.UNet2DModel(**{k: v for k, v in tiny_unet().config.items() if not k.startswith("_")})
    unet.save_pretrained(tmp_path / "unet")
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "DDPMScheduler", "_diffusers_version": "0.1.1", "beta_end": 0.02, "beta_schedule": "linear",
        "beta_start": 0.0001, "clip_sample": True, "num_train_timesteps": T, "tensor_format": "pt",
        "timestep_values": None, "trained_betas": None, "variance_type": "fixed_small"}))
    (tmp_path / "model_index.json").write_text(json.dumps({
        "_class_name": "DDPMPipeline", "_diffusers_version": "0.1.1",
        "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}))
    pipeline = DDPMPipeline.from_pretrained(tmp_path)
    pipeline.set_progress_bar_config(disable=True)
    assert isinstance(pipeline.scheduler, DDPMScheduler)
    ours = pipeline(1, torch.Generator().manual_seed(0), num_inference_steps=10, output_type="np").images
    stock = diffusers.DDPMPipeline.from_pretrained(tmp_path)
    stock.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(ours, stock(1, torch.Generator().manual_seed(0), 10, output_type="np").images, atol=1e-4)


def test_pipeline_input_errors(pipe):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        pipe(0)
    with pytest.raises(ValueError, match="output_type must be 'pil', 'np' or 'pt'"):
        pipe(1, num_inference_steps=2, output_type="jpg")
    likelihood = DDPMLikelihoodPipeline(**pipe.components)
    with pytest.raises(ValueError, match=r"float images must lie in \[-1, 1\]"):
        likelihood(torch.full((1, 1, 28, 28), 3.0))
    with pytest.raises(ValueError, match=r"images must have shape \[B, 1, H, W\]"):
        likelihood(torch.zeros(1, 3, 28, 28))


def test_pickle_weights_load_only_on_explicit_opt_in(pipe, tmp_path):
    pipe.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "unet" / "diffusion_pytorch_model.bin").exists()
    with pytest.raises(OSError, match="has no safetensors weights, and hf_ddpm does not unpickle"):
        DDPMPipeline.from_pretrained(tmp_path)
    with pytest.raises(OSError, match="use_safetensors=False if you trust their source"):
        DDPMUNet2DModel.from_pretrained(tmp_path / "unet")
    assert isinstance(DDPMPipeline.from_pretrained(tmp_path, use_safetensors=False).unet, diffusers.UNet2DModel)
