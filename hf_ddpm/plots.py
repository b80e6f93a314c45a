"""`hf-ddpm plot ...`: the pictures by which a DDPM is judged, one command (and one function) each, as PNG files.

- ``schedule``: abar_t and the signal-to-noise ratio abar_t / (1 - abar_t) of one or more noise schedules.
- ``loss``: a scalar (default ``train/loss``) from TensorBoard event files, raw and smoothed.
- ``progressive``: x0 predictions along the reverse chain (paper Fig. 6).
- ``interpolation``: interpolation through the diffusion latent space at several t (paper Sec. 4.4, Figs. 8-9).
- ``rate-distortion``: cumulative rate vs RMSE of x0 predictions on [0, 255] (paper Fig. 5), from `hf-ddpm evaluate`'s
  bpd_terms.npz.
- ``bpd-terms``: the per-step terms L_t of the bound in bits/dim, from the same file.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, no display, no global backend change).
"""

from __future__ import annotations

import os
import zipfile
from typing import Sequence

import numpy as np
import torch

DPI = 100
PASS_LOGS = "pass the TensorBoard log folder of a training run (train.py writes it to OUTPUT_DIR/logs)"


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI)


def _check_output(output: str | None) -> None:
    """Refuse an --output whose folder does not exist before any work (the folder is not created: a typo in it
    would otherwise scatter pictures)."""
    if output is None:
        return
    directory = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"output folder {directory} does not exist: create it, or choose another --output.")
    if os.path.isdir(output):
        raise IsADirectoryError(f"--output {output} is a folder: give a file path such as {output}/picture.png.")


def _save(fig, output: str) -> str:
    _check_output(output)
    fig.savefig(output, dpi=DPI)
    return output


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
    from .evaluation import load_pipeline

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_pipeline(pipeline, device)
    pipe.set_progress_bar_config(leave=False)
    return pipe


def _default_output(folder, name: str) -> str:
    return os.path.join(str(folder), name) if folder is not None and os.path.isdir(str(folder)) else name


# ------------------------------------------------------------------------------------------------ schedule


def schedule_curves(schedules: Sequence[str] = ("linear",), num_train_timesteps: int = 1000, beta_start: float = 1e-4,
                    beta_end: float = 0.02, pipeline=None) -> dict[str, np.ndarray]:
    """{label: abar_t (float64, t = 0..T-1)} for each named schedule, and for a pipeline's scheduler if given."""
    from .scheduling_ddpm import DDPMScheduler

    curves = {}
    if pipeline is not None:
        pipe = _load_pipeline(pipeline, "cpu")
        config = pipe.scheduler.config
        curves[f"pipeline ({config.beta_schedule}, T={config.num_train_timesteps})"] = (
            pipe.scheduler.diffusion.tables["alphas_cumprod"].numpy())
    for name in schedules:
        scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                                  beta_schedule=name)
        curves[f"{name} (T={num_train_timesteps})"] = scheduler.diffusion.tables["alphas_cumprod"].numpy()
    if not curves:
        raise ValueError("no schedule to plot: name at least one schedule or give a pipeline.")
    return curves


def plot_schedule(schedules: Sequence[str] = ("linear",), num_train_timesteps: int = 1000, beta_start: float = 1e-4,
                  beta_end: float = 0.02, pipeline=None, output: str = "schedule.png") -> str:
    """abar_t and log10 SNR_t against t / T for each schedule (and the pipeline's own, if given)."""
    _check_output(output)
    curves = schedule_curves(schedules, num_train_timesteps, beta_start, beta_end, pipeline)
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
    return _save(fig, output)


# ---------------------------------------------------------------------------------------------------- loss


