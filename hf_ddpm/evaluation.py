"""`evaluate`: a DDPM's numbers (bits/dim of paper Table 2, FID / KID / Inception Score, FD_DINOv2) and a sample
grid, merged into `eval_results.json`; with `bits_per_dim` (also what training logs) and sampling to uint8.

`evaluate` reads top to bottom: its options are `hf_ddpm.commands.evaluate.EvaluateConfig` (where their defaults
live); every input (pipeline, samples, networks, dataset images, reference statistics, the results file to merge
into) is loaded and checked before bits/dim or sampling start, and the outputs are written once everything is
computed (only samples.npz, with save_samples, as soon as the samples exist): a bad input costs no run and changes
no earlier result. The metrics themselves are in `hf_ddpm.metrics`.

Samplers (`scheduler`, `num_inference_steps`, `eta`; or a `sweep` of sampler:steps pairs, all with the same seed and
reference statistics): every sampling run is recorded in eval_results.json's "samplers", keyed by `sampler_key`
("ddpm-1000", "dpmsolver++-20", "ddim-50-eta0"), as {"metrics", "settings"} where the settings hold the sampler,
steps, eta, the network evaluations per image counted on the UNet ("nfe"), the sample count, seed, device and the
seconds sampling took. The top-level "metrics" and "settings" hold bits/dim and the sample metrics of the latest
single (not sweep) run with the ddpm sampler, what the model card shows; sample metrics there, or under one key, are
merged only with those of alike samples (same sampler, steps, eta, sample count and seed) and replaced as a whole
otherwise, so no number is ever described by another run's settings.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .artifacts import (BPD_TERMS_FILE, RESULTS_FILE, SAMPLES_FILE, SAMPLES_GRID_FILE, default_device,
                        library_progress_bars, load_pipeline, load_samples, spatial_size)
from .commands.evaluate import EvaluateConfig, parse_sweep
from .metrics import (DatasetSpec, DINOv2Features, FeatureExtractor, FeatureStatistics, InceptionV3Features,
                      ModelImages, extract_features, frechet_distance, inception_score, kernel_inception_distance,
                      reference_statistics)
from .options import UsageError, configure, flag
from .pipeline_likelihood import DDPMLikelihoodOutput, DDPMLikelihoodPipeline
from .samplers import SAMPLERS, check_steps, default_steps, make_scheduler

HEADLINE_SAMPLER = "ddpm"  # its single runs fill the top-level metrics: the model's own sampler, what the card shows
SAMPLE_SETTINGS = ("scheduler", "num_inference_steps", "eta", "num_samples", "seed")  # samples alike when all equal


# ------------------------------------------------------------------------------------------ bits/dim, samples


def bits_per_dim(unet, scheduler, images, *, generator: torch.Generator | None = None,
                 model_batch_size: int | None = None, progress: bool = False) -> DDPMLikelihoodOutput:
    """The variational bound in bits/dim (paper Table 2) of `images` (uint8 pixels, or floats in [-1, 1],
    [B, C, H, W]) under `unet` and `scheduler`, with its per-step terms: `DDPMLikelihoodPipeline`'s output.
    `model_batch_size` (image, t) pairs go through the UNet at once (None: the pipeline's default)."""
    likelihood = DDPMLikelihoodPipeline(unet=unet, scheduler=scheduler)
    likelihood.set_progress_bar_config(disable=not progress, desc="bits/dim", leave=False)
    batch = {} if model_batch_size is None else {"model_batch_size": model_batch_size}
    return likelihood(images, generator=generator, **batch)


def generate_samples(pipeline, num_samples: int, *, batch_size: int, seed: int, num_inference_steps: int | None = None,
                     eta: float | None = None, progress: bool = False, desc: str = "sampling") -> np.ndarray:
    """`num_samples` images from `pipeline` (with its scheduler) as uint8 [N, H, W, C] (rounded as PIL output would
    be); all T steps unless `num_inference_steps`; `eta` for schedulers whose step takes it (DDIM)."""
    generator = torch.Generator(pipeline.device).manual_seed(seed)
    chunks = []
    with tqdm(total=num_samples, desc=desc, unit="img", disable=not progress) as bar:
        for start in range(0, num_samples, batch_size):
            count = min(batch_size, num_samples - start)
            images = pipeline(batch_size=count, generator=generator, num_inference_steps=num_inference_steps,
                              eta=eta, output_type="pt").images
            chunks.append((images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
            bar.update(count)
    return np.concatenate(chunks)


def save_image_grid(images: np.ndarray, path: str, max_images: int = 64) -> str:
    """Save up to `max_images` uint8 images [N, H, W, C] as one PNG grid (rows of ceil(sqrt(n)), black padding)."""
    import PIL.Image
    from diffusers.utils import make_image_grid

    tiles = [PIL.Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image) for image in images[:max_images]]
    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    tiles += [PIL.Image.new(tiles[0].mode, tiles[0].size)] * (rows * cols - len(tiles))
    make_image_grid(tiles, rows, cols).save(path)
    return path


# ------------------------------------------------------------------------------------------------ samplers


def sampler_key(scheduler: str, steps: int, eta: float | None = None) -> str:
    """A sampling run's key in eval_results.json's "samplers": "ddpm-1000", "dpmsolver++-20", "ddim-50-eta0"."""
    key = f"{scheduler}-{steps}"
    return key + f"-eta{eta or 0.0:g}" if SAMPLERS[scheduler].takes_eta else key


def sampling_runs(config: EvaluateConfig, T: int) -> list[tuple[str, int]]:
    """The (sampler, steps) pairs to sample with, checked against the model's T: the sweep's, else the one of
    `scheduler` and `num_inference_steps` (its default: all T for ddpm, 50 for the others); none without sample
    metrics or with given samples."""
    if not config.sample_metrics or config.samples is not None:
        return []
    if config.sweep:
        pairs, option = parse_sweep(config.sweep), flag("sweep")
    else:
        steps = config.num_inference_steps or default_steps(config.scheduler, T)
        pairs, option = [(config.scheduler, steps)], flag("num_inference_steps")
    for name, steps in pairs:
        check_steps(name, steps, T, option)
    return pairs


def sample_with(pipe, scheduler: str, steps: int, config: EvaluateConfig, progress: bool) -> tuple[np.ndarray, dict]:
    """`config.num_samples` uint8 images from `pipe`'s UNet with sampler `scheduler` (built from `pipe`'s scheduler
    config) and `steps` steps, from `config.seed`; with the run's settings, the UNet calls per image counted."""
    from .pipeline_ddpm import DDPMPipeline

    sampling = DDPMPipeline(unet=pipe.unet, scheduler=make_scheduler(scheduler, pipe.scheduler.config))
    sampling.set_progress_bar_config(disable=True, leave=False)
    eta = (config.eta or 0.0) if SAMPLERS[scheduler].takes_eta else None
    calls = []
    hook = pipe.unet.register_forward_hook(lambda *_: calls.append(1))
    try:
        start = time.perf_counter()
        samples = generate_samples(sampling, config.num_samples, batch_size=config.batch_size, seed=config.seed,
                                   num_inference_steps=steps, eta=eta, progress=progress,
                                   desc=f"sampling {sampler_key(scheduler, steps, eta)}")
        seconds = time.perf_counter() - start
    finally:
        hook.remove()
    batches = math.ceil(config.num_samples / config.batch_size)
    return samples, {"scheduler": scheduler, "num_inference_steps": steps, "eta": eta, "nfe": len(calls) // batches,
                     "num_samples": len(samples), "seed": config.seed, "sampling_seconds": round(seconds, 3),
                     "device": str(pipe.device)}


def keyed_file(name: str, key: str) -> str:
    """samples_grid.png -> samples_grid_ddim-50-eta0.png: the file of a run that is not the headline one."""
    stem, ext = os.path.splitext(name)
    return f"{stem}_{key}{ext}"


# ---------------------------------------------------------------------------------------------- results file


def output_paths(output, pipeline) -> tuple[str, str]:
    """(output folder, results file) for `output` (a folder or a .json file; None: the pipeline's own folder)."""
    if output is None:
        is_path = isinstance(pipeline, (str, os.PathLike))
        if not is_path or not os.path.isdir(pipeline):
            where = f" ({os.fspath(pipeline)} is not a local folder)" if is_path else ""
            raise UsageError(f"no output folder for the results of a Hub model or pipeline object{where}",
                             flag("output"), "give an output folder")
        output = pipeline
    output = os.fspath(output)
    out_dir, results_path = ((os.path.dirname(os.path.abspath(output)), output) if output.endswith(".json")
                             else (output, os.path.join(output, RESULTS_FILE)))
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise NotADirectoryError(f"--output {out_dir} is a file, not a folder: choose another --output.")
    return out_dir, results_path


def previous_results(path: str, dataset: dict, overwrite: bool = False) -> dict:
    """The results file at `path` that new results are merged into ({} if none, or with `overwrite`), refused when
    it is unreadable or holds results for another dataset."""
    if overwrite or not os.path.isfile(path):
        return {}
    how = "pass --overwrite to replace it, or --output to write elsewhere"
    try:
        with open(path, encoding="utf-8") as file:
            old = json.load(file)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}): fix or delete it, {how}.") from None
    if (not isinstance(old, dict) or not all(isinstance(old.get(k, {}), dict) for k in ("dataset", "metrics",
                                                                                       "settings", "samplers"))
            or not all(isinstance(run, dict) for run in old.get("samplers", {}).values())):
        raise ValueError(f"{path} is not an eval_results.json (an object with 'dataset', 'metrics' and 'settings' "
                         f"objects, and 'samplers' of such objects): {how}.")
    same = {k: old.get("dataset", {}).get(k) for k in ("name", "config", "split")}
    wanted = {k: dataset.get(k) for k in ("name", "config", "split")}
    if old.get("dataset") and same != wanted:
        raise ValueError(f"{path} holds results for dataset {same}, not {wanted}: {how}.")
    return old


