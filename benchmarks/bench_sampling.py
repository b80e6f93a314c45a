"""Sampling speed: hf_ddpm.DDPMPipeline vs stock diffusers.DDPMPipeline vs the bare UNet (the limit).

Same weights, inputs, generator seed and number of steps for all three, measured interleaved in one run and
reported as medians. The per-step overhead is (pipeline time - bare UNet time) / steps: what the scheduler and
the loop add around the network. A scheduler-only loop (fake model outputs, no UNet) isolates it further.

    python benchmarks/bench_sampling.py                      # small28 preset, CPU
    python benchmarks/bench_sampling.py --preset cifar10 --steps 20 --batch-size 8 --device cuda
"""

from __future__ import annotations

import argparse
import json
import diffusers
import torch

import hf_ddpm
from timing import interleaved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small28")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    torch.manual_seed(0)
    unet = hf_ddpm.DDPMUNet2DModel.from_preset(args.preset).to(device=device, dtype=dtype).eval()
    ours = hf_ddpm.DDPMPipeline(unet=unet, scheduler=hf_ddpm.DDPMScheduler())
    stock = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler())
    for pipeline in (ours, stock):
        pipeline.set_progress_bar_config(disable=True)
    size = unet.config.sample_size
    x = torch.randn(args.batch_size, unet.config.in_channels, size, size, device=device, dtype=dtype)

    def bare_unet():
        with torch.no_grad():
            for t in stock.scheduler.timesteps:
                unet(x, t)

    def run(pipeline):
        return lambda: pipeline(args.batch_size, torch.Generator(device).manual_seed(0), args.steps, output_type="pt")

    stock.scheduler.set_timesteps(args.steps)
    fake_outputs = [torch.randn_like(x) for _ in range(4)]

    def scheduler_loop(scheduler):
        def loop():
            scheduler.set_timesteps(args.steps)
            sample, generator = x, torch.Generator(device).manual_seed(0)
            for i, t in enumerate(scheduler.timesteps):
                sample = scheduler.step(fake_outputs[i % 4], t, sample, generator=generator).prev_sample
        return loop

    cases = {
        "bare UNet x steps": bare_unet,
        "stock DDPMPipeline": run(stock),
        "hf_ddpm DDPMPipeline": run(ours),
        "stock scheduler loop": scheduler_loop(diffusers.DDPMScheduler()),
        "hf_ddpm scheduler loop": scheduler_loop(hf_ddpm.DDPMScheduler()),
    }
    median = interleaved(cases, args.repeats, device)

    same = torch.allclose(run(ours)().images, run(stock)().images, atol=1e-3) if dtype == torch.float32 else None
    overhead_ours = (median["hf_ddpm DDPMPipeline"] - median["bare UNet x steps"]) / args.steps
    overhead_stock = (median["stock DDPMPipeline"] - median["bare UNet x steps"]) / args.steps
    results = {
        "device": str(device), "dtype": args.dtype, "preset": args.preset, "steps": args.steps,
        "batch_size": args.batch_size, "repeats": args.repeats, "torch": torch.__version__,
        "diffusers": diffusers.__version__, "median_seconds": median,
        "hf_ddpm / stock pipeline": median["hf_ddpm DDPMPipeline"] / median["stock DDPMPipeline"],
        "hf_ddpm pipeline / bare UNet": median["hf_ddpm DDPMPipeline"] / median["bare UNet x steps"],
        "stock pipeline / bare UNet": median["stock DDPMPipeline"] / median["bare UNet x steps"],
        "per-step overhead ms (hf_ddpm, stock)": (1e3 * overhead_ours, 1e3 * overhead_stock),
        "hf_ddpm / stock scheduler-only step": median["hf_ddpm scheduler loop"] / median["stock scheduler loop"],
        "scheduler-only step us (hf_ddpm, stock)": (
            1e6 * median["hf_ddpm scheduler loop"] / args.steps, 1e6 * median["stock scheduler loop"] / args.steps),
        "same images as stock": same,
    }
    print(f"| case | median s ({args.preset}, batch {args.batch_size}, {args.steps} steps, {device}, {args.dtype}) |")
    print("| --- | --- |")
    for name, value in median.items():
        print(f"| {name} | {value:.4f} |")
    for key, value in results.items():
        if key not in ("median_seconds",) and ("/" in key or "overhead" in key or "step us" in key or key == "same images as stock"):
            print(f"{key}: {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
