"""`hf-ddpm plot ...`: one subcommand per figure of `hf_ddpm.plots`, each with its options (a dataclass that is also
the figure function's keyword options, and the one place their defaults live) and their checks."""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

from diffusers import DiffusionPipeline

from ..metrics.reference import FASHION_MNIST
from ..options import UsageError, check_device, flag, option
from ..schedules import SCHEDULES
from ..scheduling_ddpm import DDPMScheduler
from . import Command
from .evaluate import SEED_RANGE, check_pipeline

# the scheduler's own defaults (T = 1000, linear 1e-4 -> 0.02): what `plot schedule` draws unless told otherwise
SCHEDULER_DEFAULTS = {name: p.default for name, p in inspect.signature(DDPMScheduler.__init__).parameters.items()}
PIPELINE_HELP = "saved pipeline folder (or a Hub id, online); from Python also a pipeline object"
OUTPUT_FREE = "check_output: its folder must exist and it must not be a folder"


def check_output(output) -> None:
    """Refuse an output path whose folder does not exist (it is not created: a typo in it would otherwise scatter
    pictures) or that is a folder."""
    if output is None:
        return
    output = os.fspath(output)
    directory = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"output folder {directory} does not exist: create it, or choose another --output.")
    if os.path.isdir(output):
        raise IsADirectoryError(f"--output {output} is a folder: give a file path such as {output}/picture.png.")


def output_option(default: str | None, picture: str | None = None):
    """--output: a PNG path; `picture` says where it goes when the default is None (beside the input)."""
    return option(default, "PNG path" if default else f"PNG path (default: {picture})", group="outputs",
                  check=check_output)


def _device():
    return option(None, "cpu, cuda, cuda:N, mps ... (default: cuda when available)", check=check_device)


def _seed():
    return option(0, "seed of the noise", range=SEED_RANGE)


def _steps(what: str):
    return option(None, f"{what} (default: all T)", range="[1, inf)")


@dataclass
class ScheduleOptions:
    """abar_t and SNR of noise schedules."""

    beta_schedule: list[str] | None = option(
        None, "schedules to draw (default: linear, or none with --pipeline)", choices=SCHEDULES, metavar="NAME")
    num_train_timesteps: int = option(SCHEDULER_DEFAULTS["num_train_timesteps"], "T of the named schedules",
                                      range="[1, inf)")
    beta_start: float = option(SCHEDULER_DEFAULTS["beta_start"], "first beta of the named schedules",
                               range="(0, 1]")
    beta_end: float = option(SCHEDULER_DEFAULTS["beta_end"], "last beta of the named schedules", range="(0, 1]")
    pipeline: str | os.PathLike | DiffusionPipeline | None = option(
        None, "also draw this saved pipeline's schedule; from Python also a pipeline object", check=check_pipeline)
    output: str | os.PathLike = output_option("schedule.png")

    def schedules(self) -> list[str]:
        return list(self.beta_schedule) if self.beta_schedule is not None else ([] if self.pipeline else ["linear"])

    def validate(self) -> None:
        if not self.schedules() and self.pipeline is None:
            raise UsageError("no schedule to draw", flag("beta_schedule"),
                             "name at least one schedule or give --pipeline")
        for name in self.schedules():  # the scheduler's own checks between beta_start, beta_end and the schedule
            DDPMScheduler(num_train_timesteps=self.num_train_timesteps, beta_start=self.beta_start,
                          beta_end=self.beta_end, beta_schedule=name)


@dataclass
class LossOptions:
    """A training scalar from TensorBoard logs, raw and smoothed."""

    logdir: str | os.PathLike = option(help="folder with TensorBoard event files (searched recursively)",
                                       positional=True, free="read_scalars refuses a folder without event files")
    tag: str = option("train/loss", "scalar tag", free="read_scalars refuses a tag the logs do not hold, listing "
                                                       "those they do")
    smoothing: float = option(0.9, "weight of TensorBoard's debiased exponential moving average", range="[0, 1)")
    log_scale: bool | None = option(None, "log y axis (default: when every value is positive)",
                                    free="true, false, or left out")
    output: str | os.PathLike | None = output_option(None, "LOGDIR/loss.png")


@dataclass
class ProgressiveOptions:
    """x0 predictions along the reverse chain (paper Fig. 6)."""

    pipeline: str | os.PathLike | DiffusionPipeline = option(help=PIPELINE_HELP, positional=True,
                                                             check=check_pipeline)
    num_images: int = option(4, "samples, one row each", range="[1, inf)")
    num_frames: int = option(10, "timesteps shown, from t = T-1 to t = 0", range="[2, inf)")
    num_inference_steps: int | None = _steps("sampling steps")
    seed: int = _seed()
    device: str | None = _device()
    output: str | os.PathLike | None = output_option(None, "PIPELINE/progressive.png")


