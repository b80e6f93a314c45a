"""Train a DDPM (Ho, Jain & Abbeel 2020) with Accelerate, on one CPU or many GPUs.

    accelerate launch training/train.py --config fast_cpu                   # the CPU demo (minutes, 2 cores)
    accelerate launch --multi_gpu training/train.py --config cifar10_paper --dataset_name cifar10

Options (training/config.py) keep the names of diffusers' `examples/unconditional_image_generation/
train_unconditional.py` where they overlap. Precedence: defaults < `--config` preset (YAML in training/configs/,
or a path) < flags. Every option is checked, and the data against the model, before anything is written.

Reproducibility and resuming: every random draw of optimizer step s (which images, their flips, the noise,
the timesteps, dropout) is derived from (seed, s), and the images/noise/timesteps of a step are drawn for the
whole global batch and then sliced per process. So a resumed run repeats the uninterrupted run exactly, and a
run on N processes sees the same data, noise and timesteps as one process with the same global batch.

The script reads top to bottom: setup, data, model, optimizer, resume, the loop (step, log, checkpoint, sample
grid, eval), saving; the helpers follow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration
from diffusers import UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

import hf_ddpm
from hf_ddpm.data import ImageDataset, flip_horizontally
from hf_ddpm.final_pipeline import ExportFacts
from hf_ddpm.gaussian_diffusion import DiffusionObjective
from hf_ddpm.hub import push_pipeline
from hf_ddpm.options import RunFailure, UsageError, debug_requested, run_guarded
from hf_ddpm.timestep_sampling import LossSecondMomentSampler, UniformTimestepSampler

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this script's modules, also when run through runpy
from checkpoints import Checkpointer  # noqa: E402
from config import PROG, parse_config, parse_duration  # noqa: E402
from inputs import build_unet_config, check_data_fits_model, load_eval_images, open_images  # noqa: E402
from outputs import (check_writable, evaluate_bpd, run_record, save_final_pipeline, save_sample_grid,  # noqa: E402
                     start_trackers, write_run_status)
from performance import (adam_implementation, allow_tf32, check_compiled_gradients, match_parameter_layouts,  # noqa: E402
                         to_device)
from stopping import EXIT_RESUMABLE, StopSignal, resume_command, watch_launcher  # noqa: E402

logger = get_logger(__name__)


def main(argv: list[str] | None = None) -> None:
    # ------------------------------------------------------------------------------------------- setup
    watch_launcher()
    config = parse_config(argv, description=__doc__)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    output_dir = Path(config.output_dir).resolve()  # one folder however spelled ('new/../run' is run, new or not)
    pipeline_dir = output_dir / "pipeline"
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        log_with=config.logger,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / config.logging_dir)),
    )
    layout = BatchLayout(config.seed, config.train_batch_size, config.gradient_accumulation_steps,
                         accelerator.num_processes, accelerator.process_index)
    adam_kernels = adam_implementation(config.adam_implementation, accelerator.device)
    checkpointer = Checkpointer(accelerator, output_dir / "checkpoints", config.checkpoints_total_limit)
    resume_from = checkpointer.resume_point(config.resume_from_checkpoint, pipeline_dir, config.overwrite_output_dir)
    unet_config = build_unet_config(config)

    # -------------------------------------------------------------------------------------------- data
    raw_images = open_images(config.image_source(), config.max_train_samples)
    check_data_fits_model(raw_images, unet_config, config.model_flag, config.resolution, config.convert_channels)
    dataset = ImageDataset(raw_images, resolution=unet_config["sample_size"], num_channels=unet_config["in_channels"],
                           center_crop=config.center_crop, seed=config.seed)
    if len(dataset) < layout.global_batch:
        raise UsageError(f"{len(dataset)} training images is fewer than one global batch of {layout.global_batch}",
                         "--train_batch_size", "lower --train_batch_size or --gradient_accumulation_steps, or add images")
    steps_per_epoch = len(dataset) // layout.global_batch  # each epoch drops its last partial global batch
    image_shape = (unet_config["in_channels"], *dataset.image_size)
    eval_images = None
    if config.eval_steps:
        eval_images = load_eval_images(config.image_source(), unet_config, config.eval_num_images)
    # Every check passed: from here on the run writes into --output_dir.
    if accelerator.is_main_process:
        check_writable(output_dir)
    if config.overwrite_output_dir and not checkpointer.holds(resume_from):  # a new run, or another run's checkpoint
        checkpointer.set_aside_earlier_run(output_dir / config.logging_dir, output_dir / "samples")

    # ------------------------------------------------------------------------------------------- model
    torch.manual_seed(config.seed)  # the initial weights
    model = hf_ddpm.DDPMUNet2DModel.from_config(unet_config)
    if config.gradient_checkpointing:  # activations recomputed in the backward pass: memory for compute
        model.enable_gradient_checkpointing()
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    if config.allow_tf32:
        allow_tf32()
    noise_scheduler = hf_ddpm.DDPMScheduler(
        num_train_timesteps=config.ddpm_num_steps,
        beta_schedule=config.ddpm_beta_schedule,
        prediction_type=config.prediction_type,
        variance_type=config.resolved_variance_type,
    )
    objective = DiffusionObjective(config.loss_type, config.loss_weighting, config.snr_gamma, config.p2_k, config.p2_gamma)
    # draws t (and weights 1 / (T p_t)) for the global batch; the same state on every process, saved in checkpoints
    timestep_sampler = (UniformTimestepSampler(config.ddpm_num_steps) if config.timestep_sampler == "uniform" else
                        LossSecondMomentSampler(config.ddpm_num_steps, config.timestep_sampler_history))

    # ------------------------------------------------------------------------------ optimizer and EMA
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
        **adam_kernels,
    )
    # Resumed with --channels_last on one side only, Adam's moments come back in the other memory format; fused
    # AdamW pairs elements by memory order (silently wrong updates), so they take their weights' layout again.
    optimizer.register_load_state_dict_post_hook(match_parameter_layouts)
    # Not passed to accelerator.prepare: Accelerate would step it once per process, and diffusers' example
    # sizes it in micro-steps; here it advances exactly once per optimizer step.
    lr_scheduler = get_scheduler(
        config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps, num_training_steps=config.max_train_steps
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    unet = accelerator.unwrap_model(model)
    if config.compile:
        # Only the training step runs compiled: `unet` (sample grids, evaluation, the pipeline) and Accelerate's
        # checkpoints keep the plain module, so saved names have no `_orig_mod.` and sampling never recompiles.
        # Compiled dropout draws eager PyTorch's masks (fallback_random), so a compiled run, and a resume across
        # --compile, gives the plain run's results within rounding.
        from torch._inductor import config as inductor_config

        inductor_config.fallback_random = True
        # diffusers asks its lru_cache'd is_torch_version inside the forward (upsampling, checkpointing); Dynamo's
        # warning about tracing through the cache is harmless for a version check and nothing a user can act on.
        warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`-wrapped function")
        compiled = torch.compile(model, mode=config.compile_mode)
        check_compiled_gradients(model, compiled, unet, (layout.batch_size, *image_shape), config.ddpm_num_steps,
                                 torch.channels_last if config.channels_last else torch.contiguous_format,
                                 half_precision=config.mixed_precision != "no")
        model = compiled
    ema = None
    if config.use_ema:  # fp32 shadow weights of the fp32 master parameters, updated with batched (foreach) kernels
        ema = EMAModel(unet.parameters(), decay=config.ema_max_decay, use_ema_warmup=config.ema_warmup,
                       inv_gamma=config.ema_inv_gamma, power=config.ema_power, foreach=True, model_cls=UNet2DModel,
                       model_config=unet.config)
        ema.to(accelerator.device)

    # ------------------------------------------------------------------------------------------ resume
    # The loop's position, saved in checkpoints; the loss of the current log interval travels along so a
    # resumed run logs the very same values.
    state = LoopState()
    loss_sum = torch.zeros((), device=accelerator.device)
    if resume_from is not None:
        saved = checkpointer.load(resume_from, config.recorded(), ema, timestep_sampler)
        lr_scheduler.load_state_dict(saved.pop("lr_scheduler"))
        loss_sum.fill_(saved.pop("loss_sum"))  # every process resumes with the all-process mean
        state = LoopState(**saved)
        logger.info(f"resumed from {resume_from} at step {state.global_step}")

    if accelerator.is_main_process:
        start_trackers(accelerator, config, output_dir)
    logger.info(
        f"{len(dataset)} images, global batch {layout.global_batch} = {layout.batch_size} per process x {layout.world} "
        f"processes x {layout.accumulation} accumulation steps, {config.max_train_steps} optimizer steps"
    )
    stop = StopSignal(parse_duration(config.max_train_time) if config.max_train_time else None)
    if accelerator.is_main_process:
        write_run_status(output_dir, "running", step=state.global_step, max_train_steps=config.max_train_steps)

    # -------------------------------------------------------------------------------------------- loop
    with tqdm(total=config.max_train_steps, initial=state.global_step, desc="train",
              disable=not accelerator.is_local_main_process) as progress:  # closed before any error is printed
        throughput = Throughput()
        model.train()
        # One loader for the rest of the run: its workers start once and prefetch across epoch boundaries.
        batches = iter(layout.loader(dataset, state.global_step, config.max_train_steps, steps_per_epoch,
                                     config.dataloader_num_workers, pin_memory=accelerator.device.type == "cuda"))
        while state.global_step < config.max_train_steps:
            first_step = state.global_step % steps_per_epoch
            last_step = min(steps_per_epoch, first_step + config.max_train_steps - state.global_step)
            for _ in range(first_step, last_step):
                step_start = time.perf_counter()
                grad_norm = train_step(state.global_step, batches, layout, image_shape, model, optimizer, lr_scheduler,
                                       ema, accelerator, noise_scheduler, objective, loss_sum, config.random_flip,
                                       config.max_grad_norm, timestep_sampler, config.channels_last)
                state.global_step = step = state.global_step + 1
                state.steps_since_log += 1
                state.train_seconds += time.perf_counter() - step_start
                throughput.images += layout.global_batch
                progress.update(1)

                final_step = step == config.max_train_steps
                # A stop is agreed on by all processes at log steps (a collective); alone, at every step.
                may_stop = layout.world == 1 or step % config.logging_steps == 0
                stop_reason = stop.agreed(accelerator) if may_stop else None
                if step % config.logging_steps == 0 or final_step:
                    log_metrics(accelerator, progress, state, loss_sum, grad_norm, lr_scheduler, ema, throughput)
                if step % config.checkpointing_steps == 0 or final_step or stop_reason:
                    record = run_record(config, unet, layout.world, layout.global_batch, len(dataset), step,
                                        state.train_seconds)
                    checkpoint = checkpointer.save(
                        step, loop_checkpoint(accelerator, state, loss_sum, lr_scheduler, config.recorded()), ema,
                        timestep_sampler, ExportFacts(unet, noise_scheduler, record))
                if stop_reason and not final_step:  # at the final step the run finishes instead
                    stop_resumably(accelerator, stop_reason, config, step, checkpoint, output_dir,
                                   sys.argv[1:] if argv is None else argv)
                if accelerator.is_main_process and step % config.save_images_steps == 0:
                    save_sample_grid(accelerator, unet, ema, noise_scheduler, output_dir / "samples", step,
                                     config.eval_batch_size, config.seed, config.ddpm_num_inference_steps)
                    throughput.restart()  # keep sampling time out of the throughput
                if eval_images is not None and step % config.eval_steps == 0 and accelerator.is_main_process:
                    accelerator.log({"eval/bpd": evaluate_bpd(unet, ema, noise_scheduler, eval_images, config.seed)},
                                    step=step)
                    throughput.restart()

    # ------------------------------------------------------------------------------------------ saving
    if accelerator.is_main_process:  # the folder `hf-ddpm export` writes from the final checkpoint
        record = run_record(config, unet, layout.world, layout.global_batch, len(dataset), state.global_step,
                            state.train_seconds)
        save_final_pipeline(unet, ema, noise_scheduler, pipeline_dir, record, config.recorded())
        if config.push_to_hub:  # only the pipeline folder goes up: never checkpoints or logs
            url = push_pipeline(pipeline_dir, config.hub_model_id or output_dir.resolve().name, token=config.hub_token,
                                private=config.hub_private_repo)
            logger.info(f"pushed {pipeline_dir} to {url}")
        write_run_status(output_dir, "finished", step=state.global_step, pipeline=str(pipeline_dir))
    accelerator.wait_for_everyone()
    accelerator.end_training()


# ------------------------------------------------------------------------------------- the loop's parts
@dataclass
class LoopState:
    """Where the loop is: saved in every checkpoint (with the log interval's loss and the LR schedule)."""

    global_step: int = 0
    steps_since_log: int = 0
    train_seconds: float = 0.0


def derive_seed(*parts) -> int:
    """A 63-bit seed from (seed, purpose, step, ...): stable across processes and Python runs, unlike hash()."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def seeded_generator(*parts) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


@dataclass(frozen=True)
class BatchLayout:
    """How one optimizer step's global batch is drawn and split over processes and accumulation micro-steps."""

    seed: int
    batch_size: int  # per process and micro-step
    accumulation: int
    world: int
    rank: int

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world * self.accumulation

    def mine(self, micro: int) -> slice:
        """This process's slice of the global batch in micro-step `micro`."""
        start = (micro * self.world + self.rank) * self.batch_size
        return slice(start, start + self.batch_size)

    def loader(self, dataset, first_step: int, last_step: int, steps_per_epoch: int, num_workers: int,
               pin_memory: bool):
        """This process's micro-batches for optimizer steps [first_step, last_step) of the run, in order.

        Epoch e's permutation depends on (seed, e) only; step s of an epoch uses its global_batch consecutive
        entries, of which micro-batch m of process r takes the slice `mine(m)`. One DataLoader serves every epoch
        (each sample names its epoch, for its random crop), so its workers start once and stay: what
        persistent_workers would give a DataLoader per epoch, without workers that keep a stale epoch.
        """
        return torch.utils.data.DataLoader(EpochSamples(dataset), num_workers=num_workers, pin_memory=pin_memory,
                                           batch_sampler=self._batches(len(dataset), first_step, last_step,
                                                                       steps_per_epoch))

    def _batches(self, dataset_size: int, first_step: int, last_step: int, steps_per_epoch: int):
        """The (epoch, index) lists of `loader`, one permutation per epoch, made as the epoch begins."""
        order = None
        for step in range(first_step, last_step):
            epoch, step_in_epoch = divmod(step, steps_per_epoch)
            if order is None or step_in_epoch == 0:
                order = torch.randperm(dataset_size, generator=seeded_generator(self.seed, "epoch", epoch)).tolist()
            start = step_in_epoch * self.global_batch
            for micro in range(self.accumulation):
                mine = self.mine(micro)
                yield [(epoch, i) for i in order[start + mine.start : start + mine.stop]]

    def draws(self, step: int, image_shape: tuple, timestep_sampler):
        """Step `step`'s noise, timesteps (with their loss weights) and flips for the whole global batch (so every
        layout sees the same), and this process's dropout seed. The uniform sampler draws t exactly as
        `torch.randint(0, T, (global_batch,), generator=rng)`."""
        rng = seeded_generator(self.seed, "step", step)
        noise = torch.randn((self.global_batch, *image_shape), generator=rng)
        timesteps, weights = timestep_sampler.sample(self.global_batch, generator=rng)
        flips = torch.rand(self.global_batch, generator=rng) < 0.5
        torch.manual_seed(derive_seed(self.seed, "dropout", step, self.rank))
        return noise, timesteps, weights, flips


class EpochSamples(torch.utils.data.Dataset):
    """An ImageDataset's samples addressed as (epoch, index): a DataLoader worker's copy of the dataset then crops
    for the epoch each sample belongs to, however long the worker lives."""

    def __init__(self, dataset: ImageDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        self.dataset.set_epoch(epoch)
        return self.dataset[index]


def train_step(step, batches, layout: BatchLayout, image_shape: tuple, model, optimizer, lr_scheduler, ema, accelerator,
               noise_scheduler, objective: DiffusionObjective, loss_sum: torch.Tensor, random_flip: bool,
               max_grad_norm: float, timestep_sampler, channels_last: bool):
    """One optimizer step over `layout.accumulation` micro-batches; adds the loss to `loss_sum`, returns the grad norm
    (a tensor on the device).

    Each example's loss is weighted by its timestep's 1 / (T p_t) (1 when uniform); an importance sampler is then
    updated with the bound terms of the whole global batch, gathered in its order, so every process keeps the same
    sampler state.

    No host sync: nothing here reads a device tensor on the host, and host tensors reach the device asynchronously,
    so the host queues the next steps while the GPU works; the loop reads the loss and grad norm at log steps only.
    Two exceptions: --timestep_sampler loss-second-moment reads the gathered bound terms every step (the next draw
    of t depends on them), and --mixed_precision fp16's GradScaler reads its overflow flag unless AdamW is fused.
    """
    device = accelerator.device
    # The math without the scheduler's input checks: t is drawn in [0, T) here, and checking it would read it on
    # the host every micro-step.
    diffusion = noise_scheduler.diffusion
    noise, timesteps, weights, flips = layout.draws(step, image_shape, timestep_sampler)
    learns = isinstance(timestep_sampler, LossSecondMomentSampler)
    bound_terms = []
    for micro in range(layout.accumulation):
        mine = layout.mine(micro)
        clean = to_device(next(batches)["pixel_values"], device)
        if random_flip:
            clean = flip_horizontally(clean, to_device(flips[mine], device))
        eps, t = to_device(noise[mine], device), to_device(timesteps[mine], device)
        noisy = diffusion.q_sample(clean, t, eps)  # in fp32: noise is never added in half precision
        if channels_last:
            noisy = noisy.contiguous(memory_format=torch.channels_last)
        syncing = micro == layout.accumulation - 1
        with nullcontext() if syncing else accelerator.no_sync(model):
            model_output = model(noisy, t).sample.float()
            losses = objective.losses(diffusion, model_output, clean, noisy, eps, t)
            loss = (losses["loss"] * to_device(weights[mine], device)).mean() / layout.accumulation
            accelerator.backward(loss)
        loss_sum += loss.detach()
        if learns:  # the L_vlb terms (hybrid: its VLB term alone), not the weighted loss
            bound_terms.append(accelerator.gather(losses["vb"].detach().contiguous()))
    if learns:  # gathered per micro-step in rank order: micro-step m, process r holds layout.mine(m)
        bound_terms = torch.cat(bound_terms).cpu()  # the host sync of loss-second-moment (see the docstring)
        if torch.isfinite(bound_terms).all():  # a NaN/Inf stops the run at the next log or checkpoint (mean_loss)
            timestep_sampler.update(timesteps, bound_terms)
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    if ema is not None:
        ema.step(model.parameters())  # the UNet's own: no unwrapping, which would rewire a compiled DDP model
    return grad_norm


def stop_resumably(accelerator, reason: str, config, step: int, checkpoint: Path, output_dir: Path, argv) -> None:
    """After the checkpoint of `step`: one log line with the step, the checkpoint and the resume command, the same
    in OUTPUT_DIR/run_status.json, and exit status EXIT_RESUMABLE."""
    why = f"--max_train_time {config.max_train_time}" if reason == "--max_train_time" else reason
    resume = resume_command(argv)
    logger.info(f"stopped at step {step} ({why}), resumable (exit status {EXIT_RESUMABLE}): checkpoint {checkpoint}; "
                f"resume: {resume}")
    if accelerator.is_main_process:
        write_run_status(output_dir, "stopped", step=step, max_train_steps=config.max_train_steps, reason=why,
                         checkpoint=str(checkpoint), exit_status=EXIT_RESUMABLE, resume=resume)
    accelerator.end_training()
    sys.exit(EXIT_RESUMABLE)


class Throughput:
    """Images per second since the last log (sampling and evaluation time left out)."""

    def __init__(self):
        self.restart()

    def restart(self) -> None:
        self.start, self.images = time.perf_counter(), 0

    def images_per_second(self) -> float:
        return self.images / (time.perf_counter() - self.start)


def mean_loss(accelerator, loss_sum: torch.Tensor, state: LoopState) -> float:
    """Mean loss over the current log interval (all processes), refusing to go on from a NaN/Inf."""
    value = accelerator.reduce(loss_sum, reduction="mean").item() / max(1, state.steps_since_log)
    if not math.isfinite(value):
        first = state.global_step - state.steps_since_log + 1
        raise RunFailure(f"the loss became {value} between steps {first} and {state.global_step}; nothing after the "
                         "last checkpoint was saved", "--learning_rate",
                         "lower --learning_rate, or use bf16 instead of fp16, then resume with --resume_from_checkpoint latest")
    return value


def loop_checkpoint(accelerator, state: LoopState, loss_sum, lr_scheduler, options: dict) -> dict:
    """What a checkpoint keeps of the loop, beside the weights: never the state of a NaN/Inf loss."""
    mean_loss(accelerator, loss_sum, state)
    return {**dataclasses.asdict(state), "loss_sum": accelerator.reduce(loss_sum, reduction="mean").item(),
            "lr_scheduler": lr_scheduler.state_dict(), "options": options}


def log_metrics(accelerator, progress, state: LoopState, loss_sum, grad_norm, lr_scheduler, ema, throughput) -> None:
    """Log the interval's mean loss (one host sync per log interval), LR, grad norm, img/s; start a new interval."""
    loss = mean_loss(accelerator, loss_sum, state)
    images_per_second = throughput.images_per_second()
    logs = {"train/loss": loss, "train/lr": lr_scheduler.get_last_lr()[0], "train/grad_norm": float(grad_norm),
            "train/images_per_sec": images_per_second}
    if ema is not None:
        logs["train/ema_decay"] = ema.cur_decay_value
    accelerator.log(logs, step=state.global_step)
    progress.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_second:.1f}")
    loss_sum.zero_()
    state.steps_since_log = 0
    throughput.restart()


if __name__ == "__main__":
    sys.exit(run_guarded(main, PROG, debug=debug_requested()))
