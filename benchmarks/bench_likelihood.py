"""Bits/dim speed: DDPMLikelihoodPipeline on B images x T steps vs the bare UNet on the same B*T (image, t) pairs at
the same batch size (the limit); and FID feature-extraction throughput of the 2015-12-05 Inception.

The likelihood pipeline batches (image, timestep) pairs `--model-batch-size` at a time; everything it does besides
the UNet (noise, q_sample, the KL / decoder terms, x0 MSE) is the overhead, reported as the ratio
pipeline time / bare UNet time, and timed on its own (the same loop with a fixed fake model output) as a fraction
of the UNet's time, which is steadier than the ratio on a shared machine. Cases are run interleaved, medians.

The Inception part times `InceptionV3Features.extract` (TF1 resize of 28x28 grayscale images to 299x299, scaling,
pool3) against the bare TorchScript network on already-resized inputs, in images per second.

    python benchmarks/bench_likelihood.py                                  # small28 preset, T = 100, CPU
    python benchmarks/bench_likelihood.py --preset cifar10 --timesteps 1000 --num-images 16 --device cuda
"""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import dataclass

import torch

import hf_ddpm
from hf_ddpm.artifacts import default_device
from hf_ddpm.metrics import InceptionV3Features, resize_bilinear_tf1
from hf_ddpm.options import (DocstringHelpFormatter, OptionParser, check_device, option, output_file,
                             run_config)
from timing import interleaved

PROG = "bench_likelihood.py"




@dataclass
class LikelihoodBenchConfig:
    """What bench_likelihood.py measures: its flags, their defaults and checks."""

    preset: str = option("small28", "the UNet to time (hf_ddpm.UNET_PRESETS), randomly initialized",
                         choices=tuple(hf_ddpm.UNET_PRESETS))
    num_images: int = option(4, "images B whose bits/dim are computed (random uint8 at the preset's size)",
                             range="[1, inf)")
    timesteps: int = option(100, "diffusion steps T of the scheduler: bits/dim takes B x T (image, t) pairs",
                            range="[1, inf)")
    model_batch_size: int = option(100, "(image, t) pairs per UNet call, for the pipeline and the bare UNet alike",
                                   range="[1, inf)")
    feature_batch_size: int = option(25, "28x28 images per Inception call in the feature-extraction part",
                                     range="[1, inf)")
    repeats: int = option(3, "timed rounds of every case, run interleaved after one warm-up round; medians are "
                             "reported", range="[1, inf)")
    threads: int | None = option(None, "torch CPU threads (default: torch's)", range="[1, inf)")
    device: str | None = option(None, "cpu, cuda, cuda:N, mps ... (default: cuda when available, else cpu)",
                                check=check_device)
    skip_inception: bool = option(False, "time bits/dim only, not the Inception feature extraction",
                                  free="a switch: on or off")
    json: str | None = option(None, "also write the results to this JSON file", check=output_file)


def build_parser() -> OptionParser:
    return OptionParser(LikelihoodBenchConfig, prog=PROG, description=__doc__, formatter_class=DocstringHelpFormatter)


