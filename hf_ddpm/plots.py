"""The pictures by which a DDPM is judged, one function each, as PNG files (`hf-ddpm plot ...` draws them).

- ``plot_schedule``: abar_t and the signal-to-noise ratio abar_t / (1 - abar_t) of one or more noise schedules.
- ``plot_loss``: a scalar (default ``train/loss``) from TensorBoard event files, raw and smoothed.
- ``plot_progressive``: x0 predictions along the reverse chain (paper Fig. 6).
- ``plot_interpolation``: interpolation through the diffusion latent space at several t (paper Sec. 4.4, Figs. 8-9).
- ``plot_rate_distortion``: cumulative rate vs RMSE of x0 predictions on [0, 255] (paper Fig. 5), from
  `hf-ddpm evaluate`'s bpd_terms.npz.
- ``plot_bpd_terms``: the per-step terms L_t of the bound in bits/dim, from the same file.

Each figure function takes its options object from `hf_ddpm.commands.plot` (where the defaults live), or the first
argument and those options as keywords: `plot_loss("runs/x/logs", smoothing=0.6)`. Figures are drawn with
matplotlib's object API on the Agg canvas (no pyplot, no display, no global backend change).
"""

from __future__ import annotations

import os
import zipfile

import numpy as np
import torch

from .artifacts import BPD_TERMS_FILE, default_device, load_npz, load_pipeline, spatial_size
from .commands.plot import (BpdTermsOptions, InterpolationOptions, LossOptions, ProgressiveOptions, ScheduleOptions,
                            check_output)
from .metrics.reference import DatasetSpec, ModelImages
from .options import configure

DPI = 100
FEW_POINTS = 25  # curves with at most this many points are drawn with markers (one point is a marker alone)
PASS_LOGS = "pass the TensorBoard log folder of a training run (train.py writes it to OUTPUT_DIR/logs)"


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)  # a renderer to measure text with
    return fig


def _fit_suptitle(fig, text: str, fontsize: float = 10, min_fontsize: float = 7):
    """A figure title that fits the figure's width: shrunk down to `min_fontsize`, then broken after its first
    ': ' onto two lines."""
    title = fig.suptitle(text, fontsize=fontsize)
    renderer = fig.canvas.get_renderer()
    room = 0.96 * fig.bbox.width
    while title.get_window_extent(renderer).width > room and title.get_fontsize() > min_fontsize:
        title.set_fontsize(title.get_fontsize() - 0.5)
    if title.get_window_extent(renderer).width > room and ": " in text:
        title.set_text(text.replace(": ", ":\n", 1))
    return title


def _save(fig, output) -> str:
    check_output(output)
    fig.savefig(output, dpi=DPI)
    return os.fspath(output)


def _show_image(ax, image: np.ndarray) -> None:
    """Draw one image [H, W, C] with values in [0, 1] (gray for C = 1) without axes."""
    image = np.clip(image, 0, 1)
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _load_pipeline(pipeline, device):
    pipe = load_pipeline(pipeline, device or default_device())
    pipe.set_progress_bar_config(leave=False)
    return pipe


def _default_output(folder, name: str) -> str:
    folder = os.fspath(folder) if isinstance(folder, (str, os.PathLike)) else None
    return os.path.join(folder, name) if folder is not None and os.path.isdir(folder) else name


# ------------------------------------------------------------------------------------------------ schedule


def schedule_curves(schedules, pipeline=None, **scheduler_config) -> dict[str, np.ndarray]:
    """{label: abar_t (float64, t = 0..T-1)} for each named schedule (a `DDPMScheduler` with `scheduler_config`, its
    defaults for the rest), and for a pipeline's scheduler if given."""
    from .scheduling_ddpm import DDPMScheduler

    curves = {}
    if pipeline is not None:
        pipe = _load_pipeline(pipeline, "cpu")
        config = pipe.scheduler.config
        curves[f"pipeline ({config.beta_schedule}, T={config.num_train_timesteps})"] = (
            pipe.scheduler.diffusion.tables["alphas_cumprod"].numpy())
    for name in schedules:
        scheduler = DDPMScheduler(**{**scheduler_config, "beta_schedule": name})
        curves[f"{name} (T={scheduler.config.num_train_timesteps})"] = (
            scheduler.diffusion.tables["alphas_cumprod"].numpy())
    if not curves:
        raise ValueError("no schedule to plot: name at least one schedule or give a pipeline.")
    return curves


