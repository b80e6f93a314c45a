"""DDPMPipeline's device-resident loop: the plain loop's images bitwise, no host reads per step (no GPU
synchronization on CUDA), and the compiled UNet (`pipe.unet.compile()`, `hf-ddpm sample --compile`) within
float rounding."""

from __future__ import annotations

import contextlib

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

from hf_ddpm import DDPMPipeline, DDPMScheduler
from hf_ddpm.scheduling_ddpm import device_noise

from conftest import T, run_cli, tiny_pipeline, tiny_unet

# The Tensor methods that read values on the host: each is a GPU synchronization when the tensor is on a GPU.
HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


def plain_loop(pipe: DDPMPipeline, batch_size: int, generator, steps: int) -> torch.Tensor:
    """Images in [0, 1] from the loop as diffusers' pipelines write it, which DDPMPipeline ran before its fast path:
    `step` given the 0-d timestep tensors of `scheduler.timesteps`."""
    unet, scheduler, device = pipe.unet, pipe.scheduler, pipe.device
    size = unet.config.sample_size
    scheduler.set_timesteps(steps, device=device)
    x = randn_tensor((batch_size, unet.config.in_channels, size, size), generator=generator, device=device)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x, generator=generator).prev_sample
    return (x / 2 + 0.5).clamp(0, 1)


def quiet(pipe: DDPMPipeline) -> DDPMPipeline:
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("scheduler_config, unet_overrides, steps", [
    ({}, {}, T),                                                   # the full chain, fixed_small, clipped x0
    ({"variance_type": "fixed_large", "clip_sample": False}, {}, 7),  # respaced
    ({"variance_type": "learned_range"}, {"out_channels": 2}, 7),      # the model's variance channels
    ({"thresholding": True, "prediction_type": "v_prediction"}, {}, 5),
])
def test_the_pipeline_gives_the_plain_loops_images_bitwise(scheduler_config, unet_overrides, steps):
    pipe = quiet(DDPMPipeline(tiny_unet(**unet_overrides), DDPMScheduler(num_train_timesteps=T, **scheduler_config)))
    fast = pipe(3, torch.Generator().manual_seed(1), steps, output_type="pt").images
    assert torch.equal(fast, plain_loop(pipe, 3, torch.Generator().manual_seed(1), steps))
    # one generator per image, as `hf-ddpm sample` passes them
    generators = [torch.Generator().manual_seed(seed) for seed in (4, 5)]
    fast = pipe(2, generators, steps, output_type="pt").images
    assert torch.equal(fast, plain_loop(pipe, 2, [torch.Generator().manual_seed(seed) for seed in (4, 5)], steps))


class HostReads:
    """Counts calls of HOST_READS on any tensor while installed, and, through the pipeline's progress bar (which
    wraps the denoising loop), how many of them fell inside each loop."""

    def __init__(self, monkeypatch):
        self.count, self.in_loops = 0, []
        for name in HOST_READS:
            monkeypatch.setattr(torch.Tensor, name, self._counting(getattr(torch.Tensor, name)))

    def _counting(self, method):
        def counted(tensor, *args, **kwargs):
            self.count += 1
            return method(tensor, *args, **kwargs)
        return counted

    def watch_loops_of(self, pipe: DDPMPipeline, monkeypatch) -> None:
        progress_bar = pipe.progress_bar

        def counting_progress_bar(iterable=None, total=None):
            before = self.count
            yield from progress_bar(iterable, total)
            self.in_loops.append(self.count - before)

        monkeypatch.setattr(pipe, "progress_bar", counting_progress_bar)


def test_the_loop_reads_nothing_on_the_host_while_the_plain_loop_reads_every_step(monkeypatch):
    pipe = quiet(tiny_pipeline())
    reads = HostReads(monkeypatch)
    reads.watch_loops_of(pipe, monkeypatch)
    per_call = {}
    for steps in (5, 10, T):
        before = reads.count
        pipe(2, torch.Generator().manual_seed(0), steps, output_type="pt")
        per_call[steps] = reads.count - before
    assert reads.in_loops == [0, 0, 0]  # nothing read inside the loop, whatever the number of steps
    # a fixed number per call: the timesteps, and the checks of a respaced chain's betas when it is built
    assert per_call[5] == per_call[10] and per_call[T] <= per_call[5]
    in_plain_loop = {}
    for steps in (5, 10):
        before = reads.count
        plain_loop(pipe, 2, torch.Generator().manual_seed(0), steps)
        in_plain_loop[steps] = reads.count - before
    assert in_plain_loop[10] - in_plain_loop[5] == 5  # the counter sees the plain loop's read: one per step