def merge_run(old: dict, new: dict) -> dict:
    """A run's {"metrics", "settings"} over an earlier one's: its sample metrics join the earlier ones only when the
    samples are alike (SAMPLE_SETTINGS equal), else the earlier sample metrics and settings go; bits/dim stays."""
    metrics, settings = dict(old.get("metrics", {})), dict(old.get("settings", {}))
    if any(k != "bpd" for k in new["metrics"]) and any(settings.get(k) != new["settings"].get(k)
                                                       for k in SAMPLE_SETTINGS):
        metrics = {k: v for k, v in metrics.items() if k == "bpd"}
        settings = {k: v for k, v in settings.items() if k == "bpd_num_images"}
    return {"metrics": {**metrics, **new["metrics"]},
            "settings": {k: v for k, v in {**settings, **new["settings"]}.items() if v is not None}}


def merge_results(path: str, new: dict, overwrite: bool = False) -> dict:
    """Merge `new` into the results file at `path`: metrics and settings of earlier runs on the same dataset
    are kept unless recomputed (`merge_run`, for the top level and each sampler's key); results for another dataset
    are an error unless `overwrite`."""
    old = previous_results(path, new["dataset"], overwrite)
    dataset = {k: new["dataset"][k] for k in ("name", "config", "split")}
    # num_images: the size of the reference set (FID/KID/FD) of this run, else of an earlier run's
    dataset["num_images"] = new["dataset"].get("num_images") or old.get("dataset", {}).get("num_images")
    if dataset["num_images"] is None:
        del dataset["num_images"]
    merged = {"dataset": dataset, **merge_run(old, new)}
    samplers = dict(old.get("samplers", {}))
    for key, run in new.get("samplers", {}).items():
        samplers[key] = merge_run(samplers.get(key, {}), run)
    if samplers:
        merged["samplers"] = samplers
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as file:
        json.dump(merged, file, indent=2)
        file.write("\n")
    return merged