def read_scalars(logdir: str, tag: str = "train/loss") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{run: (steps, values)} of scalar `tag` in every folder under `logdir` that holds TensorBoard event files."""
    from tensorboard.backend.event_processing import event_accumulator

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
    """TensorBoard's smoothing: an exponential moving average, debiased for its zero start."""
    if not 0 <= weight < 1:
        raise ValueError(f"smoothing must lie in [0, 1), got {weight}.")
    out, last = np.empty_like(values), 0.0
    for i, value in enumerate(values):
        last = last * weight + (1 - weight) * value
        out[i] = last / (1 - weight ** (i + 1))
    return out


def plot_loss(logdir: str, tag: str = "train/loss", output: str | None = None, smoothing: float = 0.9,
              log_scale: bool | None = None) -> str:
    """The training curve of `tag` (each run under `logdir`): raw values faint, smoothed on top."""
    _check_output(output)
    runs = read_scalars(logdir, tag)
    smooth(np.zeros(1), smoothing)  # validates smoothing before drawing
    fig = _figure(8, 4.5)
    ax = fig.subplots()
    for k, (run, (steps, values)) in enumerate(runs.items()):
        color = f"C{k}"
        label = tag if run == "." else f"{run}"
        ax.plot(steps, values, color=color, alpha=0.3, linewidth=0.8)
        ax.plot(steps, smooth(values, smoothing), color=color, label=f"{label} (smoothed {smoothing})")
    positive = all((values > 0).all() for _, values in runs.values())
    if log_scale if log_scale is not None else positive:
        ax.set_yscale("log")
    ax.set(xlabel="step", ylabel=tag, title=f"{tag} ({os.path.basename(os.path.normpath(logdir))})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, output or _default_output(logdir, "loss.png"))


# ------------------------------------------------------------------------------------ progressive generation


def plot_progressive(pipeline, output: str | None = None, num_images: int = 4, num_frames: int = 10,
                     num_inference_steps: int | None = None, seed: int = 0, device: str | None = None) -> str:
    """x0 predictions at `num_frames` evenly spaced timesteps of the reverse chain (paper Fig. 6); one row per
    sample, left (t = T-1, pure noise) to right (t = 0, the sample)."""
    if num_images < 1 or num_frames < 2:
        raise ValueError(f"need num_images >= 1 and num_frames >= 2, got {num_images} and {num_frames}.")
    _check_output(output)
    pipe = _load_pipeline(pipeline, device)
    T = pipe.scheduler.config.num_train_timesteps
    pipe.scheduler.set_timesteps(num_inference_steps or T)
    chain = pipe.scheduler.timesteps.tolist()
    picks = sorted({chain[i] for i in np.linspace(0, len(chain) - 1, num_frames).round().astype(int)}, reverse=True)
    generator = torch.Generator(pipe.device).manual_seed(seed)
    out = pipe(batch_size=num_images, generator=generator, num_inference_steps=num_inference_steps or T,
               output_type="np", record_timesteps=picks)
    frames = out.pred_original_samples
    fig = _figure(1.2 * len(picks) + 0.6, 1.2 * num_images + 0.6)
    axes = np.atleast_2d(fig.subplots(num_images, len(picks), squeeze=False))
    for col, t in enumerate(picks):
        for row in range(num_images):
            _show_image(axes[row, col], frames[t][row])
        axes[0, col].set_title(f"t={t}", fontsize=8)
    fig.suptitle(r"progressive generation: $\hat x_0$ along the reverse chain", fontsize=10)
    fig.tight_layout()
    return _save(fig, output or _default_output(pipeline if isinstance(pipeline, str) else None, "progressive.png"))


# --------------------------------------------------------------------------------------------- interpolation


def _source_images(pipe, image_a, image_b, dataset, split, index_a, index_b):
    """The two end points as uint8 [1, C, H, W] at the model's size: image files, or dataset images by index."""
    import PIL.Image

    channels = pipe.unet.config.in_channels
    size = pipe.unet.config.sample_size
    size = size if isinstance(size, int) else size[0]
    if (image_a is None) != (image_b is None):
        raise ValueError("give both image_a and image_b, or neither (then dataset images are used).")
    if image_a is not None:
        out = []
        for path in (image_a, image_b):
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
            out.append(torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None])
        return out
    from .evaluation import DatasetSpec, _ModelImages

    spec = DatasetSpec(dataset, split=split)
    raw = spec.load(max(index_a, index_b) + 1)
    if max(index_a, index_b) >= len(raw) or min(index_a, index_b) < 0:
        raise ValueError(f"image indices {index_a} and {index_b} must lie in [0, {len(raw) - 1}].")
    images = _ModelImages(raw, size, channels, resize=False)
    return images[index_a][None], images[index_b][None]


