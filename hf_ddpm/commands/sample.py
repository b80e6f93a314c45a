"""`hf-ddpm sample`: images from a saved pipeline with any sampler of `hf_ddpm.samplers` (DDPM, DDIM, DPM-Solver++,
UniPC, Euler...), as a grid PNG and/or one PNG per image, each output with a JSON of the settings beside it.

Image i starts from `torch.Generator("cpu").manual_seed(seed + i)` and draws all of its noise from that generator,
so an image depends on (seed, i, sampler, steps) only, not on the batch size: `sample_images` is the same as
`pipe(batch_size=N, generator=[torch.Generator().manual_seed(seed + i) for i in range(N)])`.
Nothing that exists is overwritten unless `--overwrite` is given, and then only the files this command writes.
`--compile` runs the UNet through torch.compile (CUDA graphs on a GPU with the default `--compile-mode`).
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..artifacts import check_pipeline_path, default_device, load_pipeline
from ..options import SWITCH, UsageError, check_device, flag, is_set, option
from ..samplers import SAMPLER_NAMES, SAMPLERS, check_steps, default_steps, get_sampler, make_scheduler
from . import Command

SETTINGS_FILE = "settings.json"  # in --output-dir
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed's largest seed
# torch.compile's modes; reduce-overhead (CUDA graphs) first: sampling repeats one UNet call of a fixed shape
COMPILE_MODES = ("reduce-overhead", "default", "max-autotune", "max-autotune-no-cudagraphs")


def _flag(name: str) -> str:
    """The spelling the help shows (--output-dir), for messages about options the user typed that way."""
    return flag(name).replace("_", "-")


def check_pipeline(pipeline) -> None:
    check_pipeline_path(os.fspath(pipeline))


def check_seed(seed: int) -> None:
    if not 0 <= seed <= MAX_SEED:
        raise UsageError(f"--seed {seed} is outside [0, 2**64 - 1]", "--seed", "pass a seed such as 0")


def check_png_path(output) -> None:
    """--output: a .png path in an existing folder, not a folder itself."""
    if output is None:
        return
    output = os.fspath(output)
    if os.path.isdir(output):
        raise UsageError(f"--output {output} is a folder", "--output",
                         f"give a file path such as {os.path.join(output, 'grid.png')}, or use --output-dir")
    if not output.lower().endswith(".png"):
        raise UsageError(f"--output {output} is not a .png file name", "--output",
                         f"give a PNG path such as {os.path.splitext(output)[0] or 'grid'}.png")
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise UsageError(f"output folder {folder} does not exist", "--output", "create it, or choose another --output")


def settings_path(output: str | os.PathLike) -> Path:
    """Where the settings of a grid go: beside it, with the same name and .json."""
    return Path(output).with_suffix(".json")


def image_names(num_images: int) -> list[str]:
    width = max(5, len(str(num_images - 1)))
    return [f"{i:0{width}d}.png" for i in range(num_images)]


@dataclass
class SampleConfig:
    """What `hf-ddpm sample` does."""

    pipeline: str = option(help="saved pipeline folder (or a Hub id, online)", positional=True, check=check_pipeline)
    # -------------------------------------------------------------------------------------------- sampling
    num_images: int = option(16, "images to generate", group="sampling", range="[1, inf)")
    scheduler: str = option(
        "ddpm", "sampler: " + "; ".join(f"{s.name}: {s.description}" for s in SAMPLERS.values()),
        group="sampling", choices=SAMPLER_NAMES)
    steps: int | None = option(
        None, "denoising steps, i.e. network evaluations per image (default: all T for ddpm, 50 for the others); "
              "ddpm with fewer than T samples the respaced chain; at most T (T - 1 for dpmsolver++ and unipc)",
        group="sampling", range="[1, inf)")
    eta: float | None = option(
        None, "DDIM's noise level, 0 deterministic (its default) to 1 (DDPM-like); only for schedulers whose step "
              "takes it (ddim)", group="sampling", range="[0, 1]")
    seed: int = option(0, "image i starts from torch.Generator('cpu').manual_seed(seed + i), whatever the batch size",
                       group="sampling", check=check_seed)
    batch_size: int = option(16, "images per network call", group="sampling", range="[1, inf)")
    device: str | None = option(None, "cpu, cuda, cuda:N, mps ... (default: cuda when available)", group="sampling",
                                check=check_device)
    compile: bool = option(False, "torch.compile the UNet for the batch shape: faster steps after a compilation of "
                                  "a minute or so, the same images up to float rounding (needs a C++ compiler, and "
                                  "Triton on a GPU)", group="sampling", free=SWITCH)
    compile_mode: str = option("reduce-overhead", "torch.compile mode for --compile; reduce-overhead adds CUDA graphs "
                                                  "on a GPU (elsewhere it is the default mode)",
                               group="sampling", choices=COMPILE_MODES)
    # --------------------------------------------------------------------------------------------- outputs
    output: str | None = option(None, "grid PNG of all images; the settings go beside it (NAME.json)",
                                group="outputs", check=check_png_path)
    output_dir: str | None = option(
        None, f"folder for one PNG per image (00000.png, ...) and {SETTINGS_FILE}; created if missing",
        group="outputs", free="validate(): not a file, and empty unless --overwrite")
    grid_columns: int | None = option(None, "columns of the grid (default: ceil(sqrt(num_images)))", group="outputs",
                                      range="[1, inf)")
    overwrite: bool = option(False, "replace output files that exist (only the files this command writes; nothing "
                                    "else is deleted)", group="outputs", free=SWITCH)
    quiet: bool = option(False, "no progress bar", group="outputs", free=SWITCH)

    def validate(self) -> None:
        """Checks between options, before anything is loaded or written."""
        if self.output is None and self.output_dir is None:
            raise UsageError("nothing to write", "--output, --output-dir",
                             "pass --output grid.png, --output-dir DIR, or both")
        sampler = get_sampler(self.scheduler)
        if self.eta is not None and not sampler.takes_eta:
            takes = [s.name for s in SAMPLERS.values() if s.takes_eta]
            raise UsageError(f"--eta has no meaning for --scheduler {self.scheduler} (its step takes no eta)", "--eta",
                             f"drop --eta, or use --scheduler {' or '.join(takes)}")
        if self.seed + self.num_images - 1 > MAX_SEED:
            raise UsageError(f"--seed {self.seed} + --num-images {self.num_images} runs past 2**64 - 1", "--seed",
                             "pass a smaller seed")
        if is_set(self, "compile_mode") and not self.compile:
            raise UsageError("--compile-mode has no effect without --compile", "--compile-mode",
                             "add --compile, or drop --compile-mode")
        if self.grid_columns is not None and self.output is None:
            raise UsageError("--grid-columns has no grid to shape", "--grid-columns",
                             "add --output grid.png, or drop it")
        T = self.num_train_timesteps()
        if T is not None and self.steps is not None:
            check_steps(self.scheduler, self.steps, T)
        self.check_outputs()

    def num_train_timesteps(self) -> int | None:
        """T of a local pipeline folder (None for a Hub id: known once loaded)."""
        config_path = Path(self.pipeline) / "scheduler" / "scheduler_config.json"
        if not config_path.is_file():
            return None
        from ..artifacts import read_json

        config = read_json(config_path)
        if not isinstance(config, dict):
            raise UsageError(f"{config_path} does not hold a scheduler config", "PIPELINE",
                             "save the pipeline again with pipeline.save_pretrained(folder)")
        return int(config.get("num_train_timesteps", 1000))

    def check_outputs(self) -> None:
        """Refuse to replace anything that exists, unless --overwrite (then only the files written here)."""
        if self.output is not None:
            for path in (Path(self.output), settings_path(self.output)):
                if path.exists() and (path.is_dir() or not self.overwrite):
                    raise UsageError(f"{path} already exists", "--output",
                                     "choose another --output, or pass --overwrite to replace it")
        if self.output_dir is not None:
            folder = Path(self.output_dir)
            if folder.exists() and not folder.is_dir():
                raise UsageError(f"--output-dir {folder} is a file", "--output-dir", "give a folder path")
            if not folder.exists():
                if not folder.resolve().parent.is_dir():
                    raise UsageError(f"the folder above --output-dir {folder} does not exist", "--output-dir",
                                     "create it, or choose another --output-dir")
                return
            present = sorted(p.name for p in folder.iterdir())
            if present and not self.overwrite:
                raise UsageError(f"--output-dir {folder} already holds {len(present)} entries (e.g. {present[0]})",
                                 "--output-dir", "choose an empty or new folder, or pass --overwrite to replace the "
                                                 "images and settings.json (other files are kept)")
            ours = set(image_names(self.num_images)) | {SETTINGS_FILE}
            folders = [name for name in present if name in ours and (folder / name).is_dir()]
            if folders:
                raise UsageError(f"--output-dir {folder}/{folders[0]} is a folder", "--output-dir",
                                 "choose another --output-dir")


# ------------------------------------------------------------------------------------------------ sampling
def sample_images(pipe, num_images: int, num_inference_steps: int, seed: int = 0, batch_size: int = 16,
                  eta: float | None = None, progress: bool = True) -> list:
    """`num_images` PIL images from `pipe` with its current scheduler, image i from
    torch.Generator("cpu").manual_seed(seed + i), `batch_size` at a time, with a progress bar over images."""
    import torch
    from tqdm.auto import tqdm

    images = []
    with tqdm(total=num_images, unit="img", desc=f"sampling {num_inference_steps} steps", disable=not progress) as bar:
        for start in range(0, num_images, batch_size):
            count = min(batch_size, num_images - start)
            generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(start, start + count)]
            out = pipe(batch_size=count, generator=generators, num_inference_steps=num_inference_steps, eta=eta,
                       output_type="pil")
            images.extend(out.images)
            bar.update(count)
    return images


def grid_of(images: list, columns: int | None = None):
    """All images in one grid (diffusers.utils.make_image_grid), row-major, the last row padded with black."""
    import PIL.Image
    from diffusers.utils import make_image_grid

    columns = min(columns or math.ceil(math.sqrt(len(images))), len(images))
    rows = math.ceil(len(images) / columns)
    blank = PIL.Image.new(images[0].mode, images[0].size)
    return make_image_grid(list(images) + [blank] * (rows * columns - len(images)), rows, columns)


def _write(path: Path, data: bytes, overwrite: bool) -> None:
    """Write `data` to `path`; without `overwrite` only if it does not exist (checked by the open itself)."""
    with open(path, "wb" if overwrite else "xb") as f:
        f.write(data)


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def run(config: SampleConfig) -> int:
    import diffusers
    import torch

    from .. import __version__

    device = config.device or default_device()
    pipe = load_pipeline(config.pipeline, device, progress=not config.quiet)
    T = pipe.scheduler.config.num_train_timesteps
    steps = config.steps or default_steps(config.scheduler, T)
    check_steps(config.scheduler, steps, T)  # again: a Hub pipeline's T is known only now
    pipe.scheduler = make_scheduler(config.scheduler, pipe.scheduler.config)
    if config.compile:  # static shapes: at most two (the batch, and a smaller last one), each compiled once
        pipe.unet.compile(mode=config.compile_mode, dynamic=False)
    pipe.set_progress_bar_config(disable=config.quiet, leave=False, desc="steps")
    sampler = get_sampler(config.scheduler)
    start = time.perf_counter()
    images = sample_images(pipe, config.num_images, steps, config.seed, config.batch_size, config.eta,
                           progress=not config.quiet)
    seconds = time.perf_counter() - start

    names = image_names(config.num_images)
    local = os.path.exists(config.pipeline)
    settings = {
        "pipeline": os.path.abspath(config.pipeline) if local else config.pipeline,
        "scheduler": config.scheduler,
        "scheduler_class": type(pipe.scheduler).__name__,
        "scheduler_config": json.loads(pipe.scheduler.to_json_string()),
        "steps": steps,
        "eta": config.eta if config.eta is not None else (0.0 if sampler.takes_eta else None),
        "seed": config.seed,
        "generators": "image i: torch.Generator('cpu').manual_seed(seed + i)",
        "num_images": config.num_images,
        "batch_size": config.batch_size,
        "device": str(torch.device(device)),
        "dtype": str(pipe.unet.dtype).replace("torch.", ""),
        "compile_mode": config.compile_mode if config.compile else None,
        "seconds": round(seconds, 3),
        "grid": os.path.abspath(config.output) if config.output else None,
        "output_dir": os.path.abspath(config.output_dir) if config.output_dir else None,
        "images": names if config.output_dir else None,
        "hf_ddpm_version": __version__,
        "diffusers_version": diffusers.__version__,
        "torch_version": torch.__version__,
    }
    text = (json.dumps(settings, indent=2) + "\n").encode()
    written = []
    if config.output_dir:
        folder = Path(config.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for name, image in zip(names, images):
            _write(folder / name, _png(image), config.overwrite)
        _write(folder / SETTINGS_FILE, text, config.overwrite)
        written.append(f"{len(images)} images and {SETTINGS_FILE} in {folder}")
    if config.output:
        grid = grid_of(images, config.grid_columns)
        _write(Path(config.output), _png(grid), config.overwrite)
        _write(settings_path(config.output), text, config.overwrite)
        written.append(f"grid {config.output} ({settings_path(config.output).name} beside it)")
    if not config.quiet:
        print(f"wrote {' and '.join(written)}: {config.num_images} images, {config.scheduler} with {steps} steps, "
              f"{seconds:.1f} s")
    return 0


COMMAND = Command(
    "sample", "generate images with any sampler (ddpm, ddim, dpmsolver++, unipc, euler...) -> PNGs + settings JSON",
    run=run, config=SampleConfig,
    description="Sample a saved DDPM pipeline with the chosen scheduler and number of steps. Writes a grid "
                "(--output grid.png) and/or one PNG per image (--output-dir DIR), each with a JSON of the settings "
                "(scheduler class and config, steps, eta, seed, versions) beside it. Existing files are never "
                "replaced unless --overwrite is given.",
)