def plot_schedule(config: ScheduleOptions | None = None, /, **options) -> str:
    """abar_t and log10 SNR_t against t / T for each schedule (and the pipeline's own, if given)."""
    config = configure(ScheduleOptions, config, **options)
    curves = schedule_curves(config.schedules(), config.pipeline, num_train_timesteps=config.num_train_timesteps,
                             beta_start=config.beta_start, beta_end=config.beta_end)
    fig = _figure(11, 4)
    ax_abar, ax_snr = fig.subplots(1, 2)
    for label, abar in curves.items():
        u = np.arange(len(abar)) / len(abar)
        with np.errstate(divide="ignore"):  # abar = 0 (jsd's last step): log SNR = -inf, not drawn
            log_snr = np.log10(abar / (1 - abar))
        ax_abar.plot(u, abar, label=label)
        ax_snr.plot(u, log_snr, label=label)
    ax_abar.set(xlabel="t / T", ylabel=r"$\bar\alpha_t$", title=r"$\bar\alpha_t$ (signal kept)", ylim=(-0.02, 1.02))
    ax_snr.set(xlabel="t / T", ylabel=r"$\log_{10}$ SNR", title=r"SNR $=\bar\alpha_t / (1-\bar\alpha_t)$")
    for ax in (ax_abar, ax_snr):
        ax.grid(alpha=0.3)
    ax_abar.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, config.output)


# ---------------------------------------------------------------------------------------------------- loss


def read_scalars(logdir, tag: str = "train/loss") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{run: (steps, values)} of scalar `tag` in every folder under `logdir` that holds TensorBoard event files."""
    from tensorboard.backend.event_processing import event_accumulator

    logdir = os.fspath(logdir)
    if not os.path.isdir(logdir):
        what = "is a file, not a folder" if os.path.exists(logdir) else "not found"
        raise FileNotFoundError(f"log folder {logdir} {what}: {PASS_LOGS}.")
    runs, seen_tags = {}, set()
    for folder, _, files in sorted(os.walk(logdir)):
        if not any(name.startswith("events.out.tfevents") for name in files):
            continue
        accumulator = event_accumulator.EventAccumulator(folder, size_guidance={event_accumulator.SCALARS: 0})
        accumulator.Reload()
        tags = accumulator.Tags().get("scalars", [])
        seen_tags.update(tags)
        if tag in tags:
            events = accumulator.Scalars(tag)
            run = os.path.relpath(folder, logdir)
            runs[run] = (np.array([e.step for e in events]), np.array([e.value for e in events], dtype=np.float64))
    if not runs:
        if not seen_tags:
            raise FileNotFoundError(f"no TensorBoard event files under {logdir}: {PASS_LOGS}.")
        raise ValueError(f"no scalar {tag!r} in {logdir}; its scalars are: {', '.join(sorted(seen_tags))}.")
    return runs


def smooth(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard's smoothing: an exponential moving average started at 0 and debiased, value i divided by
    1 - weight^(i+1), so that it starts at the first value instead of lagging behind it."""
    if not 0 <= weight < 1:
        raise ValueError(f"smoothing must lie in [0, 1), got {weight}.")
    out, last = np.empty_like(values), 0.0
    for i, value in enumerate(values):
        last = last * weight + (1 - weight) * value
        out[i] = last / (1 - weight ** (i + 1))
    return out