def plot_interpolation(pipeline, output: str | None = None, image_a: str | None = None, image_b: str | None = None,
                       dataset: str = "fashion_mnist", split: str | None = None, index_a: int = 0, index_b: int = 1,
                       timesteps: Sequence[int] | None = None, num_points: int = 9,
                       num_inference_steps: int | None = None, seed: int = 0, device: str | None = None) -> str:
    """Interpolations between two images (paper Sec. 4.4): one row per t (default T/4, T/2, 3T/4), the sources at
    the ends and `num_points` mixing weights lambda in [0, 1] between them."""
    _check_output(output)
    pipe = _load_pipeline(pipeline, device)
    T = pipe.scheduler.config.num_train_timesteps
    timesteps = list(timesteps) if timesteps else sorted({min(T - 1, round(f * T)) for f in (0.25, 0.5, 0.75)})
    bad = [t for t in timesteps if not 0 <= t < T]
    if bad:
        raise ValueError(f"timesteps {bad} are outside [0, {T - 1}].")
    x_a, x_b = _source_images(pipe, image_a, image_b, dataset, split, index_a, index_b)
    rows = []
    for t in timesteps:
        generator = torch.Generator(pipe.device).manual_seed(seed)
        rows.append(pipe.interpolate(x_a, x_b, t=t, num_points=num_points, generator=generator,
                                     num_inference_steps=num_inference_steps, output_type="np").images)
    sources = [x.permute(0, 2, 3, 1)[0].numpy() / 255 for x in (x_a, x_b)]
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
    fig.suptitle("interpolation in the diffusion latent space (rows: t of the encoding)", fontsize=10)
    fig.tight_layout()
    return _save(fig, output or _default_output(pipeline if isinstance(pipeline, str) else None, "interpolation.png"))


# ------------------------------------------------------------------------------------ bits/dim pictures


def load_bpd_terms(path: str) -> dict[str, np.ndarray]:
    """The arrays of `hf-ddpm evaluate`'s bpd_terms.npz (`path` is the file or its folder)."""
    from .evaluation import BPD_TERMS_FILE, load_npz

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


def plot_rate_distortion(eval_dir: str, output: str | None = None) -> str:
    """Distortion and rate against reverse steps, and distortion against rate (paper Fig. 5)."""
    _check_output(output)
    curves = rate_distortion_curves(load_bpd_terms(eval_dir))
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
    return _save(fig, output or _default_output(eval_dir, "rate_distortion.png"))


def plot_bpd_terms(eval_dir: str, output: str | None = None) -> str:
    """The per-step terms L_t of the bound (mean over images, with the 10-90% band), log scale."""
    _check_output(output)
    terms = load_bpd_terms(eval_dir)
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
    return _save(fig, output or _default_output(eval_dir, "bpd_terms.png"))


# ----------------------------------------------------------------------------------------------------- CLI