# ------------------------------------------------------------------------------------------- evaluate's steps


@dataclass
class _Model:
    """The loaded pipeline and the image size its samples and dataset images must have."""

    pipe: object
    resolution: int
    channels: int
    T: int

    @classmethod
    def load(cls, config: EvaluateConfig, device: str, progress: bool) -> "_Model":
        pipe = load_pipeline(config.pipeline, device, progress)
        pipe.set_progress_bar_config(disable=True, leave=False)
        T = pipe.scheduler.config.num_train_timesteps
        return cls(pipe, spatial_size(pipe.unet.config)[0], pipe.unet.config.in_channels, T)


def _checked_samples(samples, model: _Model, sample_metrics: list[str]) -> np.ndarray:
    """Given samples as uint8 [N, H, W, C] of the model's size."""
    samples = np.asarray(samples)
    if samples.ndim == 3:
        samples = samples[..., None]
    expected = (model.resolution, model.resolution, model.channels)
    if samples.dtype != np.uint8 or samples.ndim != 4 or samples.shape[1:] != expected:
        raise ValueError(f"samples must be uint8 [N, {model.resolution}, {model.resolution}, {model.channels}] for "
                         f"this model, got {samples.dtype} {samples.shape}.")
    if len(samples) < 2:
        raise ValueError(f"{', '.join(sample_metrics)} need at least 2 samples, got {len(samples)}.")
    return samples