def plot_loss(config: LossOptions | str | os.PathLike, /, **options) -> str:
    """The training curve of `tag` (each run under `logdir`): raw values faint, smoothed on top; with markers when
    there are few points."""
    config = configure(LossOptions, config, **options)
    runs = read_scalars(config.logdir, config.tag)
    fig = _figure(8, 4.5)
    ax = fig.subplots()
    for k, (run, (steps, values)) in enumerate(runs.items()):
        color = f"C{k}"
        label = config.tag if run == "." else f"{run}"
        marker = "o" if len(steps) <= FEW_POINTS else None
        ax.plot(steps, values, color=color, alpha=0.3, linewidth=0.8, marker=marker, markersize=3)
        ax.plot(steps, smooth(values, config.smoothing), color=color, marker=marker, markersize=5,
                label=f"{label} (smoothed {config.smoothing})")
    positive = all((values > 0).all() for _, values in runs.values())
    if config.log_scale if config.log_scale is not None else positive:
        ax.set_yscale("log")
    ax.set(xlabel="step", ylabel=config.tag,
           title=f"{config.tag} ({os.path.basename(os.path.normpath(os.fspath(config.logdir)))})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, config.output or _default_output(config.logdir, "loss.png"))


# ------------------------------------------------------------------------------------ progressive generation


def plot_progressive(config: ProgressiveOptions | object, /, **options) -> str:
    """x0 predictions at `num_frames` evenly spaced timesteps of the reverse chain (paper Fig. 6); one row per
    sample, left (t = T-1, pure noise) to right (t = 0, the sample)."""
    config = configure(ProgressiveOptions, config, **options)
    pipe = _load_pipeline(config.pipeline, config.device)
    steps = config.num_inference_steps or pipe.scheduler.config.num_train_timesteps
    pipe.scheduler.set_timesteps(steps)
    chain = pipe.scheduler.timesteps.tolist()
    picks = sorted({chain[i] for i in np.linspace(0, len(chain) - 1, config.num_frames).round().astype(int)},
                   reverse=True)
    generator = torch.Generator(pipe.device).manual_seed(config.seed)
    out = pipe(batch_size=config.num_images, generator=generator, num_inference_steps=steps, output_type="np",
               record_timesteps=picks)
    frames = out.pred_original_samples
    fig = _figure(1.2 * len(picks) + 0.6, 1.2 * config.num_images + 0.6)
    axes = fig.subplots(config.num_images, len(picks), squeeze=False)
    for col, t in enumerate(picks):
        for row in range(config.num_images):
            _show_image(axes[row, col], frames[t][row])
        axes[0, col].set_title(f"t={t}", fontsize=8)
    _fit_suptitle(fig, r"progressive generation: $\hat x_0$ along the reverse chain")
    fig.tight_layout()
    return _save(fig, config.output or _default_output(config.pipeline, "progressive.png"))


# --------------------------------------------------------------------------------------------- interpolation


def _read_image(path: str, channels: int, size: int) -> torch.Tensor:
    """An image file as uint8 [1, C, H, W], which must be at the model's size."""
    import PIL.Image

    if not os.path.isfile(path):
        raise FileNotFoundError(f"image {path} not found.")
    try:
        with PIL.Image.open(path) as file:
            image = file.convert("L" if channels == 1 else "RGB")
    except PIL.UnidentifiedImageError:
        raise ValueError(f"image {path} cannot be read: it is not an image file PIL recognizes; pass a PNG or "
                         "JPEG image.") from None
    except (OSError, ValueError, SyntaxError) as error:  # a damaged or truncated image file
        raise ValueError(f"image {path} cannot be read ({' '.join(str(error).split())}): pass an intact PNG "
                         "or JPEG image.") from None
    if image.size != (size, size):
        raise ValueError(f"{path} is {image.size[0]}x{image.size[1]} but the model makes {size}x{size} images.")
    pixels = np.asarray(image)
    pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None]


