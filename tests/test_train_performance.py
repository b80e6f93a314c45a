"""train.py's speed options (--compile, --channels_last, --gradient_checkpointing, --adam_implementation,
--allow_tf32, the DataLoader) give the plain run's results, and a training step reads nothing on the host."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from support.train_server import (TRAIN, assert_same_weights, final_weights, logged, run_train, run_with_probe,
                                  train_args)

from hf_ddpm.options import UsageError
from training.config import build_parser, parse_config

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bf16 autocast, sync checks)")

# What may read a tensor on the host, i.e. wait for the device that computes it.
HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")
# Installed before train.py runs: counts HOST_READS made inside train_step (beside the DataLoader's host-side
# fetching, which reads only its own CPU index tensors), and on CUDA turns PyTorch's sync check to "error" there.
SYNC_PROBE = """
import atexit, json, torch
from torch.utils.data.dataloader import _BaseDataLoaderIter
counts = {"train_step calls": 0, "reads elsewhere": 0}
depth = {"step": 0, "data": 0}
def counting(name, method):
    def read(self, *args, **kwargs):
        key = name if depth["step"] and not depth["data"] else "reads elsewhere"
        counts[key] = counts.get(key, 0) + 1
        return method(self, *args, **kwargs)
    return read
for name in %(reads)r:
    setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
FETCH = _BaseDataLoaderIter.__next__.__code__
def profile(frame, event, arg):
    if event not in ("call", "return"):
        return
    code = frame.f_code
    in_step = code.co_name == "train_step" and code.co_filename == %(train)r
    key = "step" if in_step else "data" if code is FETCH else None
    if key:
        depth[key] += 1 if event == "call" else -1
        if key == "step" and event == "call":
            counts["train_step calls"] += 1
        if key == "step" and torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("error" if depth["step"] else "default")
