"""The pipeline folder of a training run, written the same way when training ends (training/train.py) and from any
of its checkpoints (`hf-ddpm export`): the weights as safetensors, a sample grid and the model card.

A checkpoint carries what this needs beside its weights, under the names below (training/checkpoints.py writes
them with `ExportFacts`): the UNet and scheduler configs and the run's record at that step (the card's training
table). A checkpoint is then exported without the training code, its options or its dataset, and the folder holds the
same tensors and configs as the one training writes when it ends at that step.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifacts import (MODEL_INDEX, TRAINING_CONFIG_FILE, read_json, read_safetensors_header, read_training_config,
                        weight_files, write_training_config)
from .options import UsageError

# A training checkpoint's files (training/checkpoints.py).
MARKER = "training_state.json"  # written last: the loop's state and the run's options
EMA_FOLDER = "unet_ema"  # diffusers' EMAModel.save_pretrained: the fp32 EMA weights, saved as a UNet2DModel
RAW_WEIGHTS = "model.safetensors"  # Accelerate's save_state file of the prepared model: the raw weights
UNET_CONFIG = "unet_config.json"  # the UNet's config as the pipeline saves it (stock class name)
SCHEDULER_CONFIG = "scheduler_config.json"
RUN_RECORD = TRAINING_CONFIG_FILE  # the run's record at the checkpoint's step, as the pipeline keeps it
SAMPLES_FILE = "samples.png"  # the pipeline's sample grid, which the model card shows
# Prefixes of wrapped models in Accelerate's raw weights: DistributedDataParallel, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
CHECKPOINT_ARG = "CHECKPOINT"
PASS_CHECKPOINT = "pass a checkpoint folder of a training run, such as OUTPUT_DIR/checkpoints/checkpoint-500"


# ---------------------------------------------------------------------------------------------- the grid
def sample_grid(unet, scheduler, batch_size: int, seed: int, num_inference_steps: int | None):
    """A grid of `batch_size` samples of `unet` as it is (weights, train/eval mode) with a copy of `scheduler`, from
    a fixed seed so that grids of different steps are comparable; the squarest grid that holds every image."""
    import torch
    from diffusers.utils import make_image_grid

    from .pipeline_ddpm import DDPMPipeline
    from .scheduling_ddpm import DDPMScheduler

    pipeline = DDPMPipeline(unet=unet, scheduler=DDPMScheduler.from_config(scheduler.config))
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator(unet.device).manual_seed(seed)
    images = pipeline(batch_size, generator, num_inference_steps).images
    rows = math.isqrt(len(images))
    while len(images) % rows:
        rows -= 1
    return make_image_grid(images, rows, len(images) // rows)


@dataclass(frozen=True)
class GridSettings:
    """The sample grid saved with the pipeline: the run's --eval_batch_size, --seed and --ddpm_num_inference_steps."""

    batch_size: int
    seed: int
    num_inference_steps: int | None

    @classmethod
    def of_run(cls, options: dict) -> "GridSettings":
        """From the run's options (train.py's `TrainConfig.recorded()`, also saved in every checkpoint)."""
        return cls(options["eval_batch_size"], options["seed"], options.get("ddpm_num_inference_steps"))


