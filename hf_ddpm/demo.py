"""The demo page of a DDPM pipeline (`hf-ddpm demo PIPELINE_OR_REPO`, and the `app.py` of a Space made by
`hf-ddpm push --with-demo`): sample with any sampler of `hf_ddpm.samplers` and a live progress bar, watch the x0
predictions sharpen along the chain (paper Fig. 6), interpolate between two images at a chosen t (paper Sec. 4.4),
and read the evaluation numbers of the model card (eval_results.json).

`DemoModel` does the work with torch and PIL only (tested without a browser); `build_demo` lays out the Gradio page
around it and `serve` runs it. Gradio is the optional extra `pip install "hf-ddpm[demo]"`, imported only here.

Image i of a click starts from `torch.Generator("cpu").manual_seed(seed + i)`, as in `hf-ddpm sample`, so the page
and the command line give the same images for the same settings. Images are shown enlarged by a whole factor
(nearest neighbour, `display_scale`) so that 28x28 samples can be seen; each pixel of the model is a block of pixels.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Callable, Sequence

import numpy as np
import PIL.Image
import torch

from .artifacts import default_device, load_pipeline, read_json
from .options import UsageError
from .samplers import SAMPLER_NAMES, check_steps, default_steps, get_sampler, make_scheduler

DEMO_INSTALL = 'pip install "hf-ddpm[demo]"'
EVAL_RESULTS_FILE = "eval_results.json"
DEFAULT_MAX_IMAGES = 16
QUICK_STEPS = 100  # the page's default step count is at most this: a click answers in seconds on a CPU
STRIP_POINTS = 8  # x0 predictions shown along the chain (the strip's columns, before the final sample)
STRIP_ROWS = 4  # samples shown in the progressive strip
MIN_DISPLAY_SIDE = 96  # images are enlarged by a whole factor to at least this many pixels a side
MIN_STRIP_SIDE = 48  # and to at least this in rows of many images (the progressive strip, interpolations)
DEFAULT_NUM_IMAGES = 9
TEMPLATES = Path(__file__).parent / "templates"
SPACE_FILES = {"app.py": "space_app.py.template", "requirements.txt": "space_requirements.txt.template"}

Report = Callable[[int, int], None]  # report(steps done, steps in all)


def require_gradio():
    """The gradio module, or a UsageError saying how to install it (one line, exit status 2)."""
    try:
        import gradio
    except ImportError:
        raise UsageError("the demo page needs gradio, which is not installed", None, DEMO_INSTALL) from None
    return gradio


# ------------------------------------------------------------------------------------------------ images
def display_scale(side: int, least: int = MIN_DISPLAY_SIDE) -> int:
    """The whole factor that enlarges a `side`-pixel image to at least `least` pixels."""
    return max(1, math.ceil(least / max(1, side)))


def enlarge(image: PIL.Image.Image, scale: int) -> PIL.Image.Image:
    return image if scale == 1 else image.resize((image.width * scale, image.height * scale), PIL.Image.NEAREST)


def grid(images: Sequence[PIL.Image.Image], columns: int, gap: int = 0) -> PIL.Image.Image:
    """Images of one size in rows of `columns`, row-major, `gap` black pixels between them."""
    width, height = images[0].size
    rows = math.ceil(len(images) / columns)
    canvas = PIL.Image.new(images[0].mode, (columns * width + (columns - 1) * gap, rows * height + (rows - 1) * gap))
    for i, image in enumerate(images):
        row, column = divmod(i, columns)
        canvas.paste(image, (column * (width + gap), row * (height + gap)))
    return canvas


def strip_timesteps(timesteps: Sequence, points: int = STRIP_POINTS) -> list:
    """`points` of a run's timesteps, evenly spread from the first (pure noise) to the last."""
    index = np.unique(np.linspace(0, len(timesteps) - 1, min(points, len(timesteps))).round().astype(int))
    return [timesteps[i] for i in index]


def _label(t) -> str:
    return f"{t:g}" if isinstance(t, float) else str(t)