sys.setprofile(profile)
atexit.register(lambda: open(%(out)r, "w").write(json.dumps(counts)))
"""


def sync_counts(tmp_path, args, train=TRAIN) -> dict:
    out = tmp_path / "reads.json"
    result = run_with_probe(tmp_path, args, SYNC_PROBE % {"reads": HOST_READS, "train": str(train), "out": str(out)})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


def test_a_training_step_reads_no_tensor_on_the_host(tiny_config, tmp_path):
    """Between log steps the host only queues work: no tensor is read inside train_step (on CUDA, PyTorch's sync
    check raises inside it too). The run covers flips, accumulation, a learned variance with the hybrid loss and
    min-SNR weighting, dropout and the EMA."""
    args = train_args(tiny_config, tmp_path / "run", max_train_steps=6, logging_steps=3, checkpointing_steps=6,
                      gradient_accumulation_steps=2, train_batch_size=2, random_flip=True, learned_variance=True,
                      loss_type="hybrid", loss_weighting="min_snr", save_images_steps=1000)
    counts = sync_counts(tmp_path, args)
    assert counts.pop("train_step calls") == 6
    assert counts.pop("reads elsewhere") > 0  # the counting works: logging and checkpoints read the loss
    assert counts == {}, f"host reads inside train_step: {counts}"


# ------------------------------------------------------------------------- the same results, faster
def run_weights(output_dir, step: int) -> dict:
    from safetensors.torch import load_file

    return load_file(output_dir / "checkpoints" / f"checkpoint-{step}" / "model.safetensors")


# On a CPU the compiled runs use the aot_eager backend: PyTorch 2.13's CPU inductor computes wrong gradients for
# this UNet (train.py's start-up check stops such a run; see the next test), and its C++ compile takes minutes.
AOT_EAGER = "import functools, torch\ntorch.compile = functools.partial(torch.compile, backend='aot_eager')\n"


def run_compiled(tmp_path, args) -> None:
    result = run_train(args) if torch.cuda.is_available() else run_with_probe(tmp_path, args, AOT_EAGER)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Warning" not in result.stderr  # e.g. Dynamo's about diffusers' lru_cache'd version checks


def test_compile_channels_last_and_checkpointing_match_the_plain_run_and_resume_either_way(tiny_config, tmp_path):
    """--compile --channels_last --gradient_checkpointing train the plain run's weights within rounding, their
    checkpoints hold the plain module's names, and a run resumes with or without them on either side.

    Tolerance: 1e-5 absolute (1e-4 relative) on the raw and EMA weights after 8 Adam steps of lr 1e-3, as for
    gradient accumulation in test_train.py (the channels_last kernels round differently); losses within 1e-5
    relative. No dropout: in channels_last layout dropout fills its mask in memory order, another draw."""
    common = {"max_train_steps": 8, "checkpointing_steps": 4, "logging_steps": 2, "dropout": 0.0}
    fast = {"compile": True, "channels_last": True, "gradient_checkpointing": True}
    plain = tmp_path / "plain"
    run_train(train_args(tiny_config, plain, **common))
    # fast for steps 1-4, then resumed plain
    fast_first = tmp_path / "fast-first"
    run_compiled(tmp_path, train_args(tiny_config, fast_first, **{**common, **fast, "max_train_steps": 4}))
    assert run_weights(fast_first, 4).keys() == run_weights(plain, 4).keys()  # no `_orig_mod.` prefix
    run_train(train_args(tiny_config, fast_first, **common, resume_from_checkpoint="latest"))
    # plain for steps 1-4 (the plain run's checkpoint), then resumed fast
    fast_last = tmp_path / "fast-last"
    run_compiled(tmp_path, train_args(tiny_config, fast_last, **common, **fast,
                                      resume_from_checkpoint=plain / "checkpoints" / "checkpoint-4"))
    plain_losses = logged(plain)
    for run, logged_steps in ((fast_first, [2, 4, 6, 8]), (fast_last, [6, 8])):
        assert_same_weights(run_weights(run, 8), run_weights(plain, 8), atol=1e-5)
        assert_same_weights(final_weights(run), final_weights(plain), atol=1e-5)  # the EMA pipeline
        losses = logged(run)
        assert sorted(losses) == logged_steps
        assert losses == pytest.approx({step: plain_losses[step] for step in logged_steps}, rel=1e-5)


# A compiler bug stand-in: the same outputs, half the gradients.
HALF_GRADIENTS = """
import torch
class HalfGradients(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
    def forward(self, *args, **kwargs):
        output = self.model(*args, **kwargs)
        output.sample = (output.sample + output.sample.detach()) / 2
        return output
torch.compile = lambda model, **options: HalfGradients(model)
"""


def test_compile_stops_before_training_when_the_compiled_gradients_are_wrong(tiny_config, tmp_path):
    result = run_with_probe(tmp_path, train_args(tiny_config, tmp_path / "run", compile=True), HALF_GRADIENTS)
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("train.py: error: torch.compile's gradients are wrong on a test batch (50.0% off overall")
    assert line.endswith("(--compile): train without --compile, or with another PyTorch version")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_gradient_checkpointing_keeps_the_gradients_and_saves_less_for_backward(tiny_config):
    """enable_gradient_checkpointing (what --gradient_checkpointing calls) recomputes the blocks: the same
    gradients (dropout included: its random state is replayed), and less kept for the backward pass, measured as
    the bytes autograd saves outside the checkpointed blocks."""
    from hf_ddpm import DDPMUNet2DModel

    config = json.loads(tiny_config.read_text())
    x, t = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 5, 9, 19])

    def backward(checkpointing: bool) -> tuple[dict, int]:
        torch.manual_seed(0)
        model = DDPMUNet2DModel.from_config({**config, "dropout": 0.1}).train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda tensor: saved.append(tensor.nbytes) or tensor,
                                                      lambda tensor: tensor):
            torch.manual_seed(1)
            loss = model(x, t).sample.square().mean()
        loss.backward()
        return {name: p.grad for name, p in model.named_parameters()}, sum(saved)

    plain_grads, plain_bytes = backward(checkpointing=False)
    checkpointed_grads, checkpointed_bytes = backward(checkpointing=True)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    assert checkpointed_bytes < plain_bytes / 2


@pytest.mark.parametrize("choice", ["auto", "fused", "foreach"])
def test_adam_implementations_match_the_for_loop(choice):
    """Each --adam_implementation gives the for-loop AdamW's weights after 5 steps (1e-6 absolute: the kernels
    only round differently); auto is fused on this CPU."""
    from training.performance import adam_implementation

    def trained(kernels: dict) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in ((8, 3, 3, 3), (8,), (5,))]
        optimizer = torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.999), weight_decay=0.01, eps=1e-8, **kernels)
        for _ in range(5):
            for p in params:
                p.grad = torch.randn(p.shape, generator=generator)
            optimizer.step()
        return [p.detach() for p in params]

    kernels = adam_implementation(choice, torch.device("cpu"))
    assert kernels == {"fused": choice in ("auto", "fused"), "foreach": choice == "foreach"}
    for got, want in zip(trained(kernels), trained(adam_implementation("for-loop", torch.device("cpu")))):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_a_resumed_optimizer_state_takes_its_weights_memory_format():
    """A checkpoint of the other layout (--channels_last on one side only) restores Adam's moments in its layout;
    fused AdamW would pair them with the weights by memory order. After the hook the step is the for-loop's."""
    from training.performance import match_parameter_layouts

    def resumed_step(kernels: dict, fix: bool) -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        weight = torch.nn.Parameter(torch.randn(8, 3, 3, 3, generator=generator))
        optimizer = torch.optim.AdamW([weight], lr=1e-3, **kernels)
        weight.grad = torch.randn(weight.shape, generator=generator)
        optimizer.step()
        saved = optimizer.state_dict()
        for key in ("exp_avg", "exp_avg_sq"):  # as written by a channels_last run
            saved["state"][0][key] = saved["state"][0][key].contiguous(memory_format=torch.channels_last)
        resumed = torch.optim.AdamW([weight], lr=1e-3, **kernels)
        if fix:
            resumed.register_load_state_dict_post_hook(match_parameter_layouts)
        resumed.load_state_dict(saved)
        weight.grad = torch.randn(weight.shape, generator=generator)
        resumed.step()
        return weight.detach()

    reference = resumed_step({}, fix=False)
    assert not torch.allclose(resumed_step({"fused": True}, fix=False), reference, atol=1e-4)  # what the hook fixes
    torch.testing.assert_close(resumed_step({"fused": True}, fix=True), reference, rtol=0, atol=1e-6)