def test_recorded_x0_predictions_need_no_host_reads_either(monkeypatch):
    pipe = quiet(tiny_pipeline())
    reads = HostReads(monkeypatch)
    reads.watch_loops_of(pipe, monkeypatch)
    out = pipe(1, torch.Generator().manual_seed(0), output_type="pt", record_timesteps=[T - 1, 3, 0])
    assert reads.in_loops == [0] and sorted(out.pred_original_samples) == [0, 3, T - 1]


@contextlib.contextmanager
def synchronizations_raise():
    """torch raises on any call that synchronizes the host with the GPU, inside the block."""
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("generator_device", ["cuda", "cpu"])
def test_no_gpu_synchronization_inside_the_loop(generator_device, monkeypatch):
    pipe = quiet(tiny_pipeline()).to("cuda")
    progress_bar = pipe.progress_bar

    def strict_progress_bar(iterable=None, total=None):
        with synchronizations_raise():
            yield from progress_bar(iterable, total)

    monkeypatch.setattr(pipe, "progress_bar", strict_progress_bar)
    for steps in (T, 5):  # the full chain and a respaced one (new coefficient tables to cache on the device)
        images = pipe(2, torch.Generator(generator_device).manual_seed(0), steps, output_type="pt").images
        assert torch.equal(images, plain_loop(pipe, 2, torch.Generator(generator_device).manual_seed(0), steps))
    # the same check catches the plain loop's read: step given a 0-d CUDA tensor, not the host int
    scheduler, generator = pipe.scheduler, torch.Generator(generator_device).manual_seed(0)
    x = torch.randn(1, 1, 28, 28, device="cuda")
    timestep, host_timestep = scheduler.timesteps[0], scheduler.timesteps.tolist()[0]
    with synchronizations_raise():
        scheduler.step(torch.randn_like(x), host_timestep, x, generator=generator)
        with pytest.raises(RuntimeError, match="synchroniz"):
            scheduler.step(torch.randn_like(x), timestep, x, generator=generator)
    # a CPU generator's noise reaches the GPU through pinned memory: the same numbers as randn_tensor's
    generators = [torch.Generator(generator_device).manual_seed(seed) for seed in (0, 1)]
    reference = randn_tensor((2, 3, 4), [torch.Generator(generator_device).manual_seed(seed) for seed in (0, 1)],
                             torch.device("cuda"))
    assert torch.equal(device_noise((2, 3, 4), generators, torch.device("cuda"), torch.float32), reference)


@pytest.mark.slow  # torch.compile of the tiny UNet: about a minute on a 2-core CPU with a cold inductor cache
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")  # torch's own inductor imports
def test_compiled_unet_gives_the_same_images_within_float_rounding_in_the_pipeline_and_the_cli(tmp_path, capsys):
    pipe = quiet(tiny_pipeline())
    eager = pipe(2, torch.Generator().manual_seed(0), output_type="pt").images
    pipe.unet.compile(fullgraph=True)  # the documented idiom; mode="reduce-overhead" adds CUDA graphs on a GPU
    compiled = pipe(2, torch.Generator().manual_seed(0), output_type="pt").images
    # inductor fuses and reorders float32 arithmetic: ~1e-7 per step, measured 3.6e-7 after T = 20 steps
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-5)
    assert not torch.equal(compiled, pipe(2, torch.Generator().manual_seed(1), output_type="pt").images)

    folder = tmp_path / "pipe"
    tiny_pipeline().save_pretrained(folder)
    grids = {}
    for name, flags in {"eager": [], "compiled": ["--compile", "--compile-mode", "default"]}.items():
        # one batch shape, the one compiled above: inductor's cache serves this compilation
        code, _, err = run_cli(["sample", str(folder), "--num-images", "2", "--batch-size", "2", "--steps", "5",
                                "--output", str(tmp_path / f"{name}.png"), "--quiet", *flags], capsys)
        assert code == 0, err
        grids[name] = np.asarray(PIL.Image.open(tmp_path / f"{name}.png"), dtype=np.int16)
    assert np.abs(grids["compiled"] - grids["eager"]).max() <= 1  # uint8 pixels: at most a rounding step apart


def test_compile_mode_without_compile_is_refused(tiny_pipeline_dir, tmp_path, capsys):
    code, _, err = run_cli(["sample", tiny_pipeline_dir, "--compile-mode", "default", "--output",
                            str(tmp_path / "grid.png")], capsys)
    assert code == 2 and err.count("\n") == 1 and "--compile-mode" in err and "add --compile" in err
    assert not (tmp_path / "grid.png").exists()