def _inception(config: EvaluateConfig, metrics: list[str], model: _Model, device: str) -> FeatureExtractor | None:
    """The Inception network when FID, KID or IS is asked for, tried on one image. Without its classifier IS is
    dropped from `metrics`: silently when it came with the default list, with an error when asked for."""
    if not any(m in metrics for m in ("fid", "kid", "is")):
        return None
    weights = config.inception_weights
    extractor = weights if isinstance(weights, FeatureExtractor) else InceptionV3Features(weights, device)
    if "is" in metrics and not extractor.has_logits:
        if config.metrics is not None:
            raise UsageError(f"no Inception Score: the Inception weights ({getattr(extractor, 'weights', 'given')}) "
                             "have no classifier", flag("metrics"),
                             "pass --inception-weights with one that has (NVIDIA's inception-2015-12-05.pt), or "
                             "leave is out of --metrics")
        metrics.remove("is")
    extractor.extract(torch.zeros(1, model.channels, model.resolution, model.resolution, dtype=torch.uint8))
    return extractor


def _bpd_images(spec: DatasetSpec, config: EvaluateConfig, model: _Model) -> torch.Tensor:
    """The first `bpd_num_images` dataset images (all of them for None) as one uint8 batch; more than exist is an
    error, not a quiet cap."""
    images = ModelImages(spec.load(config.bpd_num_images), model.resolution, model.channels, config.resize)
    batch = torch.cat(list(images.batches(max(1, len(images)))))
    wanted = config.bpd_num_images
    if wanted is not None and len(batch) < wanted:
        raise UsageError(f"{wanted} images asked for bits/dim, but dataset {spec.describe()['name']} "
                         f"({spec.resolved_split or 'file'}) has {len(batch)}", flag("bpd_num_images"),
                         f"pass {len(batch)} or fewer, or all")
    return batch


