"""Train a DDPM (Ho, Jain & Abbeel 2020) with Accelerate, on one CPU or many GPUs.

    accelerate launch training/train.py --config fashion_mnist_cpu          # the CPU demo (minutes, 2 cores)
    accelerate launch --multi_gpu training/train.py --config cifar10_paper --dataset_name cifar10

Options keep the names of diffusers' `examples/unconditional_image_generation/train_unconditional.py` where
they overlap. Precedence: defaults below < `--config` preset (YAML in training/configs/, or a path) < flags.

Reproducibility and resuming: every random draw of optimizer step s (which images, their flips, the noise,
the timesteps, dropout) is derived from (seed, s), and the images/noise/timesteps of a step are drawn for the
whole global batch and then sliced per process. So a resumed run repeats the uninterrupted run exactly, and a
run on N processes sees the same data, noise and timesteps as one process with the same global batch.

The script reads top to bottom: config, setup, data, model, optimizer, checkpoint helpers, the loop, saving.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration
from diffusers import UNet2DModel
from diffusers.optimization import SchedulerType, get_scheduler
from diffusers.training_utils import EMAModel
from diffusers.utils import make_image_grid
from huggingface_hub.utils import validate_repo_id
from safetensors import safe_open
from tqdm.auto import tqdm

import hf_ddpm
from hf_ddpm.data import ArrayImages, ImageDataset, flip_horizontally, load_fashion_mnist, load_image_dataset
from hf_ddpm.gaussian_diffusion import LOSS_TYPES, LOSS_WEIGHTINGS
from hf_ddpm.hub import push_pipeline, write_model_card

CONFIG_DIR = Path(__file__).parent / "configs"
logger = get_logger(__name__)


# ----------------------------------------------------------------------------------------------- config
@dataclass
class TrainConfig:
    # data: one of dataset_name / train_data_dir / idx_images, or the offline Fashion-MNIST default
    dataset_name: str | None = None
    dataset_config_name: str | None = None
    train_data_dir: str | None = None
    idx_images: str | None = None
    image_column: str | None = None
    cache_dir: str | None = None
    resolution: int | None = None  # default: the model's sample_size
    center_crop: bool = False
    random_flip: bool = False
    max_train_samples: int | None = None
    dataloader_num_workers: int = 0
    # model
    model_preset: str = "small28"  # a hf_ddpm.UNET_PRESETS name...
    model_config_name_or_path: str | None = None  # ...or a UNet2DModel config (file or folder) instead
    learned_variance: bool = False
    dropout: float | None = None  # default: the preset's
    # diffusion and objective
    ddpm_num_steps: int = 1000
    ddpm_beta_schedule: str = "linear"
    prediction_type: str = "epsilon"
    variance_type: str | None = None  # default: fixed_small, or learned_range with --learned_variance
    loss_type: str = "simple"
    loss_weighting: str | None = None
    snr_gamma: float = 5.0
    p2_k: float = 1.0
    p2_gamma: float = 1.0
    # optimization: counted in optimizer steps, whatever the number of processes or accumulation steps
    train_batch_size: int = 16  # per process
    gradient_accumulation_steps: int = 1
    max_train_steps: int = 1000
    learning_rate: float = 2e-4
    lr_scheduler: str = "constant_with_warmup"
    lr_warmup_steps: int = 500
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 0.0
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    use_ema: bool = True
    ema_max_decay: float = 0.9999
    ema_warmup: bool = False  # diffusers' EMA warm-up: decay = 1 - (1 + step / inv_gamma) ** -power
    ema_inv_gamma: float = 1.0
    ema_power: float = 0.75
    mixed_precision: str = "no"  # no | fp16 | bf16
    seed: int = 0
    # outputs
    output_dir: str = "ddpm-output"
    overwrite_output_dir: bool = False
    logging_dir: str = "logs"
    logging_steps: int = 10
    save_images_steps: int = 500
    eval_batch_size: int = 16
    ddpm_num_inference_steps: int | None = None  # steps for sample grids; default: all T
    eval_steps: int = 0  # every N steps: bits/dim of eval_num_images test images (0: off)
    eval_num_images: int = 8
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None  # "latest" or a checkpoint folder
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_token: str | None = None
    hub_private_repo: bool = False


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """Defaults < `--config` YAML preset < command-line flags; unknown preset keys are errors."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    preset = {}
    if known.config:
        path = Path(known.config)
        if not path.exists():
            path = CONFIG_DIR / f"{known.config}.yaml"
        if not path.exists():
            names = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
            raise SystemExit(f"error: --config {known.config!r} is neither a file nor a preset ({names}).")
        try:
            preset = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise SystemExit(f"error: cannot read --config {path}: {' '.join(str(error).split())}; pass a valid YAML file.") from None
        if not isinstance(preset, dict):
            raise SystemExit(f"error: {path} must hold `option: value` lines, not a {type(preset).__name__}.")
        unknown = sorted(set(preset) - set(fields))
        if unknown:
            raise SystemExit(f"error: {path} sets unknown options {unknown}; see `train.py --help`.")
        for name, value in preset.items():
            check_preset_type(path, name, value, fields[name].type)

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="a YAML preset: a file, or a name in training/configs/")
    for name, field in fields.items():
        default = preset.get(name, field.default)
        if field.type == "bool":
            parser.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=default)
        else:
            kind = {"int": int, "float": float}.get(field.type.split(" |")[0], str)
            parser.add_argument(f"--{name}", type=kind, default=default, metavar=name.upper())
    args = vars(parser.parse_args(argv))
    args.pop("config")
    config = TrainConfig(**args)
    check_config(config)
    return config


