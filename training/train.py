"""Train a DDPM (Ho, Jain & Abbeel 2020) with Accelerate, on one CPU or many GPUs.

    accelerate launch training/train.py --config fashion_mnist_cpu          # the CPU demo (minutes, 2 cores)
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
import os
import shlex
import signal
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import psutil
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

logger = get_logger(__name__)

EXIT_RESUMABLE = 75  # sysexits' EX_TEMPFAIL: stopped early with a checkpoint; --resume_from_checkpoint latest goes on
# The launchers whose exit stops train.py (watch_launcher), recognized by a variable each sets for its processes.
LAUNCHERS = {"ACCELERATE_DYNAMO_BACKEND": "accelerate launch", "TORCHELASTIC_RUN_ID": "torchrun"}
PARENT_PID = os.getppid()  # read as the script starts: a launcher that exits before it is watched is noticed too


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


# ------------------------------------------------------------------------------------------------- speed
def adam_implementation(choice: str, device: torch.device) -> dict:
    """torch.optim.AdamW's keyword arguments for --adam_implementation on `device` (the same update; the kernels
    differ), refused before anything is written where PyTorch has no fused AdamW for the device."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices  # PyTorch's own list, as AdamW checks

    fused_devices = _get_fused_kernels_supported_devices()
    if choice == "auto":
        choice = "fused" if device.type in fused_devices else "foreach"
    elif choice == "fused" and device.type not in fused_devices:
        raise UsageError(f"PyTorch has no fused AdamW for {device.type} (only {', '.join(fused_devices)})",
                         "--adam_implementation", "use auto or foreach")
    return {"fused": choice == "fused", "foreach": choice == "foreach"}