def _bpd(model: _Model, images: torch.Tensor, config: EvaluateConfig, progress: bool) -> tuple[float, dict]:
    """Mean bits/dim, and the per-image terms that bpd_terms.npz keeps for the rate-distortion plots."""
    generator = torch.Generator(model.pipe.device).manual_seed(config.seed)
    nll = bits_per_dim(model.pipe.unet, model.pipe.scheduler, images, generator=generator,
                       model_batch_size=config.model_batch_size, progress=progress)
    terms = dict(bpd=nll.bpd.cpu().numpy(), prior_bpd=nll.prior_bpd.cpu().numpy(),
                 terms_bpd=nll.terms_bpd.cpu().numpy(), x0_mse=nll.x0_mse.cpu().numpy(), timesteps=np.arange(model.T))
    return float(nll.bpd.double().mean()), terms


def _sample_scores(samples: np.ndarray, metrics: list[str], config: EvaluateConfig, progress: bool,
                   inception: FeatureExtractor | None, reference: FeatureStatistics | None,
                   dinov2: DINOv2Features | None, dinov2_reference: FeatureStatistics | None) -> dict[str, float]:
    """FID, KID, IS and FD_DINOv2 of the samples, as asked for in `metrics`."""
    scores: dict[str, float] = {}
    batch = config.feature_batch_size
    if inception is not None:
        want_is = "is" in metrics
        fake = extract_features(samples, inception, batch_size=batch, logits=want_is, desc="sample features",
                                progress=progress)
        if "fid" in metrics:
            scores["fid"] = frechet_distance(reference, FeatureStatistics.from_features(fake["features"]))
        if "kid" in metrics:
            scores["kid"], scores["kid_std"] = kernel_inception_distance(reference.features, fake["features"],
                                                                         seed=config.seed)
        if want_is:
            scores["inception_score"], scores["inception_score_std"] = inception_score(fake["logits"],
                                                                                       seed=config.seed)
    if dinov2 is not None:
        fake = extract_features(samples, dinov2, batch_size=batch, desc="sample DINOv2", progress=progress)
        scores["fd_dinov2"] = frechet_distance(dinov2_reference, FeatureStatistics.from_features(fake["features"]))
    return scores


# ---------------------------------------------------------------------------------------------------- evaluate