def check_preset_type(path: Path, name: str, value, annotation: str) -> None:
    """YAML values skip argparse's conversion: check them against the option's type instead."""
    if value is None and "None" in annotation:
        return
    expected = annotation.split(" |")[0]
    ok = {"bool": isinstance(value, bool), "int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool), "str": isinstance(value, str)}
    if not ok[expected]:
        raise SystemExit(f"error: {path} sets {name}: {value!r}, but {name} takes a {expected} value: set it to a {expected}.")


def check_config(config: TrainConfig) -> None:
    """Reject impossible settings before anything starts, with the option's name and what it accepts."""
    at_least_one = ("train_batch_size", "gradient_accumulation_steps", "max_train_steps", "logging_steps",
                    "checkpointing_steps", "save_images_steps", "eval_batch_size", "ddpm_num_steps", "eval_num_images")
    for name in at_least_one:
        if getattr(config, name) < 1:
            raise ValueError(f"--{name} must be an integer >= 1, got {getattr(config, name)}.")
    for name in ("lr_warmup_steps", "dataloader_num_workers", "eval_steps"):
        if getattr(config, name) < 0:
            raise ValueError(f"--{name} must be >= 0, got {getattr(config, name)}.")
    if not config.learning_rate > 0 or not config.max_grad_norm > 0:
        raise ValueError("--learning_rate and --max_grad_norm must be positive.")
    if not 0 <= config.ema_max_decay < 1:
        raise ValueError(f"--ema_max_decay must lie in [0, 1), got {config.ema_max_decay}.")
    choices = {"mixed_precision": ("no", "fp16", "bf16"), "loss_type": LOSS_TYPES,
               "lr_scheduler": tuple(kind.value for kind in SchedulerType),
               "loss_weighting": tuple(w for w in LOSS_WEIGHTINGS if w), "model_preset": tuple(hf_ddpm.UNET_PRESETS)}
    for name, allowed in choices.items():
        value = getattr(config, name)
        if value is not None and value not in allowed:
            raise ValueError(f"--{name} {value!r} is not one of: {', '.join(allowed)}.")
    if config.learned_variance and config.variance_type not in (None, "learned", "learned_range"):
        raise ValueError(f"--learned_variance needs --variance_type learned or learned_range, not {config.variance_type!r}.")
    if config.push_to_hub:  # checked now, not after days of training
        try:
            validate_repo_id(config.hub_model_id or "placeholder")
        except ValueError as error:
            raise ValueError(f"--hub_model_id: invalid repo id {config.hub_model_id!r} ({error}): use USER/NAME.") from None
    if config.variance_type in ("learned", "learned_range") and not config.learned_variance:
        raise ValueError(f"--variance_type {config.variance_type} needs a 2C-channel model: add --learned_variance.")


def main(config: TrainConfig) -> None:
    # ------------------------------------------------------------------------------------------- setup
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    output_dir = Path(config.output_dir)
    checkpoint_dir = output_dir / "checkpoints"
    pipeline_dir = output_dir / "pipeline"
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / config.logging_dir)),
    )
    world, rank = accelerator.num_processes, accelerator.process_index
    global_batch = config.train_batch_size * world * config.gradient_accumulation_steps
    resume_from = resolve_resume(config, checkpoint_dir, pipeline_dir)
    if accelerator.is_main_process:
        check_writable(output_dir)

    # -------------------------------------------------------------------------------------------- model
    if config.model_config_name_or_path:
        unet_config = load_unet_config(config.model_config_name_or_path)
        if config.learned_variance:
            unet_config["out_channels"] = 2 * unet_config["in_channels"]
    else:
        unet_config = hf_ddpm.DDPMUNet2DModel.preset_config(config.model_preset, config.learned_variance)
    if config.dropout is not None:
        unet_config["dropout"] = config.dropout
    if config.resolution is not None:
        unet_config["sample_size"] = config.resolution
    torch.manual_seed(config.seed)  # the initial weights
    model = hf_ddpm.DDPMUNet2DModel.from_config(unet_config)
    variance_type = config.variance_type or ("learned_range" if config.learned_variance else "fixed_small")
    noise_scheduler = hf_ddpm.DDPMScheduler(
        num_train_timesteps=config.ddpm_num_steps,
        beta_schedule=config.ddpm_beta_schedule,
        prediction_type=config.prediction_type,
        variance_type=variance_type,
    )
    T = noise_scheduler.config.num_train_timesteps

    # --------------------------------------------------------------------------------------------- data
    raw_images = load_image_dataset(
        dataset_name=config.dataset_name,
        dataset_config_name=config.dataset_config_name,
        train_data_dir=config.train_data_dir,
        idx_images=config.idx_images,
        image_column=config.image_column,
        cache_dir=config.cache_dir,
        max_samples=config.max_train_samples,
    )
    dataset = ImageDataset(
        raw_images,
        resolution=model.config.sample_size,
        num_channels=model.config.in_channels,
        center_crop=config.center_crop,
        seed=config.seed,
    )
    if len(dataset) < global_batch:
        raise SystemExit(f"error: {len(dataset)} training images is fewer than one global batch of {global_batch}: "
                         "lower --train_batch_size or --gradient_accumulation_steps, or add images.")
    steps_per_epoch = len(dataset) // global_batch  # each epoch drops its last partial global batch

    # ------------------------------------------------------------------------------- optimizer and EMA
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
    )
    # Not passed to accelerator.prepare: Accelerate would step it once per process, and diffusers' example
    # sizes it in micro-steps; here it advances exactly once per optimizer step.
    lr_scheduler = get_scheduler(
        config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps, num_training_steps=config.max_train_steps
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    ema = None
    if config.use_ema:  # fp32 shadow weights of the fp32 master parameters
        ema = EMAModel(
            accelerator.unwrap_model(model).parameters(),
            decay=config.ema_max_decay,
            use_ema_warmup=config.ema_warmup,
            inv_gamma=config.ema_inv_gamma,
            power=config.ema_power,
            model_cls=UNet2DModel,
            model_config=accelerator.unwrap_model(model).config,
        )
        ema.to(accelerator.device)
    unet = accelerator.unwrap_model(model)
    # The loop's position, saved in checkpoints; the loss of the current log interval travels along so a
    # resumed run logs the very same values.
    state = {"global_step": 0, "steps_since_log": 0, "loss_sum": 0.0, "train_seconds": 0.0}
    loss_sum = torch.zeros((), device=accelerator.device)

    def checked_mean_loss() -> float:
        """Mean loss over the current log interval (all processes), refusing to go on from a NaN/Inf."""
        mean_loss = accelerator.reduce(loss_sum, reduction="mean").item() / max(1, state["steps_since_log"])
        if not math.isfinite(mean_loss):
            step = state["global_step"]
            raise SystemExit(
                f"error: the loss became {mean_loss} between steps {step - state['steps_since_log'] + 1} and {step}; "
                "nothing after the last checkpoint was saved. Lower --learning_rate or use bf16 instead of fp16."
            )
        return mean_loss

    # --------------------------------------------------------------------------------- checkpointing
    def save_hook(models, weights, folder):
        """Runs inside accelerator.save_state: EMA weights as safetensors, loop state as JSON (no pickles)."""
        if accelerator.is_main_process:
            if ema is not None:
                ema.save_pretrained(os.path.join(folder, "unet_ema"))
            training_state = {**state, "lr_scheduler": lr_scheduler.state_dict()}
            Path(folder, TRAINING_STATE).write_text(json.dumps(training_state))

    def load_hook(models, folder):
        if ema is not None:
            loaded = EMAModel.from_pretrained(os.path.join(folder, "unet_ema"), model_cls=UNet2DModel)
            ema.load_state_dict(loaded.state_dict())
            ema.to(accelerator.device)
        training_state = json.loads(Path(folder, TRAINING_STATE).read_text())
        lr_scheduler.load_state_dict(training_state.pop("lr_scheduler"))
        loss_sum.fill_(training_state.pop("loss_sum"))  # every process resumes with the all-process mean
        state.update(training_state)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)

    def save_checkpoint() -> None:
        """Write checkpoint-<step> atomically: into a hidden folder, renamed once complete and synced to disk.

        A failed write (disk full, permissions) stops the run with the previous checkpoints untouched.
        """
        final = checkpoint_dir / f"checkpoint-{state['global_step']}"
        partial = checkpoint_dir / f".partial-checkpoint-{state['global_step']}"
        try:
            if accelerator.is_main_process:
                shutil.rmtree(partial, ignore_errors=True)  # debris of a run killed while writing
                checkpoint_dir.mkdir(parents=True, exist_ok=True)
            accelerator.wait_for_everyone()
            accelerator.save_state(str(partial), safe_serialization=True)
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                fsync_tree(partial)
                if final.exists():  # the same step saved by an earlier attempt of this run: identical by construction
                    shutil.rmtree(final)
                os.replace(partial, final)
                fsync_tree(checkpoint_dir, files=False)
                prune_checkpoints(checkpoint_dir, config.checkpoints_total_limit)
                logger.info(f"saved {final}")
        except OSError as error:
            shutil.rmtree(partial, ignore_errors=True)
            kept = [p.name for p in complete_checkpoints(checkpoint_dir)]
            raise SystemExit(
                f"error: could not write {final.name} ({error.strerror or error}); earlier checkpoints are intact "
                f"({', '.join(kept) or 'none yet'}): free space or fix permissions on {checkpoint_dir}, then rerun "
                "with --resume_from_checkpoint latest."
            ) from None
        accelerator.wait_for_everyone()

    if resume_from is not None:
        try:
            check_checkpoint_files(resume_from)
            accelerator.load_state(str(resume_from))
        except Exception as error:  # a damaged checkpoint: name the file and the way out, never a traceback
            raise SystemExit(
                f"error: cannot resume from {resume_from} ({type(error).__name__}: {' '.join(str(error).split())[:200]}): "
                "pass an earlier checkpoint with --resume_from_checkpoint PATH, or move this one away."
            ) from None
        logger.info(f"resumed from {resume_from} at step {state['global_step']}")
    eval_images = load_eval_images(config, unet) if config.eval_steps else None

    # ----------------------------------------------------------------------------------------- logging
    if accelerator.is_main_process:
        hparams = {k: v for k, v in vars(config).items() if v is not None and k != "hub_token"}
        accelerator.init_trackers("train", config=hparams)
    logger.info(
        f"{len(dataset)} images, global batch {global_batch} = {config.train_batch_size} per process x {world} "
        f"processes x {config.gradient_accumulation_steps} accumulation steps, {config.max_train_steps} optimizer steps"
    )
    stop_signal = {"signum": None}

    def request_stop(signum, frame):  # let the current step finish, then checkpoint and exit
        stop_signal["signum"] = signum

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    # -------------------------------------------------------------------------------------------- loop
    with tqdm(total=config.max_train_steps, initial=state["global_step"], desc="train",
              disable=not accelerator.is_local_main_process) as progress:  # closed before any error is printed
        window_start, window_images = time.perf_counter(), 0
        model.train()
        while state["global_step"] < config.max_train_steps:
            epoch, first_step = divmod(state["global_step"], steps_per_epoch)
            last_step = min(steps_per_epoch, first_step + config.max_train_steps - state["global_step"])
            dataset.set_epoch(epoch)
            batches = iter(epoch_loader(dataset, config, epoch, first_step, last_step, world, rank))
            for _ in range(first_step, last_step):
                step, step_start = state["global_step"], time.perf_counter()
                # This step's draws for the whole global batch, so every process layout sees the same ones.
                rng = seeded_generator(config.seed, "step", step)
                noise = torch.randn((global_batch, unet.config.in_channels, *dataset.image_size), generator=rng)
                timesteps = torch.randint(0, T, (global_batch,), generator=rng)
                flips = torch.rand(global_batch, generator=rng) < 0.5
                torch.manual_seed(derive_seed(config.seed, "dropout", step, rank))

                for micro in range(config.gradient_accumulation_steps):
                    mine = slice((micro * world + rank) * config.train_batch_size, (micro * world + rank + 1) * config.train_batch_size)
                    clean = next(batches)["pixel_values"]
                    if config.random_flip:
                        clean = flip_horizontally(clean, flips[mine])
                    clean = clean.to(accelerator.device)
                    eps, t = noise[mine].to(accelerator.device), timesteps[mine].to(accelerator.device)
                    noisy = noise_scheduler.q_sample(clean, t, eps)  # in fp32: noise is never added in half precision
                    syncing = micro == config.gradient_accumulation_steps - 1
                    with nullcontext() if syncing else accelerator.no_sync(model):
                        model_output = model(noisy, t).sample.float()
                        losses = noise_scheduler.training_losses(
                            model_output, clean, noisy, eps, t, config.loss_type, config.loss_weighting,
                            config.snr_gamma, config.p2_k, config.p2_gamma,
                        )
                        loss = losses["loss"].mean() / config.gradient_accumulation_steps
                        accelerator.backward(loss)
                    loss_sum += loss.detach()

                grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.step(unet.parameters())
                state["global_step"] = step = step + 1
                state["steps_since_log"] += 1
                state["train_seconds"] += time.perf_counter() - step_start
                window_images += global_batch
                progress.update(1)

                is_checkpoint_step = step % config.checkpointing_steps == 0 or step == config.max_train_steps
                # The stop flag is agreed on by all processes at log steps (a collective); alone, at every step.
                stop_now = (world == 1 or step % config.logging_steps == 0) and stop_requested(accelerator, stop_signal)
                if step % config.logging_steps == 0 or step == config.max_train_steps:
                    mean_loss = checked_mean_loss()  # one host sync per log interval
                    throughput = window_images / (time.perf_counter() - window_start)
                    logs = {"train/loss": mean_loss, "train/lr": lr_scheduler.get_last_lr()[0],
                            "train/grad_norm": float(grad_norm), "train/images_per_sec": throughput}
                    if ema is not None:
                        logs["train/ema_decay"] = ema.cur_decay_value
                    accelerator.log(logs, step=step)
                    progress.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{throughput:.1f}")
                    loss_sum.zero_()
                    state["steps_since_log"], window_start, window_images = 0, time.perf_counter(), 0
                if is_checkpoint_step or stop_now:
                    checked_mean_loss()  # a NaN/Inf never reaches a checkpoint
                    state["loss_sum"] = accelerator.reduce(loss_sum, reduction="mean").item()
                    save_checkpoint()
                if stop_now:
                    logger.info(f"stopped by signal {stop_signal['signum']} at step {step}: resume with --resume_from_checkpoint latest")
                    accelerator.end_training()
                    sys.exit(128 + stop_signal["signum"])
                if accelerator.is_main_process and step % config.save_images_steps == 0:
                    grid = sample_grid(unet, ema, noise_scheduler, config)
                    (output_dir / "samples").mkdir(exist_ok=True)
                    grid.save(output_dir / "samples" / f"step-{step:07d}.png")
                    accelerator.get_tracker("tensorboard", unwrap=True).add_image(
                        "samples", np.asarray(grid.convert("RGB")), step, dataformats="HWC")
                    window_start = time.perf_counter()  # keep sampling time out of the throughput
                if eval_images is not None and step % config.eval_steps == 0 and accelerator.is_main_process:
                    accelerator.log({"eval/bpd": evaluate_bpd(unet, ema, noise_scheduler, eval_images, config)}, step=step)
                    window_start = time.perf_counter()

    # ------------------------------------------------------------------------------------------ saving
    if accelerator.is_main_process:
        try:
            save_final_pipeline(unet, ema, noise_scheduler, config, pipeline_dir)
        except OSError as error:
            shutil.rmtree(pipeline_dir.with_name(".partial-pipeline"), ignore_errors=True)
            raise SystemExit(f"error: could not write the final pipeline ({error.strerror or error}); the final checkpoint "
                             "is intact: free space, then rerun with --resume_from_checkpoint latest.") from None
        facts = training_facts(config, unet, noise_scheduler, world, global_batch, state["train_seconds"])
        write_model_card(pipeline_dir, training=facts, dataset=facts["dataset"], repo_id=config.hub_model_id)
        if config.push_to_hub:  # only the pipeline folder goes up: never checkpoints or logs
            url = push_pipeline(pipeline_dir, config.hub_model_id or output_dir.resolve().name, token=config.hub_token,
                                private=config.hub_private_repo)
            logger.info(f"pushed {pipeline_dir} to {url}")
    accelerator.wait_for_everyone()
    accelerator.end_training()


