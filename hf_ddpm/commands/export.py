"""`hf-ddpm export`: its options (`ExportConfig`), their checks, and the command that writes the pipeline folder of
a training checkpoint (hf_ddpm/final_pipeline.py): the EMA weights (the raw ones for a run with --no_use_ema), the
sample grid and the model card, as training writes OUTPUT_DIR/pipeline when it ends at that step. Nothing is trained,
the dataset is not read, and nothing that exists is written over.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..artifacts import MODEL_INDEX, default_device
from ..final_pipeline import MARKER, SAMPLES_FILE, GridSettings, TrainingCheckpoint, write_pipeline
from ..options import SWITCH, UsageError, check_device, option
from . import Command


def check_checkpoint(path: str) -> None:
    TrainingCheckpoint.open(path)


@dataclass
class ExportConfig:
    """What `hf-ddpm export` does."""

    checkpoint: str = option(help="a checkpoint folder of a training run: OUTPUT_DIR/checkpoints/checkpoint-STEP",
                             positional=True, metavar="CHECKPOINT", check=check_checkpoint)
    output: str | None = option(None, "the pipeline folder to write: a new folder, or an empty one", metavar="DIR",
                                free="validate(): needed; not a file or a folder with files, nor inside a checkpoint "
                                     "or a pipeline")
    samples: bool = option(True, f"write {SAMPLES_FILE}, the sample grid training saves with the pipeline (the run's "
                                 "--eval_batch_size, --seed and --ddpm_num_inference_steps); --no-samples leaves it "
                                 "out and samples nothing", free=SWITCH)
    device: str | None = option(None, "where to sample the grid: cpu, cuda, cuda:N, mps ... (default: cuda when "
                                      "available)", check=check_device)

    def validate(self) -> None:
        """--output is a free place outside checkpoints and pipelines, checked before anything is loaded."""
        if self.output is None:
            raise UsageError("the folder to write is missing", "--output", "pass --output DIR, a new folder")
        output = Path(self.output)
        if output.is_file():
            raise UsageError(f"--output {output} is a file", "--output", "pass a new folder")
        if output.is_dir() and any(output.iterdir()):
            what = "a saved pipeline" if (output / MODEL_INDEX).is_file() else "a folder with files"
            raise UsageError(f"--output {output} is {what}", "--output",
                             "pass a new folder, or move that one away first (export never writes over one)")
        target = output.resolve()
        if not target.parent.is_dir():
            raise UsageError(f"the folder above --output {output} does not exist", "--output",
                             "create it, or pass another --output")
        for folder in target.parents:
            for marker, what in ((MARKER, "a checkpoint"), (MODEL_INDEX, "a saved pipeline")):
                if (folder / marker).is_file():
                    raise UsageError(f"--output {output} lies inside {what} ({folder})", "--output",
                                     "pass a folder outside checkpoints and pipelines, e.g. beside the run")


def run(config: ExportConfig) -> int:
    checkpoint = TrainingCheckpoint.open(config.checkpoint)
    pipeline = checkpoint.pipeline(config.device or default_device())
    grid = GridSettings.of_run(checkpoint.options) if config.samples else None
    write_pipeline(pipeline.unet, pipeline.scheduler, config.output, checkpoint.record,
                   repo_id=checkpoint.options.get("hub_model_id"), grid=grid)
    weights = "EMA" if checkpoint.uses_ema else "raw (the run had --no_use_ema)"
    extra = f"{SAMPLES_FILE} and " if grid else ""
    print(f"wrote the pipeline of {checkpoint.path} (step {checkpoint.step}, {weights} weights), {extra}its model card "
          f"to {config.output}")
    return 0


COMMAND = Command(
    "export", "write a training checkpoint's pipeline (EMA weights, sample grid, model card), as training ends with",
    run=run, config=ExportConfig,
    description="Write the pipeline of a training checkpoint to --output DIR: its EMA weights (the raw weights when "
                "the run had --no_use_ema) as safetensors, the sample grid and the model card from the run's "
                "recorded options, the same folder training writes to OUTPUT_DIR/pipeline when it ends at that "
                "step. Nothing is trained and the dataset is not read; an existing pipeline or folder with files is "
                "never written over.",
)