def test_fused_adam_is_refused_where_pytorch_has_none():
    from training.performance import adam_implementation

    with pytest.raises(UsageError, match=r"PyTorch has no fused AdamW for meta .*\(--adam_implementation\): use auto"):
        adam_implementation("fused", torch.device("meta"))
    assert adam_implementation("auto", torch.device("meta")) == {"fused": False, "foreach": True}


def test_one_loader_serves_every_epoch_with_that_epochs_crops():
    """BatchLayout.loader's one DataLoader (and its long-lived workers) yields, across epoch boundaries, the
    micro-batches of each epoch's permutation with that epoch's random crops."""
    from hf_ddpm.data import ArrayImages, ImageDataset
    from training.train import BatchLayout, seeded_generator

    pixels = np.random.default_rng(0).integers(0, 256, (10, 12, 16), dtype=np.uint8)  # 8x10 after resizing
    dataset = ImageDataset(ArrayImages(pixels, "noise"), resolution=8, num_channels=1, seed=0)
    layout = BatchLayout(seed=0, batch_size=2, accumulation=1, world=1, rank=0)  # 5 steps per epoch

    def expected(step: int) -> torch.Tensor:
        epoch, step_in_epoch = divmod(step, 5)
        order = torch.randperm(10, generator=seeded_generator(0, "epoch", epoch)).tolist()
        dataset.set_epoch(epoch)
        return torch.stack([dataset[i]["pixel_values"] for i in order[2 * step_in_epoch : 2 * step_in_epoch + 2]])

    batches = list(layout.loader(dataset, 3, 12, steps_per_epoch=5, num_workers=2, pin_memory=False))
    assert len(batches) == 9
    for step, batch in zip(range(3, 12), batches):
        torch.testing.assert_close(batch["pixel_values"], expected(step), rtol=0, atol=0)
    # the crops do depend on the epoch, so workers that kept epoch 0 would fail the comparison above
    crops = [(dataset.set_epoch(epoch), dataset[0]["pixel_values"])[1] for epoch in range(3)]
    assert not (torch.equal(crops[0], crops[1]) and torch.equal(crops[1], crops[2]))