# ------------------------------------------------------------------------------------------- helpers
TRAINING_STATE = "training_state.json"  # written last into a checkpoint; its presence marks a complete one


def derive_seed(*parts) -> int:
    """A 63-bit seed from (seed, purpose, step, ...): stable across processes and Python runs, unlike hash()."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def seeded_generator(*parts) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


def epoch_loader(dataset, config: TrainConfig, epoch: int, first_step: int, last_step: int, world: int, rank: int):
    """This process's micro-batches for optimizer steps [first_step, last_step) of `epoch`, in order.

    The epoch's permutation depends on (seed, epoch) only; step s of the epoch uses its global_batch
    consecutive entries, of which micro-batch m of process r takes the slice (m * world + r) * batch_size.
    """
    order = torch.randperm(len(dataset), generator=seeded_generator(config.seed, "epoch", epoch)).tolist()
    b, accumulation = config.train_batch_size, config.gradient_accumulation_steps
    global_batch = b * world * accumulation
    batches = [
        order[step * global_batch + (micro * world + rank) * b :][:b]
        for step in range(first_step, last_step)
        for micro in range(accumulation)
    ]
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=config.dataloader_num_workers)


def stop_requested(accelerator: Accelerator, stop_signal: dict) -> bool:
    """Whether any process got SIGTERM/SIGINT: all processes must stop at the same step to checkpoint."""
    requested = stop_signal["signum"] is not None
    if accelerator.num_processes == 1:
        return requested
    flag = torch.tensor(float(requested), device=accelerator.device)
    signum = torch.tensor(float(stop_signal["signum"] or 0), device=accelerator.device)
    if accelerator.reduce(flag, reduction="sum").item() > 0:
        stop_signal["signum"] = int(accelerator.reduce(signum, reduction="sum").item()) or signal.SIGTERM
        return True
    return False


def complete_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """checkpoint-<step> folders holding their final file, oldest first (partial writes have other names)."""
    found = [p for p in checkpoint_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit() and (p / TRAINING_STATE).exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def resolve_resume(config: TrainConfig, checkpoint_dir: Path, pipeline_dir: Path) -> Path | None:
    """The checkpoint to resume from, refusing to silently start over on top of an earlier run."""
    complete = complete_checkpoints(checkpoint_dir)
    if config.resume_from_checkpoint is None:
        if (complete or pipeline_dir.exists()) and not config.overwrite_output_dir:
            raise SystemExit(
                f"error: {config.output_dir} already holds a run's checkpoints or pipeline: pass "
                "--resume_from_checkpoint latest to continue it, or choose another --output_dir."
            )
        return None
    if config.resume_from_checkpoint == "latest":
        if not complete:
            logger.info(f"no complete checkpoint in {checkpoint_dir}: starting a new run")
            return None
        return complete[-1]
    path = Path(config.resume_from_checkpoint)
    if not (path / TRAINING_STATE).exists():
        choices = f"pick one of {[p.name for p in complete]}" if complete else "start without --resume_from_checkpoint"
        raise SystemExit(f"error: {path} is not a complete checkpoint (no {TRAINING_STATE}): {choices}.")
    return path


def load_unet_config(name_or_path: str) -> dict:
    """A UNet2DModel config from a file or folder, refusing configs of other classes (a scheduler's, say)."""
    try:
        unet_config = dict(UNet2DModel.load_config(name_or_path))
    except (OSError, ValueError) as error:
        raise ValueError(f"--model_config_name_or_path {name_or_path}: cannot read a UNet2DModel config "
                         f"({' '.join(str(error).split())[:200]}); pass a unet/config.json file or folder.") from None
    if unet_config.get("_class_name") not in ("UNet2DModel", "DDPMUNet2DModel"):
        raise ValueError(f"--model_config_name_or_path {name_or_path} is a {unet_config.get('_class_name')} config, "
                         "not a UNet2DModel's: pass a unet/config.json, or use --model_preset.")
    return unet_config


def check_checkpoint_files(checkpoint: Path) -> None:
    """Read what resuming needs before Accelerate does, so a damaged file is named in the error."""
    try:
        json.loads((checkpoint / TRAINING_STATE).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{checkpoint / TRAINING_STATE} is damaged ({error})") from None
    weights = checkpoint / "model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"{weights} is missing")
    try:
        with safe_open(str(weights), framework="pt") as reader:
            reader.keys()
    except Exception as error:
        raise ValueError(f"{weights} is truncated or not safetensors ({error})") from None


def check_writable(output_dir: Path) -> None:
    """Fail at start, not at the first checkpoint, when the output folder cannot be written."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as error:
        raise SystemExit(f"error: cannot write to --output_dir {output_dir} ({error.strerror or error}): "
                         "choose a writable folder.") from None


def fsync_tree(folder: Path, files: bool = True) -> None:
    """Flush a folder (and its files) to disk, so a renamed checkpoint survives a power loss intact."""
    paths = [p for p in folder.rglob("*") if p.is_file()] if files else []
    for path in paths + [folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def prune_checkpoints(checkpoint_dir: Path, keep: int | None) -> None:
    """After a checkpoint was written: drop debris of killed writes, and the oldest checkpoints beyond `keep`."""
    for debris in checkpoint_dir.glob(".partial-checkpoint-*"):
        shutil.rmtree(debris)
    if not keep:
        return
    for old in complete_checkpoints(checkpoint_dir)[:-keep]:
        shutil.rmtree(old)


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


def sample_grid(unet, ema, noise_scheduler, config: TrainConfig):
    """A grid of eval_batch_size samples from the EMA weights, with a fixed seed so grids are comparable."""
    with ema_weights(unet, ema):
        pipeline = hf_ddpm.DDPMPipeline(unet=unet, scheduler=hf_ddpm.DDPMScheduler.from_config(noise_scheduler.config))
        pipeline.set_progress_bar_config(disable=True)
        generator = torch.Generator(unet.device).manual_seed(config.seed)
        images = pipeline(config.eval_batch_size, generator, config.ddpm_num_inference_steps).images
    rows = math.isqrt(len(images))
    while len(images) % rows:  # the squarest grid that holds every image
        rows -= 1
    return make_image_grid(images, rows, len(images) // rows)


def load_eval_images(config: TrainConfig, unet) -> torch.Tensor:
    """eval_num_images held-out images (the source's test split) for the periodic bits/dim."""
    if config.dataset_name is None and config.train_data_dir is None and config.idx_images is None:
        raw = ArrayImages(load_fashion_mnist("test"), "fashion_mnist test")
    else:
        raw = load_image_dataset(dataset_name=config.dataset_name, dataset_config_name=config.dataset_config_name,
                                 train_data_dir=config.train_data_dir, idx_images=config.idx_images,
                                 image_column=config.image_column, split="test", cache_dir=config.cache_dir)
    dataset = ImageDataset(raw, resolution=unet.config.sample_size, num_channels=unet.config.in_channels, center_crop=True)
    return torch.stack([dataset[i]["pixel_values"] for i in range(min(config.eval_num_images, len(dataset)))])


def evaluate_bpd(unet, ema, noise_scheduler, images: torch.Tensor, config: TrainConfig) -> float:
    """Mean bits/dim (the paper's Table 2 bound) of the held-out images under the EMA weights."""
    with ema_weights(unet, ema):
        likelihood = hf_ddpm.DDPMLikelihoodPipeline(unet=unet, scheduler=noise_scheduler)
        likelihood.set_progress_bar_config(disable=True)
        return likelihood(images, generator=torch.Generator(unet.device).manual_seed(config.seed)).bpd.mean().item()


def training_facts(config: TrainConfig, unet, noise_scheduler, world: int, global_batch: int, seconds: float) -> dict:
    """What the model card reports about this run (no paths or secrets: the card is public)."""
    dataset = config.dataset_name or (Path(config.train_data_dir or config.idx_images or "").name or "fashion_mnist")
    if torch.cuda.is_available():
        hardware = f"{world} x {torch.cuda.get_device_name()}"
    else:
        hardware = f"{world} x CPU process ({torch.get_num_threads()} threads each)"
    scheduler_config = noise_scheduler.config
    return {
        "dataset": dataset, "dataset_config": config.dataset_config_name, "resolution": unet.config.sample_size,
        "channels": unet.config.in_channels, "unet_preset": None if config.model_config_name_or_path else config.model_preset,
        "num_parameters": sum(p.numel() for p in unet.parameters()), "beta_schedule": scheduler_config.beta_schedule,
        "num_train_timesteps": scheduler_config.num_train_timesteps, "prediction_type": scheduler_config.prediction_type,
        "variance_type": scheduler_config.variance_type, "loss_type": config.loss_type,
        "loss_weighting": config.loss_weighting, "max_train_steps": config.max_train_steps,
        "train_batch_size": global_batch, "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "learning_rate": config.learning_rate, "lr_warmup_steps": config.lr_warmup_steps,
        "adam_beta1": config.adam_beta1, "adam_beta2": config.adam_beta2, "adam_weight_decay": config.adam_weight_decay,
        "max_grad_norm": config.max_grad_norm, "dropout": unet.config.dropout, "use_ema": config.use_ema,
        "ema_decay": config.ema_max_decay if config.use_ema else None, "mixed_precision": config.mixed_precision,
        "hardware": hardware, "num_processes": world, "training_time_hours": round(seconds / 3600, 3),
        "seed": config.seed, "random_flip": config.random_flip,
    }


def save_final_pipeline(unet, ema, noise_scheduler, config: TrainConfig, pipeline_dir: Path) -> None:
    """The EMA pipeline as safetensors with a sample grid, written beside and renamed into place when complete."""
    if ema is not None:
        ema.copy_to(unet.parameters())  # training is over: the shared model is the EMA one
    partial = pipeline_dir.with_name(".partial-pipeline")
    shutil.rmtree(partial, ignore_errors=True)
    pipeline = hf_ddpm.DDPMPipeline(unet=unet, scheduler=noise_scheduler)
    pipeline.save_pretrained(partial, safe_serialization=True)
    sample_grid(unet, None, noise_scheduler, config).save(partial / "samples.png")
    if pipeline_dir.exists():  # only with --overwrite_output_dir: keep the previous pipeline beside it
        os.replace(pipeline_dir, pipeline_dir.with_name(f"pipeline-replaced-{int(time.time())}"))
    os.replace(partial, pipeline_dir)
    logger.info(f"saved the {'EMA ' if ema is not None else ''}pipeline to {pipeline_dir}")


if __name__ == "__main__":
    try:
        main(parse_config())
    except (ValueError, FileNotFoundError, NotADirectoryError) as error:  # bad input: one line, no traceback
        raise SystemExit(f"error: {' '.join(str(error).split())}") from None