@dataclass
class InterpolationOptions:
    """Interpolation through the diffusion latent space (paper Sec. 4.4)."""

    pipeline: str | os.PathLike | DiffusionPipeline = option(help=PIPELINE_HELP, positional=True,
                                                             check=check_pipeline)
    image_a: str | None = option(None, "image file of one end (else dataset image --index-a)",
                                 excludes=("dataset", "split", "index_a", "index_b"),
                                 free="read with PIL; its size is checked against the model's")
    image_b: str | None = option(None, "image file of the other end (else dataset image --index-b)",
                                 free="read with PIL; its size is checked against the model's")
    dataset: str = option(FASHION_MNIST, "where the end points come from without image files",
                          free="resolved by metrics.reference.DatasetSpec: a missing path is refused")
    split: str | None = option(None, "split of --dataset (default: test; train for image folders)",
                               free="checked when the dataset is read")
    index_a: int = option(0, "dataset index of one end", range="[0, inf)")
    index_b: int = option(1, "dataset index of the other end", range="[0, inf)")
    timesteps: list[int] | None = option(None, "timesteps of the encoding, one row each (default: T/4, T/2, 3T/4)",
                                         range="[0, inf)", aliases=["--t"], metavar="t")
    num_points: int = option(9, "mixing weights between the end points", range="[2, inf)")
    num_inference_steps: int | None = _steps("decoding steps")
    seed: int = _seed()
    device: str | None = _device()
    output: str | os.PathLike | None = output_option(None, "PIPELINE/interpolation.png")

    def validate(self) -> None:
        if (self.image_a is None) != (self.image_b is None):
            raise UsageError("only one of image_a and image_b given", f"{flag('image_a')}, {flag('image_b')}",
                             "give both image_a and image_b, or neither (then dataset images are used)")


@dataclass
class BpdTermsOptions:
    """A figure of `hf-ddpm evaluate`'s bpd_terms.npz."""

    eval_dir: str | os.PathLike = option(help="folder with bpd_terms.npz from `hf-ddpm evaluate` (or the file)",
                                         positional=True, free="load_bpd_terms refuses a missing or foreign file")
    output: str | os.PathLike | None = output_option(None, "EVAL_DIR/<figure>.png")


@dataclass
class StepsVsFidOptions:
    """FID and KID against network evaluations per sampler, from `hf-ddpm evaluate --sweep`'s results."""

    results: str | os.PathLike = option(
        help="eval_results.json of `hf-ddpm evaluate PIPELINE --sweep ...` (or its folder)", positional=True,
        free="load_sampler_results refuses a missing file or one without sampler results")
    title: str | None = option(None, "figure title (default: the dataset, sample and reference counts)",
                               free="any text")
    dpi: int = option(200, "pixels per inch of the PNG (the figure is 10 x 4 inches with KID, 5.5 x 4 without)",
                      range="[50, 1200]")
    output: str | os.PathLike | None = output_option(None, "RESULTS_DIR/steps_vs_fid.png")


def _figure(function_name: str, module: str = "plots"):
    def run(config) -> int:
        import importlib

        print(getattr(importlib.import_module(f"hf_ddpm.{module}"), function_name)(config))
        return 0

    return run


COMMAND = Command(
    "plot", "pictures: schedule, loss, progressive, interpolation, rate-distortion, bpd-terms, steps-vs-fid (PNG)",
    description="Draw one picture as a PNG file.",
    subcommands=(
        Command("schedule", "abar_t and SNR of noise schedules", _figure("plot_schedule"), ScheduleOptions),
        Command("loss", "a training scalar from TensorBoard logs", _figure("plot_loss"), LossOptions),
        Command("progressive", "x0 predictions along the reverse chain (paper Fig. 6)", _figure("plot_progressive"),
                ProgressiveOptions),
        Command("interpolation", "latent-space interpolation between two images (paper Sec. 4.4)",
                _figure("plot_interpolation"), InterpolationOptions),
        Command("rate-distortion", "cumulative rate vs RMSE of x0 predictions (paper Fig. 5)",
                _figure("plot_rate_distortion"), BpdTermsOptions),
        Command("bpd-terms", "per-step bits/dim terms of the bound", _figure("plot_bpd_terms"), BpdTermsOptions),
        Command("steps-vs-fid", "FID and KID against network evaluations, one line per sampler (evaluate --sweep)",
                _figure("plot_steps_vs_fid", "plots_samplers"), StepsVsFidOptions),
    ),
)