def evaluate(pipeline_or_config, /, **options) -> dict:
    """Evaluate a DDPM pipeline (object, saved folder or Hub id) and write eval_results.json; returns the results.

    Call it with an `EvaluateConfig`, or with the pipeline and any of `EvaluateConfig`'s fields as keywords
    (`evaluate(pipe, metrics="bpd", bpd_num_images=8, output="out")`); their defaults are EvaluateConfig's.

    - "bpd": the variational bound in bits/dim (paper Table 2) of the first `bpd_num_images` images of the
      dataset split (None: all), with the per-step terms and x0 MSE saved to bpd_terms.npz for the plots.
    - "fid", "kid", "is": `num_samples` samples (sampler `scheduler`, `num_inference_steps` steps: all T for ddpm
      by default; or each pair of `sweep`) against the dataset's cached Inception statistics; with the default
      metric list IS only where the Inception weights include the classifier.
    - "fd_dinov2": the Frechet distance in DINOv2 feature space (`dinov2_model`: a Hub id, folder or model).

    `samples` (uint8 [N, H, W, C] or a samples.npz path) skips sampling. The dataset must be at the model's
    resolution unless `resize` (shorter side resized, centre crop).
    """
    config = configure(EvaluateConfig, pipeline_or_config, **options)
    metrics, sample_metrics, spec = config.metric_names, config.sample_metrics, config.dataset_spec()
    progress, device = not config.quiet, config.device or default_device()
    dataset_info = spec.describe()
    out_dir = results_path = None
    if config.output is not None or isinstance(config.pipeline, (str, os.PathLike)):
        out_dir, results_path = output_paths(config.output, config.pipeline)
    samples = load_samples(config.samples) if sample_metrics and isinstance(config.samples, (str, os.PathLike)) \
        else config.samples

    # every input, checked before the computing starts (reference statistics, which only go to the cache, first)
    with library_progress_bars(progress, datasets=spec.kind in ("folder", "hub")):
        model = _Model.load(config, device, progress)
        runs = sampling_runs(config, model.T)
        if sample_metrics and samples is not None:
            samples = _checked_samples(samples, model, sample_metrics)
        inception = _inception(config, metrics, model, device)
        dinov2 = (DINOv2Features(config.dinov2_model, config.dinov2_resolution, device)
                  if "fd_dinov2" in metrics else None)
        bpd_images = _bpd_images(spec, config, model) if "bpd" in metrics else None
        reference_options = dict(max_images=config.max_reference_images, resize=config.resize,
                                 batch_size=config.feature_batch_size, cache_dir=config.cache_dir,
                                 use_cache=not config.no_cache, recompute=config.recompute_reference,
                                 progress=progress)
        reference = dinov2_reference = None
        if inception is not None and ("fid" in metrics or "kid" in metrics):
            reference = reference_statistics(spec, inception, model.resolution, model.channels, **reference_options)
            dataset_info["num_images"] = reference.num_images
        if dinov2 is not None:
            dinov2_reference = reference_statistics(spec, dinov2, model.resolution, model.channels,
                                                    **reference_options)
            dataset_info.setdefault("num_images", dinov2_reference.num_images)
        if results_path is not None:  # an unmergeable results file is refused now, not after the run
            previous_results(results_path, dataset_info, config.overwrite)

        # the computing
        result_metrics: dict[str, float] = {}
        settings: dict = {}
        bpd_terms = None
        if bpd_images is not None:
            result_metrics["bpd"], bpd_terms = _bpd(model, bpd_images, config, progress)
            settings["bpd_num_images"] = len(bpd_images)
        extractor = {"feature_extractor": inception.name} if inception is not None else {}
        sampler_results, grids = {}, {}
        for name, steps in runs:  # the same seed and reference statistics for every sampler
            run_samples, run_settings = sample_with(model.pipe, name, steps, config, progress)
            key = sampler_key(name, steps, run_settings["eta"])
            headline = not config.sweep and name == HEADLINE_SAMPLER
            if config.save_samples and out_dir:  # written at once: the costly part survives a later failure
                os.makedirs(out_dir, exist_ok=True)
                np.savez_compressed(os.path.join(out_dir, SAMPLES_FILE if headline else keyed_file(SAMPLES_FILE, key)),
                                    images=run_samples)
            scores = _sample_scores(run_samples, metrics, config, progress, inception, reference, dinov2,
                                    dinov2_reference)
            sampler_results[key] = {"metrics": scores, "settings": {**run_settings, **extractor}}
            grids[SAMPLES_GRID_FILE if headline else keyed_file(SAMPLES_GRID_FILE, key)] = run_samples[:64]
            if headline:
                result_metrics.update(scores)
                settings.update(sampler_results[key]["settings"])
        if sample_metrics and samples is not None:  # given samples: their sampler is unknown, not an earlier run's
            settings.update(dict.fromkeys(SAMPLE_SETTINGS), num_samples=len(samples), **extractor)
            result_metrics.update(_sample_scores(samples, metrics, config, progress, inception, reference, dinov2,
                                                 dinov2_reference))
            grids[SAMPLES_GRID_FILE] = samples[:64]

    # the outputs
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        if bpd_terms is not None:
            np.savez(os.path.join(out_dir, BPD_TERMS_FILE), **bpd_terms)
        for name, images in grids.items():
            save_image_grid(images, os.path.join(out_dir, name))
    new = {"dataset": dataset_info, "metrics": result_metrics, "settings": settings, "samplers": sampler_results}
    if results_path is None:
        return {"dataset": dataset_info, **merge_run({}, new), **({"samplers": sampler_results} if runs else {})}
    return merge_results(results_path, new, config.overwrite)
