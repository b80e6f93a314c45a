"""Training throughput (images/s): training/train.py vs a loop equivalent to diffusers' train_unconditional.py
vs the bare forward + backward + optimizer step (the limit). Same model, batch, precision and data.

train.py runs as a subprocess (as users run it) and its own logged `train/images_per_sec` is read back; the
other two run in this process. Run them on an otherwise idle machine: the numbers are throughput, not ratios
measured in lock step.

    python benchmarks/bench_training.py                     # small28 on Fashion-MNIST, CPU, batch 32
    python benchmarks/bench_training.py --preset cifar10 --batch-size 128 --mixed-precision bf16   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import diffusers
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

import hf_ddpm
from hf_ddpm.data import ArrayImages, ImageDataset, load_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]


def images_per_second(step, batch_size: int, steps: int, warmup: int, device) -> float:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch_size * steps / (time.perf_counter() - start)


def bare_step_throughput(args, dataset) -> float:
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    model = hf_ddpm.DDPMUNet2DModel.from_preset(args.preset)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model, optimizer = accelerator.prepare(model, optimizer)
    x = torch.stack([dataset[i]["pixel_values"] for i in range(args.batch_size)]).to(accelerator.device)
    t = torch.randint(0, 1000, (args.batch_size,), device=accelerator.device)

    def step():
        loss = F.mse_loss(model(x, t).sample.float(), x.float())
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return images_per_second(step, args.batch_size, args.steps, args.warmup, accelerator.device)


def diffusers_example_throughput(args, dataset) -> float:
    """The per-step work of diffusers' train_unconditional.py (epsilon objective, EMA, clipping, LR schedule)."""
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    model = hf_ddpm.DDPMUNet2DModel.from_preset(args.preset)
    noise_scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True)
    lr_scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=500, num_training_steps=10_000)
    model, optimizer, loader, lr_scheduler = accelerator.prepare(model, optimizer, loader, lr_scheduler)
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, model_cls=diffusers.UNet2DModel,
                   model_config=model.config)
    ema.to(accelerator.device)
    batches = iter(loader)

    def step():
        clean = next(batches)["pixel_values"]
        noise = torch.randn(clean.shape, dtype=clean.dtype, device=clean.device)
        timesteps = torch.randint(0, 1000, (clean.shape[0],), device=clean.device).long()
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)
        with accelerator.accumulate(model):
            model_output = model(noisy, timesteps).sample
            loss = F.mse_loss(model_output.float(), noise.float())
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
        if accelerator.sync_gradients:
            ema.step(model.parameters())

    return images_per_second(step, args.batch_size, args.steps, args.warmup, accelerator.device)


def train_script_throughput(args) -> float:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with tempfile.TemporaryDirectory() as output_dir:
        total = args.warmup + args.steps
        command = [sys.executable, str(ROOT / "training" / "train.py"), "--model_preset", args.preset,
                   "--train_batch_size", str(args.batch_size), "--max_train_steps", str(total),
                   "--logging_steps", str(args.warmup), "--checkpointing_steps", str(10 * total),
                   "--save_images_steps", str(10 * total), "--eval_batch_size", "1", "--ddpm_num_inference_steps", "1",
                   "--mixed_precision", args.mixed_precision, "--output_dir", output_dir,
                   "--convert_channels"]  # the Fashion-MNIST default is grayscale; RGB presets take it as RGB
        subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
        events = next(Path(output_dir, "logs").rglob("events.out.tfevents*"))
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        logged = [e.value for e in accumulator.Scalars("train/images_per_sec")]
    return statistics.median(logged[1:])  # the first interval holds the warm-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small28")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    preset = hf_ddpm.UNET_PRESETS[args.preset]
    dataset = ImageDataset(ArrayImages(load_fashion_mnist("train"), "fashion_mnist"),
                           resolution=preset["sample_size"], num_channels=preset["in_channels"])

    results = {"preset": args.preset, "batch_size": args.batch_size, "mixed_precision": args.mixed_precision,
               "device": "cuda" if torch.cuda.is_available() else "cpu", "torch": torch.__version__}
    results["bare step img/s"] = bare_step_throughput(args, dataset)
    results["diffusers example loop img/s"] = diffusers_example_throughput(args, dataset)
    results["train.py img/s"] = train_script_throughput(args)
    results["train.py / diffusers example"] = results["train.py img/s"] / results["diffusers example loop img/s"]
    results["train.py / bare step"] = results["train.py img/s"] / results["bare step img/s"]
    for key, value in results.items():
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