# ------------------------------------------------------------------------------------------------ results
@dataclass
class Sampled:
    """One click of "Sample": the images, the progressive strip (None for samplers without x0 predictions)."""

    images: list[PIL.Image.Image]
    scheduler: str
    scheduler_class: str
    steps: int
    seed: int
    seconds: float
    strip: list[list[PIL.Image.Image]] | None = None  # rows: x0 predictions at strip_timesteps, then the sample
    strip_timesteps: list = field(default_factory=list)

    def summary(self) -> str:
        last = self.seed + len(self.images) - 1
        seeds = f"seed {self.seed}" if last == self.seed else f"seeds {self.seed}..{last}"
        return (f"{len(self.images)} image{'s' if len(self.images) > 1 else ''}, {self.scheduler} "
                f"({self.scheduler_class}), {self.steps} steps, {seeds}: {self.seconds:.1f} s")

    def strip_caption(self) -> str:
        if self.strip is None:
            return (f"{self.scheduler}'s steps do not return x0 predictions, so there is no progressive strip: pick "
                    "ddpm, ddim or euler to see it.")
        shown = ", ".join(_label(t) for t in self.strip_timesteps)
        return (f"Progressive generation (paper Fig. 6): the x0 predicted at t = {shown}, then the sample, for the "
                f"first {len(self.strip)} image{'s' if len(self.strip) > 1 else ''}.")


