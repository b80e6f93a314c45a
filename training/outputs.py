"""What a run writes besides checkpoints: sample grids, the periodic bits/dim, the final pipeline and its record,
and the run's status file.

Sample grids and bits/dim use the EMA weights (swapped in with `ema_weights`) and a fixed seed, so grids of
different steps are comparable; the final pipeline is `hf_ddpm.final_pipeline`'s folder, the one `hf-ddpm export`
writes from the final checkpoint. OUTPUT_DIR/run_status.json says whether the run is running, finished or stopped
resumably (what a cluster script reads: `accelerate launch` turns every non-zero exit status into 1).
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from accelerate.logging import get_logger

from hf_ddpm.final_pipeline import GridSettings, sample_grid, write_pipeline
from hf_ddpm.hub import record_training_data
from hf_ddpm.options import RunFailure, UsageError

logger = get_logger(__name__)

STATUS_FILE = "run_status.json"  # in OUTPUT_DIR: "running", "finished" or "stopped" (resumable)


def check_writable(output_dir: Path) -> None:
    """Fail at start, not at the first checkpoint, when the output folder cannot be written."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as error:
        raise UsageError(f"cannot write to {output_dir} ({error.strerror or error})", "--output_dir",
                         "choose a writable folder") from None


def write_run_status(output_dir: Path, status: str, **facts) -> Path:
    """Replace OUTPUT_DIR/run_status.json with {"status": status, **facts, "time": ...} in one rename: "running"
    when training starts, "finished" once the pipeline is written, "stopped" (resumable) with the step, checkpoint,
    reason and resume command. A run that failed or was killed (SIGKILL) leaves "running"."""
    path = output_dir / STATUS_FILE
    partial = path.with_name(f".{STATUS_FILE}.partial")
    facts = {"status": status, **facts, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    partial.write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)
    return path


@contextmanager
def ema_weights(unet, ema):
    """Temporarily swap the EMA weights into the UNet, in eval mode."""
    if ema is not None:
        ema.store(unet.parameters())
        ema.copy_to(unet.parameters())
    unet.eval()
    try:
        yield unet
    finally:
        unet.train()
        if ema is not None:
            ema.restore(unet.parameters())


def save_sample_grid(accelerator, unet, ema, noise_scheduler, folder: Path, step: int, batch_size: int, seed: int,
                     num_inference_steps: int | None) -> None:
    with ema_weights(unet, ema):
        grid = sample_grid(unet, noise_scheduler, batch_size, seed, num_inference_steps)
    folder.mkdir(exist_ok=True)
    grid.save(folder / f"step-{step:07d}.png")
    log_image(accelerator, "samples", grid, step)


def start_trackers(accelerator, config, output_dir: Path) -> None:
    """Start the --logger tracker with the run's options: TensorBoard writes OUTPUT_DIR/LOGGING_DIR/train/; a
    Weights & Biases run is named after the output folder, in project WANDB_PROJECT (default hf-ddpm), with its
    files in WANDB_DIR or else OUTPUT_DIR/LOGGING_DIR (WANDB_MODE=offline keeps it on this machine)."""
    options = {k: v for k, v in config.recorded().items() if v is not None}
    if config.logger != "wandb":
        accelerator.init_trackers("train", config=options)
        return
    wandb_kwargs = {"name": output_dir.resolve().name}
    if not os.environ.get("WANDB_DIR"):
        logging_dir = output_dir / config.logging_dir
        logging_dir.mkdir(parents=True, exist_ok=True)
        wandb_kwargs["dir"] = str(logging_dir)
    accelerator.init_trackers(os.environ.get("WANDB_PROJECT") or "hf-ddpm", config=options,
                              init_kwargs={"wandb": wandb_kwargs})


def log_image(accelerator, key: str, image, step: int) -> None:
    """One image (a PIL sample grid) to every tracker, under `key` at `step`: TensorBoard through its writer,
    Weights & Biases as a wandb.Image."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(key, np.asarray(image.convert("RGB")), step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({key: wandb.Image(image, caption=f"step {step}")}, step=step)


def evaluate_bpd(unet, ema, noise_scheduler, images: torch.Tensor, seed: int) -> float:
    """Mean bits/dim (the paper's Table 2 bound) of the held-out images under the EMA weights."""
    from hf_ddpm.evaluation import bits_per_dim  # what `hf-ddpm evaluate` reports, imported only when asked for

    with ema_weights(unet, ema):
        generator = torch.Generator(unet.device).manual_seed(seed)
        return bits_per_dim(unet, noise_scheduler, images, generator=generator).bpd.mean().item()


def save_final_pipeline(unet, ema, noise_scheduler, pipeline_dir: Path, record: dict, options: dict) -> None:
    """The EMA pipeline (the raw weights with --no_use_ema) with its sample grid and model card: the folder
    `hf-ddpm export` writes from the final checkpoint. An earlier run's pipeline (--overwrite_output_dir) is kept
    beside it."""
    if ema is not None:
        ema.copy_to(unet.parameters())  # training is over: the shared model is the EMA one
    try:
        write_pipeline(unet, noise_scheduler, pipeline_dir, record, repo_id=options["hub_model_id"],
                       grid=GridSettings.of_run(options), keep_existing=True)
    except OSError as error:
        raise RunFailure(f"could not write the final pipeline ({error.strerror or error}); the final checkpoint is intact",
                         None, "free space, then rerun with --resume_from_checkpoint latest, or write it with "
                         "`hf-ddpm export CHECKPOINT --output DIR`") from None
    logger.info(f"saved the {'EMA ' if ema is not None else ''}pipeline to {pipeline_dir}")


def run_record(config, unet, world: int, global_batch: int, num_images: int, steps: int, seconds: float) -> dict:
    """The run's record after `steps` optimizer steps and `seconds` of training, saved with every checkpoint and as
    the pipeline's training_config.json for the model card (public: no paths or secrets). Scheduler settings are not
    copied: the card reads them from scheduler_config.json. Where the data came from is decided here, where a
    relative path still means what it meant."""
    data = record_training_data(config.dataset_name, config.train_data_dir, config.idx_images, num_images)
    if torch.cuda.is_available():
        hardware = f"{world} x {torch.cuda.get_device_name()}"
    else:
        hardware = f"{world} x CPU process ({torch.get_num_threads()} threads each)"
    return {
        **data, "dataset_config": config.dataset_config_name, "resolution": unet.config.sample_size,
        "channels": unet.config.in_channels, "unet_preset": config.preset,
        "num_parameters": sum(p.numel() for p in unet.parameters()), "loss_type": config.loss_type,
        "loss_weighting": config.loss_weighting, "max_train_steps": steps,
        "train_batch_size": global_batch, "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "learning_rate": config.learning_rate, "lr_warmup_steps": config.lr_warmup_steps,
        "adam_beta1": config.adam_beta1, "adam_beta2": config.adam_beta2, "adam_weight_decay": config.adam_weight_decay,
        "max_grad_norm": config.max_grad_norm, "dropout": unet.config.dropout, "use_ema": config.use_ema,
        "ema_decay": config.ema_max_decay if config.use_ema else None, "mixed_precision": config.mixed_precision,
        "hardware": hardware, "num_processes": world, "training_time_hours": round(seconds / 3600, 3),
        "seed": config.seed, "random_flip": config.random_flip,
    }