def _source_images(pipe, config: InterpolationOptions):
    """The two end points as uint8 [1, C, H, W] at the model's size: image files, or dataset images by index."""
    channels = pipe.unet.config.in_channels
    size = spatial_size(pipe.unet.config)[0]
    if config.image_a is not None:
        return _read_image(config.image_a, channels, size), _read_image(config.image_b, channels, size)
    index_a, index_b = config.index_a, config.index_b
    raw = DatasetSpec(config.dataset, split=config.split).load(max(index_a, index_b) + 1)
    if max(index_a, index_b) >= len(raw):
        raise ValueError(f"image indices {index_a} and {index_b} must lie in [0, {len(raw) - 1}].")
    images = ModelImages(raw, size, channels, resize=False)
    return images[index_a][None], images[index_b][None]


def plot_interpolation(config: InterpolationOptions | object, /, **options) -> str:
    """Interpolations between two images (paper Sec. 4.4): one row per t (default T/4, T/2, 3T/4), the sources at
    the ends and `num_points` mixing weights lambda in [0, 1] between them."""
    config = configure(InterpolationOptions, config, **options)
    pipe = _load_pipeline(config.pipeline, config.device)
    T = pipe.scheduler.config.num_train_timesteps
    timesteps = config.timesteps or sorted({min(T - 1, round(f * T)) for f in (0.25, 0.5, 0.75)})
    bad = [t for t in timesteps if not 0 <= t < T]
    if bad:
        raise ValueError(f"timesteps {bad} are outside [0, {T - 1}].")
    x_a, x_b = _source_images(pipe, config)
    rows = []
    for t in timesteps:
        generator = torch.Generator(pipe.device).manual_seed(config.seed)
        rows.append(pipe.interpolate(x_a, x_b, t=t, num_points=config.num_points, generator=generator,
                                     num_inference_steps=config.num_inference_steps, output_type="np").images)
    sources = [x.permute(0, 2, 3, 1)[0].numpy() / 255 for x in (x_a, x_b)]
    num_points = config.num_points
    fig = _figure(1.1 * (num_points + 2) + 0.6, 1.2 * len(timesteps) + 0.7)
    axes = fig.subplots(len(timesteps), num_points + 2, squeeze=False)
    lambdas = np.linspace(0, 1, num_points)
    for r, (t, images) in enumerate(zip(timesteps, rows)):
        _show_image(axes[r, 0], sources[0])
        _show_image(axes[r, -1], sources[1])
        for c in range(num_points):
            _show_image(axes[r, c + 1], images[c])
            if r == 0:
                axes[r, c + 1].set_title(rf"$\lambda$={lambdas[c]:.2f}", fontsize=7)
        axes[r, 0].set_ylabel(f"t={t}", fontsize=8)
    axes[0, 0].set_title("source", fontsize=7)
    axes[0, -1].set_title("source", fontsize=7)
    _fit_suptitle(fig, "interpolation in the diffusion latent space: rows are the t of the encoding")
    fig.tight_layout()
    return _save(fig, config.output or _default_output(config.pipeline, "interpolation.png"))


# ------------------------------------------------------------------------------------ bits/dim pictures