def bench_likelihood(args, device) -> dict:
    torch.manual_seed(0)
    unet = hf_ddpm.DDPMUNet2DModel.from_preset(args.preset).to(device).eval()
    scheduler = hf_ddpm.DDPMScheduler(num_train_timesteps=args.timesteps)
    pipeline = hf_ddpm.DDPMLikelihoodPipeline(unet=unet, scheduler=scheduler)
    pipeline.set_progress_bar_config(disable=True)
    size, channels = unet.config.sample_size, unet.config.in_channels
    images = torch.randint(0, 256, (args.num_images, channels, size, size), dtype=torch.uint8)
    pairs = args.num_images * args.timesteps
    x = torch.randn(args.model_batch_size, channels, size, size, device=device)
    t = torch.randint(0, args.timesteps, (args.model_batch_size,), device=device)

    def bare_unet():
        with torch.no_grad():
            for start in range(0, pairs, args.model_batch_size):
                count = min(args.model_batch_size, pairs - start)
                unet(x[:count], t[:count])

    def likelihood():
        pipeline(images, generator=torch.Generator(device).manual_seed(0), model_batch_size=args.model_batch_size)

    x0 = images.to(device).float() * (2 / 255) - 1
    fake_output = torch.randn(args.model_batch_size, unet.config.out_channels, size, size, device=device)

    def math_only():  # what the pipeline does per batch besides the UNet, with a fixed fake model output
        generator = torch.Generator(device).manual_seed(0)
        for start in range(0, pairs, args.model_batch_size):
            index = torch.arange(start, min(start + args.model_batch_size, pairs), device=device)
            x0_batch, t_batch = x0[index // args.timesteps], index % args.timesteps
            noise = torch.randn(x0_batch.shape, generator=generator, device=device)
            x_t = scheduler.q_sample(x0_batch, t_batch, noise)
            vb = scheduler.vb_terms_bpd(fake_output[:len(index)], x0_batch, x_t, t_batch)
            ((vb["pred_x0"] - x0_batch) ** 2).mean(dim=(1, 2, 3))
        scheduler.prior_bpd(x0)

    times, _ = interleaved({"bare UNet on B*T pairs": bare_unet, "DDPMLikelihoodPipeline": likelihood,
                            "likelihood math only (no UNet)": math_only}, args.repeats, device)
    bare = times["bare UNet on B*T pairs"]
    return {
        "preset": args.preset, "num_images": args.num_images, "timesteps": args.timesteps,
        "model_batch_size": args.model_batch_size, "pairs": pairs,
        "seconds": times,
        "pairs_per_second": {name: pairs / seconds for name, seconds in times.items()},
        "ratio": times["DDPMLikelihoodPipeline"] / bare,
        "math_fraction_of_unet": times["likelihood math only (no UNet)"] / bare,
    }


def bench_inception(args, device) -> dict:
    extractor = InceptionV3Features(device=device)
    gray = torch.randint(0, 256, (args.feature_batch_size, 1, 28, 28), dtype=torch.uint8)
    resized = (resize_bilinear_tf1(gray.float(), 299).expand(-1, 3, -1, -1) - 128).div(128).to(device)

    def bare():
        with torch.inference_mode():
            extractor.model(resized)

    times, _ = interleaved({"bare TorchScript Inception (299x299 input)": bare,
                            "InceptionV3Features.extract (28x28 gray input)": lambda: extractor.extract(gray)},
                           args.repeats, device)
    return {"batch_size": args.feature_batch_size,
            "images_per_second": {name: args.feature_batch_size / s for name, s in times.items()}}


def run(args: LikelihoodBenchConfig) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or default_device())
    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "likelihood": bench_likelihood(args, device),
    }
    if not args.skip_inception:
        results["inception"] = bench_inception(args, device)
    like = results["likelihood"]
    print(f"bits/dim, {like['preset']}: {like['num_images']} images x T={like['timesteps']} = {like['pairs']} pairs, "
          f"model batch {like['model_batch_size']}, {results['device']}, {results['torch_threads']} threads")
    for name, seconds in like["seconds"].items():
        print(f"  {name:32s} {seconds:8.3f} s  {like['pairs_per_second'][name]:9.1f} pairs/s")
    print(f"  ratio pipeline / bare UNet: {like['ratio']:.3f}; the math alone costs "
          f"{100 * like['math_fraction_of_unet']:.1f}% of the UNet's time")
    if "inception" in results:
        print(f"Inception features, batch {results['inception']['batch_size']}:")
        for name, rate in results["inception"]["images_per_second"].items():
            print(f"  {name:48s} {rate:8.1f} images/s")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=2)


def main(argv: list[str] | None = None) -> int:
    """Parse and check every option, then benchmark; bad input is one line on stderr and exit status 2."""
    return run_config(build_parser, lambda config: run(config), PROG, argv)  # `run` looked up when called


if __name__ == "__main__":
    sys.exit(main())
