"""hf_ddpm/checks.py guarding the Python API (issue 9): every bad input is a ValueError of one line that names the
argument, the problem and the fix; every good input that used to work still gives the same numbers."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch

from hf_ddpm import DDPMLikelihoodPipeline, DDPMPipeline, DDPMScheduler, DDPMUNet2DModel
from hf_ddpm.checks import check_unet_config
from hf_ddpm.options import UsageError

from conftest import T, tiny_pipeline, tiny_unet


def refused(call, *fragments, error=ValueError) -> str:
    """Run `call`; it must raise `error` with one line holding every fragment (the problem and the fix)."""
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"
    return message


@pytest.fixture(scope="module")
def pipe():
    pipeline = tiny_pipeline()
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def sched():
    return DDPMScheduler(num_train_timesteps=T)


x = torch.zeros(2, 1, 4, 4)


# --------------------------------------------------------------------------------------------------- timesteps
BAD_TIMESTEPS = [  # (timestep, fragments): floats are never truncated, tensors must be integer [B]
    (3.5, ["timestep must be an integer, got 3.5", "pass a whole number"]),
    (float("nan"), ["timestep must be an integer, got nan"]),
    (torch.tensor(3.5), ["timesteps must be integers, got dtype torch.float32", "pass an integer tensor"]),
    (torch.tensor(3.0), ["got dtype torch.float32", "pass an integer tensor"]),
    (torch.tensor([1.5, 2.0]), ["timesteps must be integers, got dtype torch.float32", "pass an integer tensor"]),
    (torch.tensor([True, False]), ["got dtype torch.bool"]),
    (torch.zeros(2, 2, dtype=torch.long), ["timesteps must have shape [batch] = [2] (or be a scalar), got (2, 2)",
                                           "pass one timestep per sample"]),
    (torch.zeros(3, dtype=torch.long), ["shape [batch] = [2]", "got (3,)"]),
    (True, ["got bool", "pass an int or a [batch] integer tensor"]),
    (None, ["got NoneType", "pass an int"]),
    ("3", ["got str", "pass an int"]),
    ([1, 2], ["got a list", "pass torch.tensor(timesteps)"]),
    (T, [f"timestep must lie in [0, {T - 1}], got {T}", f"pass timesteps in [0, {T - 1}]"]),
    (torch.tensor([25, 3]), [f"timesteps must lie in [0, {T - 1}], got values 3..25"]),
]


@pytest.mark.parametrize("method", ["q_sample", "add_noise", "get_velocity", "p_mean_variance"])
@pytest.mark.parametrize("timestep, fragments", BAD_TIMESTEPS, ids=[repr(t)[:40] for t, _ in BAD_TIMESTEPS])
def test_bad_timesteps_of_the_T_step_process(method, timestep, fragments):
    s = sched()
    calls = {"q_sample": lambda: s.q_sample(x, timestep, x), "add_noise": lambda: s.add_noise(x, x, timestep),
             "get_velocity": lambda: s.get_velocity(x, x, timestep),
             "p_mean_variance": lambda: s.p_mean_variance(x, x, timestep)}
    if method in ("add_noise", "get_velocity") and isinstance(timestep, list):
        fragments = ["got a list"]
    refused(calls[method], *fragments)


@pytest.mark.parametrize("timestep, fragments", [
    (3.5, ["timestep must be an integer, got 3.5"]),
    (torch.tensor(18.5), ["got dtype torch.float32"]),
    (torch.tensor([19.0, 18.5]), ["timesteps must be integers, got dtype torch.float32"]),
    (torch.full((2, 2), 19), ["timesteps must have shape [batch] = [2]", "got (2, 2)"]),
    (None, ["got NoneType"]),
    (True, ["got bool"]),
    (7, ["timestep 7 is not in the sampling chain", "step() takes the values of scheduler.timesteps"]),
])
def test_bad_timesteps_of_step(timestep, fragments):
    s = sched()
    s.set_timesteps(5)
    refused(lambda: s.step(x, timestep, x), *fragments)


def test_integral_timesteps_in_any_integer_form_give_the_same_numbers():
    s, stock = sched(), diffusers.DDPMScheduler(num_train_timesteps=T)
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 1, 4, 4, generator=generator), torch.randn(2, 1, 4, 4, generator=generator)
    expected = s.q_sample(x0, 7, noise)
    for t in (7.0, np.int64(7), torch.tensor(7), torch.tensor(7, dtype=torch.int32)):
        torch.testing.assert_close(s.q_sample(x0, t, noise), expected, rtol=0, atol=0)
    batch = torch.tensor([7, 3])
    for ours, theirs in ((s.add_noise(x0, noise, batch), stock.add_noise(x0, noise, batch)),
                         (s.add_noise(x0, noise, 7), stock.add_noise(x0, noise, torch.tensor(7))),
                         (s.get_velocity(x0, noise, batch), stock.get_velocity(x0, noise, batch))):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)  # stock's tables are float32-built
    s.set_timesteps(T)
    a = s.step(x0, 7, x0, generator=torch.Generator().manual_seed(1)).prev_sample
    b = s.step(x0, torch.tensor(7), x0, generator=torch.Generator().manual_seed(1)).prev_sample
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_model_output_of_another_shape_is_named_with_the_fix():
    refused(lambda: sched().step(torch.zeros(2, 1, 4, 5), T - 1, x), "model_output (2, 1, 4, 5) does not match the "
            "sample (2, 1, 4, 4)", "pass the UNet's output for this very sample")


# -------------------------------------------------------------------------------------------------- generators
def generators(n):
    return [torch.Generator().manual_seed(i) for i in range(n)]


def test_lists_of_generators_of_the_wrong_length(pipe):
    refused(lambda: pipe(2, generators(3), 2), "a list of 3 generators for a batch of 2",
            "pass one generator per image (2), or a single torch.Generator")
    refused(lambda: pipe(3, generators(2), 2), "a list of 2 generators for a batch of 3")
    refused(lambda: pipe(1, 0, 2), "generator must be a torch.Generator or a list of them, got int",
            "torch.Generator().manual_seed(seed)")
    refused(lambda: pipe(2, [torch.Generator(), 5], 2), "must be a list of torch.Generator, got ['int']")
    s = sched()
    s.set_timesteps(T)
    refused(lambda: s.step(x, T - 1, x, generator=generators(3)), "a list of 3 generators for a batch of 2")
    image = torch.zeros(1, 1, 28, 28)
    refused(lambda: pipe.interpolate(image, image, t=3, generator=generators(2)),
            "a list of 2 generators for a batch of 1")
    likelihood = DDPMLikelihoodPipeline(**pipe.components)
    refused(lambda: likelihood(torch.zeros(2, 1, 28, 28), generator=generators(2)),
            "generator must be one torch.Generator here, got a list of 2", "pass a single torch.Generator")


def test_generators_of_the_right_length_are_used_one_per_image(pipe):
    one = pipe(2, torch.Generator().manual_seed(0), 3, output_type="pt").images
    single_list = pipe(2, [torch.Generator().manual_seed(0)], 3, output_type="pt").images  # diffusers: one generator
    torch.testing.assert_close(one, single_list, rtol=0, atol=0)
    per_image = pipe(2, generators(2), 3, output_type="pt").images
    again = pipe(2, generators(2), 3, output_type="pt").images
    torch.testing.assert_close(per_image, again, rtol=0, atol=0)
    first = pipe(1, generators(1), 3, output_type="pt").images
    torch.testing.assert_close(per_image[:1], first, rtol=0, atol=2e-6)  # image 0 depends on generator 0 only


# --------------------------------------------------------------------------------------------- step counts
@pytest.mark.parametrize("steps, fragments", [
    (0, ["num_inference_steps must be an integer >= 1, got 0", f"pass 1..{T}"]),
    (-3, ["got -3"]),
    (2.5, ["got 2.5"]),
    (True, ["got True"]),
    (T + 1, [f"num_inference_steps must be <= num_train_timesteps = {T}, got {T + 1}", f"pass 1..{T}"]),
])
def test_bad_num_inference_steps(pipe, steps, fragments):
    refused(lambda: pipe(1, num_inference_steps=steps, output_type="np"), *fragments)


def test_default_num_inference_steps_is_T(pipe):
    pipe(1, num_inference_steps=None, output_type="np")
    assert len(pipe.scheduler.timesteps) == T


def test_interpolate_refuses_a_float_t_and_bad_counts(pipe):
    image = torch.zeros(1, 1, 28, 28)
    refused(lambda: pipe.interpolate(image, image, t=2.5), "t must be an integer, got 2.5", "pass a whole number")
    refused(lambda: pipe.interpolate(image, image, t=3, num_points=2.0), "num_points must be an integer >= 2")
    refused(lambda: pipe.interpolate(image, image, t=3, num_inference_steps=0), "num_inference_steps", "got 0")


# ------------------------------------------------------------------------------------------------------ images
@pytest.mark.parametrize("images, fragments", [
    (torch.zeros(2, 28, 28, 1, dtype=torch.uint8),
     ["expected [B, C, H, W] with C=1", "got (2, 28, 28, 1)", "permute it", "images.permute(0, 3, 1, 2)"]),
    (np.zeros((2, 28, 28, 1), np.uint8), ["got (2, 28, 28, 1)", "numpy: images.transpose(0, 3, 1, 2)"]),
    (torch.zeros(2, 28, 28, 1), ["got (2, 28, 28, 1)", "permute it"]),
    (torch.zeros(1, 3, 28, 28, dtype=torch.uint8), ["with C=1", "got (1, 3, 28, 28)", "image.convert('L')"]),
    (torch.zeros(2, 28, 28), ["got (2, 28, 28)", "add the channel axis: images[:, None]"]),
    (torch.zeros(2, 1, 32, 32), ["images must be 28x28 for this model, got (32, 32)", "resize them to 28x28"]),
    (torch.full((1, 1, 28, 28), float("nan")), ["images contain 784 NaN or Inf values", "replace or drop"]),
    (torch.zeros(1, 1, 28, 28).index_fill_(2, torch.tensor([0]), float("inf")), ["28 NaN or Inf values"]),
    (torch.full((1, 1, 28, 28), 3.0), ["float images must lie in [-1, 1]", "scale pixels k in 0..255"]),
    (torch.zeros(1, 1, 28, 28, dtype=torch.int64), ["got dtype torch.int64", "pass uint8 pixels 0..255"]),
])
def test_likelihood_refuses_misshaped_or_non_finite_images(pipe, images, fragments):
    refused(lambda: DDPMLikelihoodPipeline(**pipe.components)(images), *fragments)


def test_likelihood_takes_numpy_uint8_in_nchw_and_pil(pipe):
    import PIL.Image

    likelihood = DDPMLikelihoodPipeline(**pipe.components)
    likelihood.set_progress_bar_config(disable=True)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 1, 28, 28), dtype=np.uint8)
    from_numpy = likelihood(pixels, generator=torch.Generator().manual_seed(0)).bpd
    pil = [PIL.Image.fromarray(p[0]) for p in pixels]
    from_pil = likelihood(pil, generator=torch.Generator().manual_seed(0)).bpd
    torch.testing.assert_close(from_numpy, from_pil, rtol=0, atol=0)
    assert torch.isfinite(from_numpy).all()
    refused(lambda: likelihood(model_batch_size=0, images=pixels), "model_batch_size must be an integer >= 1, got 0")


# ------------------------------------------------------------------------------------------------ UNet configs
def test_preset_with_a_size_the_network_cannot_halve_is_refused_before_building(monkeypatch):
    built = []
    monkeypatch.setattr(DDPMUNet2DModel, "__init__", lambda self, **kw: built.append(kw))
    refused(lambda: DDPMUNet2DModel.from_preset("small28", sample_size=30),
            "sample_size 30 cannot pass through this UNet: its 3 down blocks halve the image 2 times, so the size "
            "must be divisible by 4", "use a multiple of 4 (e.g. 28 or 32)")
    refused(lambda: DDPMUNet2DModel.from_preset("cifar10", sample_size=36), "divisible by 8", "e.g. 32 or 40")
    refused(lambda: DDPMUNet2DModel.from_preset("small28", sample_size=(28, 30)), "sample_size 28x30")
    refused(lambda: DDPMUNet2DModel.from_preset("small28", sample_size=0), "sample_size must be a positive integer")
    refused(lambda: DDPMUNet2DModel.from_preset("small28", block_out_channels=(16, 32)),
            "block_out_channels (2), down_block_types (3) and up_block_types (3)", "one entry per resolution")
    refused(lambda: DDPMUNet2DModel.from_preset("small28", block_out_channels=(16, 24, 32)),
            "[24] not divisible by norm_num_groups=16", "multiples of norm_num_groups")
    assert built == []
    monkeypatch.undo()
    unet = DDPMUNet2DModel.from_preset("small28", sample_size=32, block_out_channels=(16, 32, 32), norm_num_groups=8)
    assert unet(torch.zeros(1, 1, 32, 32), 3).sample.shape == (1, 1, 32, 32)


def test_check_unet_config_accepts_every_preset():
    from hf_ddpm.unet import UNET_PRESETS

    for name, config in UNET_PRESETS.items():
        check_unet_config(config)


def test_a_config_of_another_kind_of_class_is_refused():
    unet_config = dict(tiny_unet().config)
    refused(lambda: DDPMScheduler.from_config(unet_config), "config is a UNet2DModel config, not a scheduler config",
            "pass the scheduler's config to DDPMScheduler.from_config")
    refused(lambda: DDPMUNet2DModel.from_config(sched().config), "is a scheduler config, not a model config",
            "pass the model's config to DDPMUNet2DModel.from_config")
    for other in (diffusers.DDIMScheduler(num_train_timesteps=T), diffusers.DPMSolverMultistepScheduler(),
                  diffusers.EulerDiscreteScheduler()):
        assert isinstance(DDPMScheduler.from_config(other.config), DDPMScheduler)  # scheduler to scheduler: fine
    assert isinstance(DDPMUNet2DModel.from_config(unet_config), DDPMUNet2DModel)


# ------------------------------------------------------------------------------------- folders from_pretrained
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("api-checks")
    tiny_pipeline().save_pretrained(root / "good")
    return root


def copy_with(saved: Path, name: str, change) -> Path:
    folder = saved / name
    if not folder.exists():
        shutil.copytree(saved / "good", folder)
        change(folder)
    return folder


MALFORMED_INDEXES = {
    "a-list": ("[1, 2]", ["must hold a JSON object", "got a list"]),
    "a-string": ('"DDPMPipeline"', ["got a str"]),
    "null": ("null", ["got a NoneType"]),
    "no-class-name": ('{"unet": ["diffusers", "UNet2DModel"]}', ["has no _class_name string (got None)"]),
    "class-name-a-number": ('{"_class_name": 5}', ["got 5"]),
    "component-a-number": ('{"_class_name": "DDPMPipeline", "unet": ["diffusers", 3], '
                           '"scheduler": ["diffusers", "DDPMScheduler"]}',
                           ["component 'unet' must be [library, class] (two strings), got ['diffusers', 3]"]),
    "component-of-three": ('{"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"], '
                           '"scheduler": ["diffusers", "DDPMScheduler", "x"]}', ["component 'scheduler'"]),
}


@pytest.mark.parametrize("name", MALFORMED_INDEXES)
def test_malformed_model_index_is_named_with_the_fix(saved, name):
    text, fragments = MALFORMED_INDEXES[name]
    folder = copy_with(saved, name, lambda f: (f / "model_index.json").write_text(text))
    refused(lambda: DDPMPipeline.from_pretrained(folder), "model_index.json", *fragments,
            "save the pipeline again with pipeline.save_pretrained(folder)")


def test_a_component_config_of_another_kind_is_named(saved):
    folder = copy_with(saved, "swapped", lambda f: shutil.copy(f / "scheduler" / "scheduler_config.json",
                                                               f / "unet" / "config.json"))
    refused(lambda: DDPMPipeline.from_pretrained(folder), "unet/config.json is a DDPMScheduler config, but "
            "model_index.json names a UNet2DModel for 'unet'", "save the pipeline again")
    folder = copy_with(saved, "moved", lambda f: (f / "scheduler" / "scheduler_config.json").rename(
        f / "scheduler" / "config.json"))
    refused(lambda: DDPMPipeline.from_pretrained(folder), "scheduler/config.json is there but "
            "scheduler/scheduler_config.json is not")


def test_unet_from_a_pipeline_folder_hints_at_subfolder(saved):
    good = saved / "good"
    refused(lambda: DDPMUNet2DModel.from_pretrained(good), "is a saved pipeline, not a model folder",
            'pass subfolder="unet": DDPMUNet2DModel.from_pretrained(folder, subfolder="unet")')
    refused(lambda: DDPMUNet2DModel.from_pretrained(good, subfolder="scheduler"), "holds a scheduler",
            'subfolder="unet"')
    unet = DDPMUNet2DModel.from_pretrained(good, subfolder="unet")
    assert isinstance(unet, DDPMUNet2DModel) and unet.config.sample_size == 28
    folder = copy_with(saved, "swapped-unet", lambda f: shutil.copy(f / "scheduler" / "scheduler_config.json",
                                                                    f / "unet" / "config.json"))
    refused(lambda: DDPMUNet2DModel.from_pretrained(folder / "unet"), "config.json is a DDPMScheduler config")


@pytest.mark.parametrize("as_path", [False, True])
def test_missing_folders_are_named_with_the_fix(saved, as_path):
    missing = saved / "does-not-exist"
    source = missing if as_path else str(missing)
    for load in (DDPMPipeline.from_pretrained, DDPMUNet2DModel.from_pretrained):
        refused(lambda: load(source), str(missing), "neither a valid local path nor a valid repo id",
                "check the parameter", "pass the folder that save_pretrained(folder) wrote")
    refused(lambda: DDPMPipeline.from_pretrained(saved / "good" / "model_index.json"), "is a file, not a folder")


def test_good_folders_still_load_and_errors_are_usage_errors(saved):
    assert isinstance(DDPMPipeline.from_pretrained(saved / "good").scheduler, DDPMScheduler)
    with pytest.raises(UsageError):
        DDPMPipeline.from_pretrained(saved / "does-not-exist")
    index = json.loads((saved / "good" / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DModel"]


def test_every_message_here_is_one_line_with_a_fix():
    """The validators' messages follow `what: how to fix` (hf_ddpm.options.format_error)."""
    message = refused(lambda: sched().q_sample(x, 3.5, x))
    assert re.fullmatch(r"[^:]+: .+", message)