def load_bpd_terms(path) -> dict[str, np.ndarray]:
    """The arrays of `hf-ddpm evaluate`'s bpd_terms.npz (`path` is the file or its folder)."""
    path = os.fspath(path)
    file = os.path.join(path, BPD_TERMS_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file} not found: run `hf-ddpm evaluate PIPELINE --metrics bpd` first.")
    how = "pass the bpd_terms.npz that `hf-ddpm evaluate PIPELINE --metrics bpd` wrote (or its folder)"
    data = load_npz(file, file, how)
    try:
        with data:
            arrays = {key: data[key] for key in data.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
        raise ValueError(f"{file} cannot be read (object data or a damaged file): {how}.") from None
    missing = {"terms_bpd", "x0_mse", "prior_bpd"} - set(arrays)
    if missing:
        raise ValueError(f"{file} lacks {sorted(missing)}: is it a bpd_terms.npz written by `hf-ddpm evaluate`?")
    return arrays


def rate_distortion_curves(terms: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Paper Fig. 5 from per-image terms. Index t = 0..T-1 of the results is the chain position x_t:

    - rate[t]: bits/dim sent once the receiver holds x_t: L_T + sum_{s > t} L_s (mean over images), so
      rate[0] + L_0 is the total bound;
    - distortion[t]: RMSE on the [0, 255] scale of x0_hat predicted from x_t: 127.5 sqrt(mean x0_mse[:, t]);
    - steps[t] = T - t: reverse steps taken to reach x_t.
    """
    terms_bpd, mse, prior = terms["terms_bpd"], terms["x0_mse"], terms["prior_bpd"]
    mean_terms = terms_bpd.mean(axis=0)
    T = len(mean_terms)
    after = np.concatenate([np.cumsum(mean_terms[::-1])[::-1][1:], [0.0]])  # sum_{s > t} L_s
    return {
        "steps": T - np.arange(T),
        "rate": prior.mean() + after,
        "distortion": 127.5 * np.sqrt(mse.mean(axis=0)),
        "total_bpd": np.array(prior.mean() + mean_terms.sum()),
    }


def plot_rate_distortion(config: BpdTermsOptions | str | os.PathLike, /, **options) -> str:
    """Distortion and rate against reverse steps, and distortion against rate (paper Fig. 5)."""
    config = configure(BpdTermsOptions, config, **options)
    curves = rate_distortion_curves(load_bpd_terms(config.eval_dir))
    fig = _figure(13, 4)
    ax_d, ax_r, ax_rd = fig.subplots(1, 3)
    ax_d.plot(curves["steps"], curves["distortion"])
    ax_d.set(xlabel="reverse process steps (T - t)", ylabel="distortion (RMSE [0, 255])", title="distortion")
    ax_r.plot(curves["steps"], curves["rate"])
    ax_r.set(xlabel="reverse process steps (T - t)", ylabel="rate (bits/dim)", title="rate")
    ax_rd.plot(curves["rate"], curves["distortion"])
    ax_rd.set(xlabel="rate (bits/dim)", ylabel="distortion (RMSE [0, 255])", title="rate-distortion")
    for ax in (ax_d, ax_r, ax_rd):
        ax.grid(alpha=0.3)
    fig.suptitle(f"rate-distortion (total bound {float(curves['total_bpd']):.3f} bits/dim)", fontsize=10)
    fig.tight_layout()
    return _save(fig, config.output or _default_output(config.eval_dir, "rate_distortion.png"))


def plot_bpd_terms(config: BpdTermsOptions | str | os.PathLike, /, **options) -> str:
    """The per-step terms L_t of the bound (mean over images, with the 10-90% band), log scale."""
    config = configure(BpdTermsOptions, config, **options)
    terms = load_bpd_terms(config.eval_dir)
    values = terms["terms_bpd"]
    T = values.shape[1]
    t = np.arange(T)
    mean = values.mean(axis=0)
    fig = _figure(8, 4.5)
    ax = fig.subplots()
    if len(values) > 1:
        low, high = np.percentile(values, [10, 90], axis=0)
        ax.fill_between(t, np.maximum(low, 1e-12), np.maximum(high, 1e-12), alpha=0.25, label="10-90% of images")
    ax.plot(t, np.maximum(mean, 1e-12), label=r"mean $L_t$")
    ax.scatter([0], [max(mean[0], 1e-12)], color="C3", zorder=3, label=f"$L_0$ (decoder) = {mean[0]:.3f}")
    ax.set_yscale("log")
    total = terms["prior_bpd"].mean() + mean.sum()
    ax.set(xlabel="t", ylabel="bits/dim",
           title=f"per-step terms of the bound: total {total:.3f} bits/dim, $L_T$ = {terms['prior_bpd'].mean():.2e}"
                 f" ({len(values)} images)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, config.output or _default_output(config.eval_dir, "bpd_terms.png"))