# ------------------------------------------------------------------------------------------------ the model
class DemoModel:
    """A loaded pipeline and what the page asks of it. Calls are serialised: one sampling at a time."""

    def __init__(self, pipeline, device: str | None = None, max_images: int = DEFAULT_MAX_IMAGES):
        self.source = pipeline if isinstance(pipeline, (str, os.PathLike)) else None
        self.pipe = load_pipeline(pipeline, device or default_device(), progress=False)
        self.pipe.set_progress_bar_config(disable=True)
        self.max_images = max_images
        self.lock = threading.Lock()
        unet = self.pipe.unet.config
        size = unet.sample_size
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.channels = unet.in_channels
        self.T = self.pipe.scheduler.config.num_train_timesteps
        self.scale = display_scale(max(self.size))
        self.strip_scale = display_scale(max(self.size), MIN_STRIP_SIDE)
        self.num_parameters = sum(p.numel() for p in self.pipe.unet.parameters())
        self.evaluation = read_evaluation(self.source) if self.source is not None else None

    # ------------------------------------------------------------------------------------ describing it
    @property
    def title(self) -> str:
        if self.source is None:
            return "DDPM"
        path = Path(self.source)
        if path.exists():
            from .hub.card import run_name

            return run_name(path)
        return str(self.source)  # a Hub repo id

    def facts(self) -> str:
        """One markdown line about the model."""
        config = self.pipe.scheduler.config
        colour = {1: "grayscale", 3: "RGB"}.get(self.channels, f"{self.channels} channels")
        return (f"{self.size[1]}x{self.size[0]} {colour} images; T = {self.T} diffusion steps, "
                f"{config.get('beta_schedule', '?')} betas, predicts {config.get('prediction_type', '?')}, "
                f"{self.num_parameters / 1e6:.2f}M parameters; device {self.pipe.device}.")

    def evaluation_markdown(self) -> str:
        """The card's evaluation numbers as a markdown table (what `hf-ddpm evaluate` wrote), or a line saying
        there are none."""
        if not self.evaluation:
            return (f"No evaluation numbers: this model has no {EVAL_RESULTS_FILE} (`hf-ddpm evaluate PIPELINE` "
                    "writes it).")
        from .hub.card import _eval_section

        try:
            _, rows, description, notes = _eval_section(self.evaluation)
        except (ValueError, KeyError, TypeError) as error:
            return f"{EVAL_RESULTS_FILE} cannot be read: {error}"
        if not rows:
            return f"{EVAL_RESULTS_FILE} holds no metric this page knows."
        lines = [description, "", "| metric | value | settings |", "| --- | --- | --- |"]
        lines += [f"| {label} | {value} | {settings} |" for label, value, settings in rows]
        lines += [""] + [f"- {note}" for note in notes]
        return "\n".join(lines).strip()

    def evaluation_line(self) -> str:
        """The evaluation numbers in one line, for the page's header ("" when there are none)."""
        if not self.evaluation:
            return ""
        from .hub.card import _eval_section

        try:
            rows = _eval_section(self.evaluation)[1]
        except (ValueError, KeyError, TypeError):
            return ""
        return ("Evaluation: " + "; ".join(f"{label} {value}" for label, value, _ in rows) + " (Evaluation tab)."
                if rows else "")

    def default_steps(self, scheduler: str) -> int:
        """The page's step count for a sampler: its usual one (hf_ddpm.samplers), at most QUICK_STEPS."""
        return min(default_steps(scheduler, self.T), QUICK_STEPS)

    def max_steps(self, scheduler: str) -> int:
        return get_sampler(scheduler).max_steps(self.T)

    # ------------------------------------------------------------------------------------ running it
    def _pipeline(self, scheduler: str, report: Report | None):
        """A pipeline sharing the loaded UNet, with a fresh `scheduler` and its steps reported to `report`."""
        from .pipeline_ddpm import DDPMPipeline

        pipe = DDPMPipeline(unet=self.pipe.unet, scheduler=make_scheduler(scheduler, self.pipe.scheduler.config))

        def progress_bar(iterable=None, total=None):
            items = list(iterable) if iterable is not None else list(range(total))
            for done, item in enumerate(items, 1):
                yield item
                if report is not None:
                    report(done, len(items))

        pipe.progress_bar = progress_bar  # the denoising loop iterates over it: one report per network call
        return pipe

    def sample(self, scheduler: str = "ddpm", steps: int | None = None, num_images: int = 4, seed: int = 0,
               report: Report | None = None, strip_rows: int = STRIP_ROWS) -> Sampled:
        """`num_images` samples, image i from torch.Generator("cpu").manual_seed(seed + i), and the x0 predictions
        along the chain for the first `strip_rows` of them."""
        get_sampler(scheduler)
        steps = int(steps) if steps else self.default_steps(scheduler)
        num_images, seed = int(num_images), int(seed)
        check_steps(scheduler, steps, self.T, option="steps")
        if not 1 <= num_images <= self.max_images:
            raise UsageError(f"{num_images} images is outside 1..{self.max_images}", "images",
                             f"ask for 1 to {self.max_images}")
        if not 0 <= seed <= 2**63 - num_images:
            raise UsageError(f"seed {seed} is outside 0..2**63", "seed", "pick a seed such as 0")
        with self.lock:
            pipe = self._pipeline(scheduler, report)
            pipe.scheduler.set_timesteps(steps)
            record = strip_timesteps(pipe.scheduler.timesteps.tolist())
            start = time.perf_counter()
            try:
                out = pipe(batch_size=num_images, generator=self._generators(seed, num_images),
                           num_inference_steps=steps, record_timesteps=record)
            except ValueError as error:  # a sampler whose step returns no x0 (DPM-Solver, UniPC): no strip
                if "record_timesteps needs" not in str(error):
                    raise
                record = []
                out = pipe(batch_size=num_images, generator=self._generators(seed, num_images),
                           num_inference_steps=steps)
            seconds = time.perf_counter() - start
        result = Sampled(list(out.images), scheduler, type(pipe.scheduler).__name__, steps, seed, seconds)
        if record:
            rows = min(strip_rows, num_images)
            result.strip = [[out.pred_original_samples[t][i] for t in record] + [out.images[i]] for i in range(rows)]
            result.strip_timesteps = record
        return result

    def interpolate(self, image_a, image_b, t: int, num_points: int = 7, steps: int | None = None, seed: int = 0,
                    report: Report | None = None) -> list[PIL.Image.Image]:
        """[image a, the num_points mixes of lambda = 0..1 decoded from t, image b] (paper Sec. 4.4, Fig. 8), with
        both images first made the model's size and channels; `steps` respaces the chain from t (None: all t + 1)."""
        if image_a is None or image_b is None:
            raise UsageError("interpolation needs two images", "image A, image B",
                             "upload two images, or sample and use the first two samples")
        a, b = self.prepare(image_a), self.prepare(image_b)
        t, num_points = int(t), int(num_points)
        if not 0 <= t < self.T:
            raise UsageError(f"t = {t} is outside 0..{self.T - 1}", "t", f"pick t in 0..{self.T - 1}")
        with self.lock:
            pipe = self._pipeline("ddpm", report)
            generator = torch.Generator("cpu").manual_seed(int(seed))
            out = pipe.interpolate(a, b, t=t, num_points=num_points, generator=generator,
                                   num_inference_steps=int(steps) if steps else None)
        return [a, *out.images, b]

    def prepare(self, image) -> PIL.Image.Image:
        """An uploaded image as the model takes it: its channels, centre-cropped to its aspect, resized to its size
        (area averaging when shrinking, so an image enlarged by this page comes back exactly)."""
        if isinstance(image, np.ndarray):
            image = PIL.Image.fromarray(image.astype(np.uint8) if image.dtype != np.uint8 else image)
        if not isinstance(image, PIL.Image.Image):
            raise UsageError(f"not an image: {type(image).__name__}", "image", "upload a PNG or JPEG image")
        image = image.convert("L" if self.channels == 1 else "RGB")
        height, width = self.size
        scale = min(image.width / width, image.height / height)
        crop_w, crop_h = round(width * scale), round(height * scale)
        left, top = (image.width - crop_w) // 2, (image.height - crop_h) // 2
        image = image.crop((left, top, left + crop_w, top + crop_h))
        if image.size == (width, height):
            return image
        shrinking = image.width > width
        return image.resize((width, height), PIL.Image.BOX if shrinking else PIL.Image.BICUBIC)

    @staticmethod
    def _generators(seed: int, count: int) -> list[torch.Generator]:
        return [torch.Generator("cpu").manual_seed(seed + i) for i in range(count)]

    # ------------------------------------------------------------------------------------ for display
    def show(self, images: Sequence[PIL.Image.Image]) -> PIL.Image.Image:
        """Images as one enlarged grid, the squarest."""
        columns = math.ceil(math.sqrt(len(images)))
        return enlarge(grid(images, min(columns, len(images)), gap=0), self.scale)

    def show_strip(self, rows: list[list[PIL.Image.Image]]) -> PIL.Image.Image:
        """Rows of images (the progressive strip, an interpolation), enlarged less, 1-pixel gaps between them."""
        return enlarge(grid([image for row in rows for image in row], len(rows[0]), gap=1), self.strip_scale)


