"""Faults during training: kills at random moments and mid-checkpoint, a full disk, an unwritable output folder.

Quick tier: a few kills. The soak (`python -m pytest -m slow tests/test_reliability.py`) repeats the random
kills many times in a row; HF_DDPM_SOAK_KILLS sets how many.
"""

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from support.train_server import (ROOT, TRAIN, assert_same_weights, final_weights, logged, run_train, run_with_probe,
                                  train_args)


@pytest.fixture(scope="module")
def reference(tiny_config, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("reference")
    run_train(train_args(tiny_config, output_dir, checkpointing_steps=2))
    return output_dir


def kill_randomly_until_done(args, output_dir, kills: int, seed: int) -> int:
    """SIGKILL the run at random moments `kills` times, resuming from the latest checkpoint each time."""
    rng = random.Random(seed)
    done_kills = 0
    while not (output_dir / "pipeline").exists():
        resume = ["--resume_from_checkpoint", "latest"]
        process = subprocess.Popen([sys.executable, str(TRAIN), *args, *resume], cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done_kills < kills:
            # wait until training runs (the imports take seconds), then a random moment within the next steps
            deadline = time.monotonic() + 120
            while process.poll() is None and not list(output_dir.glob("logs/*/events*")) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 1.5))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                done_kills += 1
        returncode = process.wait(timeout=600)
        assert returncode in (0, -signal.SIGKILL), process.stderr.read()[-3000:]
        assert not list(output_dir.glob("checkpoints/checkpoint-*/.partial*"))
    return done_kills


def test_random_sigkills_resume_to_the_uninterrupted_result(reference, tiny_config, tmp_path):
    args = train_args(tiny_config, tmp_path, checkpointing_steps=2)
    kills = kill_randomly_until_done(args, tmp_path, kills=3, seed=0)
    assert kills >= 1
    assert_same_weights(final_weights(tmp_path), final_weights(reference))
    assert logged(tmp_path) == logged(reference)


@pytest.mark.slow
def test_soak_many_random_sigkills(reference, tiny_config, tmp_path):
    kills = int(os.environ.get("HF_DDPM_SOAK_KILLS", "25"))
    args = train_args(tiny_config, tmp_path, checkpointing_steps=2, max_train_steps=12)
    done = kill_randomly_until_done(args, tmp_path, kills=kills, seed=1)
    print(f"soak: {done} SIGKILLs, final weights identical to the uninterrupted run")
    assert_same_weights(final_weights(tmp_path), final_weights(reference))


def test_kill_in_the_middle_of_a_checkpoint_write_is_never_resumed_from(reference, tiny_config, tmp_path):
    """SIGKILL after the model file of checkpoint-6 is written but before the checkpoint is complete."""
    args = train_args(tiny_config, tmp_path, checkpointing_steps=2)
    killed = run_with_probe(tmp_path, args, (
        "import accelerate.checkpointing as ckpt\n"
        "real = ckpt.save_accelerator_state\n"
        "def save_then_die(output_dir, *a, **k):\n"
        "    result = real(output_dir, *a, **k)\n"
        "    if output_dir.endswith('checkpoint-6'):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return result\n"
        "ckpt.save_accelerator_state = save_then_die\n"
        "import accelerate.accelerator\n"
        "accelerate.accelerator.save_accelerator_state = save_then_die\n"
    ))
    assert killed.returncode == -signal.SIGKILL
    checkpoints = tmp_path / "checkpoints"
    assert (checkpoints / ".partial-checkpoint-6").exists() and not (checkpoints / "checkpoint-6").exists()
    run_train(args + ["--resume_from_checkpoint", "latest"])
    assert_same_weights(final_weights(tmp_path), final_weights(reference))
    assert not (checkpoints / ".partial-checkpoint-6").exists()


def test_full_disk_stops_cleanly_and_keeps_the_previous_checkpoint(reference, tiny_config, tmp_path):
    args = train_args(tiny_config, tmp_path, checkpointing_steps=2)
    full = run_with_probe(tmp_path, args, (
        "import errno, safetensors.torch as st\n"
        "real, calls = st.save_file, []\n"
        "def fill_disk(tensors, filename, *a, **k):\n"
        "    calls.append(filename)\n"
        "    if 'checkpoint-6' in str(filename):\n"
        "        open(filename, 'wb').write(b'half')\n"
        "        raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "    return real(tensors, filename, *a, **k)\n"
        "st.save_file = fill_disk\n"
    ))
    assert full.returncode == 1  # a runtime failure
    last_line = full.stderr.strip().splitlines()[-1]
    assert last_line.startswith("train.py: error: could not write checkpoint-6 (No space left on device)")
    assert "checkpoint-4" in last_line and "--resume_from_checkpoint latest" in last_line
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["checkpoint-2", "checkpoint-4"]  # the partial write was removed, nothing else touched
    run_train(args + ["--resume_from_checkpoint", "latest"])  # space is back
    assert_same_weights(final_weights(tmp_path), final_weights(reference))


def test_unwritable_output_dir_fails_at_start_with_one_line(tiny_config, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_train(train_args(tiny_config, blocker / "out"), check=False)
    assert result.returncode == 2  # a usage error
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"train.py: error: cannot write to {blocker / 'out'} (")
    assert last_line.endswith("(--output_dir): choose a writable folder")
    assert blocker.read_text() == "not a folder"


def test_nan_loss_is_reported_with_its_step_and_never_saved(tiny_config, tmp_path):
    args = train_args(tiny_config, tmp_path, checkpointing_steps=2)
    result = run_with_probe(tmp_path, args, (
        "import torch, hf_ddpm.gaussian_diffusion as gd\n"
        "real = gd.DiffusionObjective.losses\n"
        "step = [0]\n"
        "def poisoned(self, *a, **k):\n"
        "    step[0] += 1\n"
        "    out = real(self, *a, **k)\n"
        "    if step[0] == 5:\n"
        "        out['loss'] = out['loss'] * float('nan')\n"
        "    return out\n"
        "gd.DiffusionObjective.losses = poisoned\n"
    ))
    assert result.returncode == 1  # a runtime failure
    assert result.stderr.strip().splitlines()[-1].startswith("train.py: error: the loss became nan between steps 5 and 6")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert not (tmp_path / "pipeline").exists()