# ------------------------------------------------------------------------------------ options and presets
def test_compile_mode_needs_compile_and_the_options_have_their_group(tmp_path):
    with pytest.raises(UsageError, match=r"--compile_mode max-autotune applies to --compile only \(--compile_mode\): "
                                         r"add --compile"):
        parse_config(["--compile_mode", "max-autotune", "--output_dir", str(tmp_path)])
    config = parse_config(["--compile", "--compile_mode", "reduce-overhead", "--output_dir", str(tmp_path)])
    assert (config.compile, config.compile_mode, config.adam_implementation) == (True, "reduce-overhead", "auto")
    text = build_parser().format_help()
    section = " ".join(text[text.index("\nperformance:\n"):text.index("\noutputs:\n")].split())
    for name in ("channels_last", "compile", "compile_mode", "allow_tf32", "gradient_checkpointing",
                 "adam_implementation"):
        assert f"--{name}" in section
    assert "no effect on CPUs" in section


PAPER_MATH = ("ddpm_num_steps", "ddpm_beta_schedule", "prediction_type", "loss_type", "learning_rate",
              "lr_warmup_steps", "train_batch_size", "max_grad_norm", "ema_max_decay", "random_flip")


@pytest.mark.parametrize("preset, math, model, dropout", [
    ("cifar10_paper", (1000, "linear", "epsilon", "simple", 2e-4, 5000, 128, 1.0, 0.9999, True), "cifar10", None),
    ("celebahq256_paper", (1000, "linear", "epsilon", "simple", 2e-5, 5000, 64, 1.0, 0.9999, True), "celebahq256",
     None),
])
def test_gpu_presets_keep_the_papers_math_and_turn_on_speed(preset, math, model, dropout):
    """The presets parse and validate; the paper's values stay (dropout: the preset network's, 0.1 for CIFAR-10
    and 0 for CelebA-HQ); the speed options are on."""
    config = parse_config(["--config", preset])
    assert tuple(getattr(config, name) for name in PAPER_MATH) == math
    assert (config.model_preset, config.dropout, config.use_ema, config.ema_warmup) == (model, dropout, True, False)
    assert (config.mixed_precision, config.channels_last, config.allow_tf32) == ("bf16", True, True)
    assert config.dataloader_num_workers > 0 and config.adam_implementation == "auto"
    if preset == "celebahq256_paper":
        assert config.gradient_checkpointing and config.dataset_name and config.resolution in (None, 256)


# ------------------------------------------------------------------------------------------------- CUDA
@cuda_only
def test_bf16_training_on_cuda_keeps_fp32_master_and_ema_weights_and_samples_sanely(tiny_config, tmp_path):
    from hf_ddpm import DDPMPipeline

    out = tmp_path / "bf16"
    run_train(train_args(tiny_config, out, mixed_precision="bf16", channels_last=True, max_train_steps=8))
    losses = logged(out)
    assert losses and all(np.isfinite(v) and v > 0 for v in losses.values())
    raw = run_weights(out, 8)
    ema = final_weights(out)
    assert all(w.dtype == torch.float32 for w in [*raw.values(), *ema.values()])
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)
    pipeline = DDPMPipeline.from_pretrained(out / "pipeline").to("cuda")
    images = pipeline(batch_size=4, generator=torch.Generator("cuda").manual_seed(0), num_inference_steps=10,
                      output_type="np").images
    assert np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1 and images.std() > 1e-3