# ------------------------------------------------------------------------------------------ the folder
def write_pipeline(unet, scheduler, pipeline_dir: str | os.PathLike, record: dict, repo_id: str | None = None,
                   grid: GridSettings | None = None, keep_existing: bool = False) -> Path:
    """Write `unet` (its current weights; it is left in eval mode) and `scheduler` as a pipeline folder of
    safetensors, with the sample grid `grid` (None: no grid) and the model card of the run's `record`.

    The folder is written beside its place (`.partial-<name>`) and renamed into it when complete; with
    `keep_existing` (training's --overwrite_output_dir) a folder already there is kept beside, renamed
    `<name>-replaced-<time>`, else the place must be free or an empty folder. Whatever fails, no partial folder stays.
    """
    from .hub import write_model_card
    from .pipeline_ddpm import DDPMPipeline

    pipeline_dir = Path(pipeline_dir)
    partial = pipeline_dir.with_name(f".partial-{pipeline_dir.name}")
    shutil.rmtree(partial, ignore_errors=True)  # debris of a write that was killed
    unet.eval()
    try:
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(partial, safe_serialization=True)
        if grid is not None:
            image = sample_grid(unet, scheduler, grid.batch_size, grid.seed, grid.num_inference_steps)
            image.save(partial / SAMPLES_FILE)
        if keep_existing and pipeline_dir.exists():
            os.replace(pipeline_dir, pipeline_dir.with_name(f"{pipeline_dir.name}-replaced-{int(time.time())}"))
        os.replace(partial, pipeline_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    # after the rename: the card is named after the folder's place (hf_ddpm.hub.card.run_name)
    write_model_card(pipeline_dir, training=record, dataset=record.get("dataset"), repo_id=repo_id)
    return pipeline_dir


# ------------------------------------------------------------------------------------ the checkpoint side
@dataclass
class ExportFacts:
    """What a checkpoint keeps for `hf-ddpm export` beside its weights: `unet`'s and `scheduler`'s configs as the
    pipeline saves them, and the run's `record` at the checkpoint's step."""

    unet: Any
    scheduler: Any
    record: dict

    def write(self, checkpoint_dir: str | os.PathLike) -> None:
        folder = Path(checkpoint_dir)
        (folder / UNET_CONFIG).write_text(self.unet.to_json_string(), encoding="utf-8")
        (folder / SCHEDULER_CONFIG).write_text(self.scheduler.to_json_string(), encoding="utf-8")
        write_training_config(folder, self.record)


@dataclass
class TrainingCheckpoint:
    """A complete checkpoint of a training run, read for export: its step, the run's options and record, and which
    weights its pipeline holds (the EMA ones, or the raw ones for a run with --no_use_ema)."""

    path: Path
    step: int
    options: dict
    record: dict

    @property
    def uses_ema(self) -> bool:
        return bool(self.options.get("use_ema", True))

    @property
    def weight_files(self) -> list[Path]:
        return weight_files(self.path / EMA_FOLDER) if self.uses_ema else [self.path / RAW_WEIGHTS]

    @classmethod
    def open(cls, path: str | os.PathLike) -> "TrainingCheckpoint":
        """Read `path`, or a UsageError in one line saying what it is instead and what to pass."""
        path = Path(path)
        if not path.is_dir():
            problem = "is a file, not a folder" if path.exists() else "does not exist"
            raise UsageError(f"{path} {problem}", CHECKPOINT_ARG, PASS_CHECKPOINT)
        if (path / MODEL_INDEX).is_file():
            raise UsageError(f"{path} is a saved pipeline, not a training checkpoint", CHECKPOINT_ARG,
                             "a pipeline needs no export: load it as it is, or pass one of its run's checkpoints")
        if not (path / MARKER).is_file():
            newest = sorted(path.glob(f"checkpoints/checkpoint-*/{MARKER}"), key=lambda p: _step(p.parent))
            fix = (f"pass one of its checkpoints, such as {newest[-1].parent}" if newest else
                   f"{PASS_CHECKPOINT}; an unfinished write (.partial-checkpoint-*) is no checkpoint")
            what = "is a training run's folder" if newest else f"is not a complete training checkpoint (no {MARKER})"
            raise UsageError(f"{path} {what}", CHECKPOINT_ARG, fix)
        try:
            state = json.loads((path / MARKER).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise UsageError(f"{path / MARKER} is damaged ({' '.join(str(error).split())})", CHECKPOINT_ARG,
                             "pass another checkpoint of the run") from None
        options = state.get("options") if isinstance(state, dict) else None
        if not isinstance(options, dict) or not isinstance(state.get("global_step"), int) \
                or not {"eval_batch_size", "seed"} <= set(options):
            raise UsageError(f"{path / MARKER} holds no training state with the run's options", CHECKPOINT_ARG,
                             "pass a checkpoint written by training/train.py")
        missing = [name for name in (UNET_CONFIG, SCHEDULER_CONFIG, RUN_RECORD) if not (path / name).is_file()]
        if missing:
            raise UsageError(f"{path} has no {missing[0]}: it was written by a train.py that did not save what export "
                             "needs", CHECKPOINT_ARG, "resume the run with --resume_from_checkpoint latest until it "
                             "writes its next checkpoint, and export that one")
        try:
            record = read_training_config(path)
            checkpoint = cls(path, state["global_step"], options, record)
            for name in (UNET_CONFIG, SCHEDULER_CONFIG):
                if not isinstance(read_json(path / name, "pass another checkpoint of the run"), dict):
                    raise ValueError(f"{path / name} does not hold a config: pass another checkpoint of the run")
            files = checkpoint.weight_files
            if not files or not files[0].is_file():
                raise ValueError(f"{files[0] if files else path / EMA_FOLDER} is missing: pass another checkpoint of "
                                 "the run")
            for file in files:
                read_safetensors_header(file)  # a truncated or foreign file is named now, not after loading
        except ValueError as error:
            raise UsageError(" ".join(str(error).split()), CHECKPOINT_ARG) from None
        return checkpoint

    def pipeline(self, device: str = "cpu"):
        """The run's pipeline at this step: the saved UNet config with this checkpoint's weights, and the scheduler."""
        from safetensors.torch import load_file

        from .pipeline_ddpm import DDPMPipeline
        from .scheduling_ddpm import DDPMScheduler
        from .unet import DDPMUNet2DModel

        unet = DDPMUNet2DModel.from_config(read_json(self.path / UNET_CONFIG))
        weights = {}
        for file in self.weight_files:
            weights.update(load_file(str(file)))
        weights = {_unwrapped(name): tensor for name, tensor in weights.items()}
        try:
            unet.load_state_dict(weights)
        except RuntimeError as error:
            raise ValueError(f"the weights of {self.path} do not fit its {UNET_CONFIG} "
                             f"({' '.join(str(error).split())[:200]}): pass another checkpoint of the run") from None
        scheduler = DDPMScheduler.from_config(read_json(self.path / SCHEDULER_CONFIG))
        return DDPMPipeline(unet=unet, scheduler=scheduler).to(device)


def _unwrapped(name: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name


def _step(checkpoint: Path) -> int:
    tail = checkpoint.name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1
