"""training/train.py end to end, in subprocesses (Accelerate's state is per process), on a tiny UNet."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_ddpm import DDPMUNet2DModel

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "training" / "train.py"


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("unet") / "config.json"
    config = DDPMUNet2DModel.preset_config("small28", block_out_channels=(16, 32, 32), norm_num_groups=8)
    path.write_text(json.dumps({**config, "_class_name": "UNet2DModel"}))
    return path


def train_args(tiny_config, output_dir, **overrides):
    options = {
        "model_config_name_or_path": tiny_config, "output_dir": output_dir, "ddpm_num_steps": 50,
        "train_batch_size": 4, "max_train_steps": 12, "max_train_samples": 40, "learning_rate": 1e-3,
        "lr_warmup_steps": 4, "logging_steps": 2, "checkpointing_steps": 4, "save_images_steps": 1000,
        "eval_batch_size": 2, "ddpm_num_inference_steps": 3, "dropout": 0.1, "seed": 3,
    }
    options.update(overrides)
    args = []
    for key, value in options.items():
        if value is True:
            args.append(f"--{key}")
        elif value is not False:
            args += [f"--{key}", str(value)]
    return args


def run_train(args, launcher=(sys.executable,), env=None, check=True):
    result = subprocess.run([*launcher, str(TRAIN), *args], capture_output=True, text=True, timeout=600,
                            env={**os.environ, **(env or {})}, cwd=ROOT)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def final_weights(output_dir):
    return load_file(Path(output_dir) / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")


def logged(output_dir, tag="train/loss"):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = {}
    for events in sorted(Path(output_dir, "logs").rglob("events.out.tfevents*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            values.update({e.step: e.value for e in accumulator.Scalars(tag)})
    return values


def assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for key in a:
        if atol and key.endswith("to_k.bias"):
            # Softmax ignores a bias shared by all keys: its true gradient is 0, so what Adam sees (and
            # normalizes to a full-size step) is rounding noise that differs with the summation order.
            continue
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0 if atol == 0 else 1e-4, msg=key)


@pytest.fixture(scope="module")
def reference_run(tiny_config, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("reference")
    run_train(train_args(tiny_config, output_dir))
    return output_dir


def test_run_writes_stock_loadable_ema_pipeline_checkpoints_and_logs(reference_run):
    pipeline = reference_run / "pipeline"
    index = json.loads((pipeline / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DModel"]
    assert (pipeline / "samples.png").stat().st_size > 0
    card = (pipeline / "README.md").read_text()
    assert "library_name: diffusers" in card and "samples.png" in card
    facts = json.loads((pipeline / "training_config.json").read_text())
    assert facts["train_batch_size"] == 4 and facts["max_train_steps"] == 12 and facts["dataset"] == "fashion_mnist"
    assert str(reference_run) not in json.dumps(facts)  # no local paths in what gets published
    assert sorted(p.name for p in (reference_run / "checkpoints").iterdir()) == ["checkpoint-12", "checkpoint-4", "checkpoint-8"]
    ema = load_file(reference_run / "checkpoints" / "checkpoint-12" / "unet_ema" / "diffusion_pytorch_model.safetensors")
    raw = load_file(reference_run / "checkpoints" / "checkpoint-12" / "model.safetensors")
    assert_same_weights(final_weights(reference_run), ema)  # the pipeline holds the EMA weights...
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)  # ...which are not the raw ones
    losses = logged(reference_run)
    assert sorted(losses) == [2, 4, 6, 8, 10, 12] and all(v > 0 for v in losses.values())
    # the LR warms up over 4 optimizer steps, then stays: counted in optimizer steps
    assert logged(reference_run, "train/lr") == pytest.approx({2: 5e-4, 4: 1e-3, 6: 1e-3, 8: 1e-3, 10: 1e-3, 12: 1e-3})
    assert set(logged(reference_run, "train/grad_norm")) == set(losses)


def test_same_run_twice_is_bitwise_reproducible(reference_run, tiny_config, tmp_path):
    run_train(train_args(tiny_config, tmp_path))
    assert_same_weights(final_weights(tmp_path), final_weights(reference_run))
    assert logged(tmp_path) == logged(reference_run)


def wait_for(path, process, timeout=300):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.mark.parametrize("how", ["sigkill", "sigterm"])
def test_interrupted_run_resumes_to_the_uninterrupted_result(reference_run, tiny_config, tmp_path, how):
    args = train_args(tiny_config, tmp_path, save_images_steps=4)  # sample grids slow it down: a window to kill in
    process = subprocess.Popen([sys.executable, str(TRAIN), *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    wait_for(tmp_path / "checkpoints" / "checkpoint-4", process)
    process.send_signal(signal.SIGKILL if how == "sigkill" else signal.SIGTERM)
    returncode = process.wait(timeout=300)
    assert not (tmp_path / "pipeline").exists()  # it really was interrupted
    if how == "sigterm":
        assert returncode == 128 + signal.SIGTERM
        saved = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "checkpoints").glob("checkpoint-*"))
        assert saved[-1] > 4 or saved == [4]  # it wrote a checkpoint at the step it stopped
    else:
        assert returncode == -signal.SIGKILL
    # without --resume_from_checkpoint the earlier run is protected
    refused = run_train(args, check=False)
    assert refused.returncode != 0 and "--resume_from_checkpoint latest" in refused.stderr
    run_train(args + ["--resume_from_checkpoint", "latest"])
    assert_same_weights(final_weights(tmp_path), final_weights(reference_run))
    reference_losses, resumed_losses = logged(reference_run), logged(tmp_path)
    assert all(resumed_losses[s] == pytest.approx(v, rel=1e-6) for s, v in reference_losses.items() if s in resumed_losses)
    assert set(resumed_losses) == set(reference_losses)


def test_gradient_accumulation_matches_the_same_global_batch(tiny_config, tmp_path):
    # without dropout: its masks depend on the micro-batch shapes (everything else is drawn per global batch)
    run_train(train_args(tiny_config, tmp_path / "one", dropout=0.0))
    run_train(train_args(tiny_config, tmp_path / "accumulated", dropout=0.0, train_batch_size=2, gradient_accumulation_steps=2))
    assert_same_weights(final_weights(tmp_path / "accumulated"), final_weights(tmp_path / "one"), atol=1e-5)
    assert logged(tmp_path / "accumulated") == pytest.approx(logged(tmp_path / "one"), rel=1e-5)
    assert logged(tmp_path / "accumulated", "train/lr") == logged(tmp_path / "one", "train/lr")  # optimizer steps


def test_two_cpu_processes_match_one_with_the_same_global_batch(tiny_config, tmp_path):
    common = {"max_train_steps": 6, "dropout": 0.0, "checkpointing_steps": 6}
    run_train(train_args(tiny_config, tmp_path / "one", train_batch_size=4, **common))
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517")
    two = run_train(train_args(tiny_config, tmp_path / "two", train_batch_size=2, **common), launcher=torchrun,
                    env={"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"})
    assert "2 processes" in two.stderr
    assert_same_weights(final_weights(tmp_path / "two"), final_weights(tmp_path / "one"), atol=1e-5)
    assert logged(tmp_path / "two") == pytest.approx(logged(tmp_path / "one"), rel=1e-5)


def test_bf16_mixed_precision_runs_the_model_in_bf16(tiny_config, tmp_path):
    """Run the real script with a global forward hook that records the dtypes the convolutions produce."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import runpy, sys, torch\n"
        "seen = set()\n"
        "def hook(module, inputs, output):\n"
        "    if isinstance(module, torch.nn.Conv2d) and module.training: seen.add(str(output.dtype))\n"
        "torch.nn.modules.module.register_module_forward_hook(hook)\n"
        f"sys.argv = [{str(TRAIN)!r}] + sys.argv[1:]\n"
        "try:\n"
        f"    runpy.run_path({str(TRAIN)!r}, run_name='__main__')\n"
        "finally:\n"
        f"    open({str(tmp_path / 'dtypes.txt')!r}, 'w').write(','.join(sorted(seen)))\n"
    )
    result = subprocess.run([sys.executable, str(probe), *train_args(tiny_config, tmp_path / "out", mixed_precision="bf16", max_train_steps=4)],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "dtypes.txt").read_text() == "torch.bfloat16"
    weights = final_weights(tmp_path / "out")
    assert all(w.dtype == torch.float32 for w in weights.values())  # master and EMA weights stay fp32