def match_parameter_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each optimizer state tensor of a parameter's shape that parameter's memory format (strides)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def allow_tf32() -> None:
    """--allow_tf32: TensorFloat-32 in fp32 matmuls and cuDNN convolutions (NVIDIA Ampere and later only)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def check_compiled_gradients(model, compiled, unet, batch_shape: tuple, num_timesteps: int, memory_format,
                             half_precision: bool) -> None:
    """--compile: stop before training unless the compiled forward's gradients match eager PyTorch's on a random
    batch of the training shape (which compiles the graph the steps use). Compilers have had silent wrong-gradient
    bugs (PyTorch 2.13's CPU backend zeroes most of this UNet's), which a run would train on unnoticed. Rounding
    moves the gradient by well under 2% in fp32 (TF32 included) and by a few % under autocast; a bug zeroes or
    scrambles whole parameters' gradients."""
    unet.train()  # the training graph
    generator = torch.Generator().manual_seed(0)
    device = next(unet.parameters()).device
    noisy = torch.randn(batch_shape, generator=generator).to(device).contiguous(memory_format=memory_format)
    t = torch.randint(0, num_timesteps, batch_shape[:1], generator=generator).to(device)
    gradients = []
    for forward in (model, compiled):
        torch.manual_seed(0)  # the same dropout masks
        forward(noisy, t).sample.float().square().mean().backward()
        gradients.append({name: p.grad.float().clone() for name, p in unet.named_parameters() if p.grad is not None})
        unet.zero_grad(set_to_none=True)
    eager, got = gradients
    total = torch.linalg.vector_norm(torch.stack([g.norm() for g in eager.values()]))
    got = {name: got.get(name, torch.zeros_like(g)) for name, g in eager.items()}  # a missing gradient is 0
    errors = {name: (got[name] - g).norm() / g.norm() for name, g in eager.items() if g.norm() >= 1e-3 * total}
    overall = torch.linalg.vector_norm(torch.stack([(got[name] - g).norm() for name, g in eager.items()])) / total
    worst = max(errors, key=errors.get)
    if overall > (0.2 if half_precision else 0.02) or errors[worst] > 0.5:
        raise RunFailure(f"torch.compile's gradients are wrong on a test batch ({overall:.1%} off overall, "
                         f"{errors[worst]:.0%} on {worst}): a compiler bug of torch {torch.__version__} on "
                         f"{device.type}", "--compile", "train without --compile, or with another PyTorch version")


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without a host sync: on CUDA copied from pinned memory (the DataLoader's batches
    are pinned already), since a blocking copy waits for the GPU, and one from pageable memory does not overlap."""
    if device.type == "cuda" and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


# ------------------------------------------------------------------------------------------- stopping early
STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")  # SIGUSR1: SLURM's --signal=USR1@SECONDS, before the time limit
# Why a run stops early, as codes the processes can exchange (0: no reason); the launcher's exit is a SIGTERM.
STOP_REASONS = (None, "--max_train_time", "the launcher exited", *STOP_SIGNALS)


def launcher() -> str | None:
    """The launcher that started this process (`accelerate launch`, torchrun), or None for a plain `python`."""
    return next((name for variable, name in LAUNCHERS.items() if variable in os.environ), None)


def watch_launcher() -> None:
    """Under a launcher on Linux, have the kernel send this process SIGTERM when the launcher exits, even by SIGKILL
    (prctl PR_SET_PDEATHSIG), so that train.py never runs on alone: before the loop the signal ends the process,
    in the loop StopSignal checkpoints and stops. A plain `python train.py` is left to outlive its shell (nohup)."""
    if launcher() is None or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1  # <linux/prctl.h>
    if ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0) != 0:
        return  # not available (e.g. a sandbox): the launcher's own signals still reach train.py
    if os.getppid() != PARENT_PID:  # the launcher exited before prctl, so no signal will come: as if it had
        os.kill(os.getpid(), signal.SIGTERM)


class StopSignal:
    """Stops the loop resumably on SIGTERM, SIGINT or SIGUSR1, on the launcher's exit (the SIGTERM of
    watch_launcher) or after --max_train_time: the current step finishes, the loop checkpoints and exits with
    EXIT_RESUMABLE. The time counts from the start of the process."""

    def __init__(self, max_seconds: float | None = None):
        self.reason = None
        self.deadline = None if max_seconds is None else psutil.Process().create_time() + max_seconds
        self.last_check = time.time()
        for name in STOP_SIGNALS:
            if hasattr(signal, name):  # SIGUSR1 is POSIX only
                signal.signal(getattr(signal, name), self._request)

    def _request(self, signum, frame):
        if self.reason is None:
            self.reason = signal.Signals(signum).name

    def _out_of_time(self) -> bool:
        """Whether the next check, as far off as the last one was, would come after the deadline."""
        now = time.time()
        interval, self.last_check = now - self.last_check, now
        return self.deadline is not None and now + interval >= self.deadline

    def agreed(self, accelerator: Accelerator) -> str | None:
        """Why to stop at this step, the same on every process: with several, any process's reason (a collective)."""
        if self.reason is None and self._out_of_time():
            self.reason = "--max_train_time"
        # watch_launcher's SIGTERM, told apart once the launcher is gone: the kernel sends it when the launcher's
        # thread exits, which can be before the whole launcher has (os.getppid() would not have changed yet)
        if self.reason == "SIGTERM" and launcher() is not None and os.getppid() != PARENT_PID:
            self.reason = "the launcher exited"
        if accelerator.num_processes == 1:
            return self.reason
        codes = accelerator.gather(torch.tensor([STOP_REASONS.index(self.reason)], device=accelerator.device))
        self.reason = STOP_REASONS[next((code for code in codes.tolist() if code), 0)]
        return self.reason


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


def resume_command(argv: list[str]) -> str:
    """This run's command continued from its newest checkpoint: its arguments without --hub_token (never logged)
    or an earlier --resume_from_checkpoint, then `--resume_from_checkpoint latest`; a launcher's own options, which
    train.py does not see, are shown as `...`."""
    kept, skip_value = [], False
    for arg in argv:
        if skip_value:
            skip_value = False
        elif arg.split("=", 1)[0] in ("--hub_token", "--resume_from_checkpoint"):
            skip_value = "=" not in arg
        else:
            kept.append(arg)
    start = [*launcher().split(), "..."] if launcher() else ["python"]
    return " ".join([*start, shlex.join([sys.argv[0], *kept, "--resume_from_checkpoint", "latest"])])


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