def read_evaluation(source) -> dict | None:
    """eval_results.json of a pipeline folder, or of a Hub repo (downloaded, or from the cache offline); None when
    there is none or it cannot be had."""
    path = Path(source)
    if path.is_dir():
        file = path / EVAL_RESULTS_FILE
        if not file.is_file():
            return None
        try:
            return read_json(file)
        except ValueError:
            return None
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(str(source), EVAL_RESULTS_FILE)).read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - not there, offline, private: the page says there are no numbers
        return None


# ------------------------------------------------------------------------------------------------ the page
def build_demo(model: DemoModel | str | os.PathLike, device: str | None = None, max_images: int = DEFAULT_MAX_IMAGES):
    """The Gradio page (a `gradio.Blocks`) for `model`: a DemoModel, a pipeline folder or a Hub repo id."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    gr = require_gradio()
    if not isinstance(model, DemoModel):
        model = DemoModel(model, device=device, max_images=max_images)
    first = "ddpm"

    def user_error(error: Exception):
        return gr.Error(" ".join(str(error).split()))

    def on_scheduler(name):
        return gr.Slider(maximum=model.max_steps(name), value=model.default_steps(name))

    def on_sample(scheduler, steps, num_images, seed, progress=gr.Progress()):
        progress(0, desc=f"{scheduler}: {int(steps)} steps")

        def report(done, total):
            progress((done, total), desc=f"{scheduler} sampling", unit="steps")

        try:
            result = model.sample(scheduler, steps, num_images, seed if seed is not None else 0, report)
        except ValueError as error:
            raise user_error(error) from None
        strip = model.show_strip(result.strip) if result.strip else None
        return model.show(result.images), strip, result.strip_caption(), result.summary(), result.images

    def on_use_samples(images):
        if not images or len(images) < 2:
            raise gr.Error("Sample at least two images first (Sample tab).")
        return enlarge(images[0], model.scale), enlarge(images[1], model.scale)

    def on_interpolate(image_a, image_b, t, num_points, steps, seed, progress=gr.Progress()):
        progress(0, desc="interpolating")

        def report(done, total):
            progress((done, total), desc=f"decoding from t = {int(t)}", unit="steps")

        try:
            images = model.interpolate(image_a, image_b, t, num_points, steps, seed if seed is not None else 0, report)
        except ValueError as error:
            raise user_error(error) from None
        return model.show_strip([images]), (
            f"Left to right: image A, the mixes for lambda = 0 to 1 of both images encoded to x_t at t = {int(t)} "
            f"and decoded by the reverse chain ({int(steps) or int(t) + 1} steps), image B.")

    with gr.Blocks(title=f"{model.title} - hf-ddpm demo", analytics_enabled=False) as demo:
        gr.Markdown(f"# {model.title}\nA denoising diffusion probabilistic model (Ho et al. 2020) served by "
                    f"hf-ddpm. {model.facts()} {model.evaluation_line()}", elem_id="title")
        with gr.Tab("Sample", id="sample"):
            with gr.Row():
                with gr.Column(scale=1, min_width=240):
                    scheduler = gr.Dropdown(list(SAMPLER_NAMES), value=first, label="scheduler",
                                            info="hf_ddpm.samplers; ddpm with fewer steps than T: respaced chain",
                                            elem_id="scheduler")
                    steps = gr.Slider(1, model.max_steps(first), value=model.default_steps(first), step=1,
                                      label="steps", info="network evaluations per image", elem_id="steps")
                    num_images = gr.Slider(1, model.max_images, value=min(DEFAULT_NUM_IMAGES, model.max_images),
                                           step=1, label="images", elem_id="num-images")
                    seed = gr.Number(0, label="seed", info="image i starts from seed + i (as `hf-ddpm sample`)",
                                     precision=0, minimum=0, elem_id="seed")
                    sample_button = gr.Button("Sample", variant="primary", elem_id="sample-button")
                with gr.Column(scale=3):
                    samples = gr.Image(label="samples", type="pil", format="png", interactive=False,
                                       elem_id="samples")
                    summary = gr.Markdown(elem_id="sample-summary")
                    strip = gr.Image(label="progressive generation: x0 along the chain", type="pil", format="png",
                                     interactive=False, elem_id="progressive")
                    strip_caption = gr.Markdown(elem_id="progressive-caption")
        last_samples = gr.State([])
        with gr.Tab("Interpolate", id="interpolate"):
            gr.Markdown("Interpolation in latent space (paper Sec. 4.4): both images are encoded with q to x_t, "
                        "mixed, and decoded by the reverse chain. Larger t: the model's own content takes over.")
            with gr.Row():
                image_a = gr.Image(label="image A", type="pil", sources=["upload", "clipboard"], elem_id="image-a")
                image_b = gr.Image(label="image B", type="pil", sources=["upload", "clipboard"], elem_id="image-b")
            use_samples = gr.Button("Use the first two samples", elem_id="use-samples")
            with gr.Row():
                t = gr.Slider(0, model.T - 1, value=model.T // 2, step=1, label="t", info="the diffusion step to "
                              "mix at", elem_id="t")
                num_points = gr.Slider(3, 11, value=7, step=1, label="mixes", info="lambdas from 0 to 1",
                                       elem_id="num-points")
                chain_steps = gr.Slider(0, model.T, value=0 if model.T <= 200 else QUICK_STEPS, step=1,
                                        label="steps from t", info="0: all t + 1 (the paper); fewer: respaced",
                                        elem_id="chain-steps")
                interpolation_seed = gr.Number(0, label="seed", precision=0, minimum=0, elem_id="interpolation-seed")
            interpolate_button = gr.Button("Interpolate", variant="primary", elem_id="interpolate-button")
            mixes = gr.Image(label="interpolation", type="pil", format="png", interactive=False,
                             elem_id="interpolation")
            mixes_caption = gr.Markdown(elem_id="interpolation-caption")
        with gr.Tab("Evaluation", id="evaluation"):
            gr.Markdown(model.evaluation_markdown(), elem_id="evaluation")

        scheduler.change(on_scheduler, scheduler, steps)
        sample_button.click(on_sample, [scheduler, steps, num_images, seed],
                            [samples, strip, strip_caption, summary, last_samples])
        use_samples.click(on_use_samples, last_samples, [image_a, image_b])
        interpolate_button.click(on_interpolate, [image_a, image_b, t, num_points, chain_steps, interpolation_seed],
                                 [mixes, mixes_caption])
    demo.queue(default_concurrency_limit=1)
    return demo


def serve(demo, host: str = "127.0.0.1", port: int | None = None, share: bool = False,
          stop_after: float | None = None) -> str:
    """Serve the page until Ctrl+C (or for `stop_after` seconds); returns the local URL it was served at."""
    _, url, share_url = demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=True,
                                    quiet=True, show_error=True, ssr_mode=False, inbrowser=False)
    print(f"hf-ddpm demo: serving at {url}" + (f" and {share_url}" if share_url else "")
          + (f" for {stop_after:g} s" if stop_after else " (Ctrl+C stops it)"), flush=True)
    deadline = time.monotonic() + stop_after if stop_after else math.inf
    try:
        while time.monotonic() < deadline:
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()
    return url


# ------------------------------------------------------------------------------------------------ a Space
def space_files(repo_id: str) -> dict[str, bytes]:
    """app.py and requirements.txt for a Gradio Space that serves this page for the Hub repo `repo_id`, from the
    package's templates (hf_ddpm/templates/)."""
    from . import __version__

    values = {"repo_id": repo_id, "version": __version__}
    return {name: Template((TEMPLATES / template).read_text(encoding="utf-8")).substitute(values).encode()
            for name, template in SPACE_FILES.items()}