def test_checkpoint_limit_and_partial_checkpoints(tiny_config, tmp_path):
    (tmp_path / "checkpoints" / ".partial-checkpoint-99").mkdir(parents=True)  # debris of a killed write
    run_train(train_args(tiny_config, tmp_path, checkpoints_total_limit=2, resume_from_checkpoint="latest"))
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["checkpoint-12", "checkpoint-8"]


def test_config_presets_and_errors(tiny_config, tmp_path):
    sys.path.insert(0, str(TRAIN.parent))
    try:
        import train
    finally:
        sys.path.pop(0)
    paper = train.parse_config(["--config", "cifar10_paper"])
    assert (paper.learning_rate, paper.lr_warmup_steps, paper.train_batch_size, paper.max_grad_norm) == (2e-4, 5000, 128, 1.0)
    assert (paper.ema_max_decay, paper.model_preset, paper.random_flip, paper.max_train_steps) == (0.9999, "cifar10", True, 800000)
    assert train.parse_config(["--config", "cifar10_paper", "--learning_rate", "1e-4"]).learning_rate == 1e-4
    assert train.parse_config(["--config", "fashion_mnist_cpu", "--no-use_ema"]).use_ema is False
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rte: 1e-4\n")
    with pytest.raises(SystemExit, match=r"unknown options \['learning_rte'\]"):
        train.parse_config(["--config", str(bad)])
    with pytest.raises(SystemExit, match="neither a file nor a preset"):
        train.parse_config(["--config", "cifar100_paper"])
    result = run_train(train_args(tiny_config, tmp_path, resume_from_checkpoint=tmp_path / "nope"), check=False)
    assert result.returncode != 0 and "is not a complete checkpoint" in result.stderr