def register_cli(subparsers) -> None:
    from .schedules import SCHEDULES

    parser = subparsers.add_parser("plot", help="pictures: schedule, loss, progressive, interpolation, "
                                                "rate-distortion, bpd-terms (PNG)",
                                   description="Draw one picture as a PNG file.")
    plots = parser.add_subparsers(dest="plot", required=True, metavar="PICTURE")

    p = plots.add_parser("schedule", help="abar_t and SNR of noise schedules")
    p.add_argument("--beta-schedule", nargs="+", default=None, choices=SCHEDULES, metavar="NAME",
                   help=f"schedules to draw (default: linear, or none with --pipeline); from {', '.join(SCHEDULES)}")
    p.add_argument("--num-train-timesteps", type=int, default=1000)
    p.add_argument("--beta-start", type=float, default=1e-4)
    p.add_argument("--beta-end", type=float, default=0.02)
    p.add_argument("--pipeline", default=None, help="also draw this saved pipeline's schedule")
    p.add_argument("--output", default="schedule.png")
    p.set_defaults(run=lambda a: _done(plot_schedule(
        a.beta_schedule if a.beta_schedule is not None else ([] if a.pipeline else ["linear"]),
        a.num_train_timesteps, a.beta_start, a.beta_end, a.pipeline, a.output)))

    p = plots.add_parser("loss", help="a training scalar from TensorBoard logs")
    p.add_argument("logdir", help="folder with TensorBoard event files (searched recursively)")
    p.add_argument("--tag", default="train/loss", help="scalar tag (default: %(default)s)")
    p.add_argument("--smoothing", type=float, default=0.9, help="TensorBoard-style EMA weight in [0, 1)")
    p.add_argument("--output", default=None, help="PNG path (default: LOGDIR/loss.png)")
    p.set_defaults(run=lambda a: _done(plot_loss(a.logdir, a.tag, a.output, a.smoothing)))

    p = plots.add_parser("progressive", help="x0 predictions along the reverse chain (paper Fig. 6)")
    p.add_argument("pipeline", help="saved pipeline folder")
    p.add_argument("--num-images", type=int, default=4)
    p.add_argument("--num-frames", type=int, default=10)
    p.add_argument("--num-inference-steps", type=int, default=None, help="sampling steps (default: all T)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--output", default=None, help="PNG path (default: PIPELINE/progressive.png)")
    p.set_defaults(run=lambda a: _done(plot_progressive(a.pipeline, a.output, a.num_images, a.num_frames,
                                                        a.num_inference_steps, a.seed, a.device)))

    p = plots.add_parser("interpolation", help="latent-space interpolation between two images (paper Sec. 4.4)")
    p.add_argument("pipeline", help="saved pipeline folder")
    p.add_argument("--image-a", default=None, help="image file (else dataset image --index-a)")
    p.add_argument("--image-b", default=None)
    p.add_argument("--dataset", default="fashion_mnist", help="where the end points come from without image files")
    p.add_argument("--split", default=None)
    p.add_argument("--index-a", type=int, default=0)
    p.add_argument("--index-b", type=int, default=1)
    p.add_argument("--t", type=int, nargs="+", default=None, dest="timesteps",
                   help="timesteps of the encoding, one row each (default: T/4, T/2, 3T/4)")
    p.add_argument("--num-points", type=int, default=9, help="mixing weights between the end points")
    p.add_argument("--num-inference-steps", type=int, default=None, help="decoding steps (default: all t)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--output", default=None, help="PNG path (default: PIPELINE/interpolation.png)")
    p.set_defaults(run=lambda a: _done(plot_interpolation(
        a.pipeline, a.output, a.image_a, a.image_b, a.dataset, a.split, a.index_a, a.index_b, a.timesteps,
        a.num_points, a.num_inference_steps, a.seed, a.device)))

    for name, function, picture in (("rate-distortion", plot_rate_distortion, "rate_distortion.png"),
                                    ("bpd-terms", plot_bpd_terms, "bpd_terms.png")):
        what = "cumulative rate vs RMSE of x0 predictions (paper Fig. 5)" if function is plot_rate_distortion \
            else "per-step bits/dim terms of the bound"
        p = plots.add_parser(name, help=what)
        p.add_argument("eval_dir", help="folder with bpd_terms.npz from `hf-ddpm evaluate` (or the file)")
        p.add_argument("--output", default=None, help=f"PNG path (default: EVAL_DIR/{picture})")
        p.set_defaults(run=lambda a, f=function: _done(f(a.eval_dir, a.output)))


def _done(path: str) -> int:
    print(path)
    return 0
