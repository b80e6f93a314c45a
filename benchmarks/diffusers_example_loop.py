"""The training step of diffusers' `examples/unconditional_image_generation/train_unconditional.py` with its
default settings, as a resumable loop: what bench_training.py times against train.py, and what time_to_quality.py
trains for its quality-against-time curves.

Per step, as the example does: a batch of images in [-1, 1], Gaussian noise, t uniform in [0, T), stock
`DDPMScheduler.add_noise`, the plain MSE between the UNet's output and the noise (epsilon prediction), Accelerate's
accumulate/backward, gradient clipping at 1.0, AdamW, the LR schedule, then the EMA with warm-up. The defaults are
the example's (`ExampleSettings`): LR 1e-4, cosine schedule with 500 warm-up steps over 100 epochs, AdamW betas
(0.95, 0.999), weight decay 1e-6, eps 1e-8; EMA decay 1 - (1 + step)^-3/4 capped at 0.9999; T = 1000 linear
betas; no random flips (the example's default). Two departures, both for resuming: the example shuffles with the
global RNG and draws noise and t with it, here epoch e's order comes from (seed, e) and step s's noise, t and
dropout from (seed, s), so a run resumed from `save` repeats the uninterrupted one; and the batches are stacked in
this process (the example's DataLoader with its default 0 workers does the same work).

`example_unet_config` is the example's UNet2DModel at 28x28 (see its docstring); `save` / `load` keep the loop's
state as safetensors and JSON, `save_pipeline` writes the stock DDPMPipeline folder of the EMA weights, as the
example saves its model.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import diffusers
import numpy as np
import torch
import torch.nn.functional as F
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file

STATE_FILE = "loop_state.json"  # written last into a state folder: its presence makes the folder complete


@dataclass(frozen=True)
class ExampleSettings:
    """train_unconditional.py's defaults (its argparse defaults and the values it hard-codes)."""

    learning_rate: float = 1e-4
    lr_scheduler: str = "cosine"
    lr_warmup_steps: int = 500
    num_epochs: int = 100  # sizes the cosine schedule: len(dataloader) * num_epochs steps
    adam_beta1: float = 0.95
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-6
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0  # hard-coded in the example
    ema_max_decay: float = 0.9999
    ema_inv_gamma: float = 1.0
    ema_power: float = 0.75
    ddpm_num_steps: int = 1000
    ddpm_beta_schedule: str = "linear"


def example_unet_config(width: int = 32, sample_size: int = 28, channels: int = 1) -> dict:
    """The example's UNet2DModel pattern at 28x28 one-channel images.

    The example's network has six levels (widths 128, 128, 256, 256, 512, 512; attention in the second-lowest) for
    64x64 inputs; UNet2DModel's up path doubles the size, so a 28x28 input allows two downsamplings (28, 14, 7):
    three levels with the example's first three width multipliers (1, 1, 2), attention in the second-lowest level
    as in the example, two ResNet layers per block, and every other setting UNet2DModel's default, as the example
    leaves them (32 norm groups, 8-channel attention heads, no dropout, flipped sinusoidal embedding). Width 32
    gives 1,105,665 parameters, against the `small28` preset's 1,112,801. One channel, like the data: the example
    converts images to RGB, and three equal channels would change what bits/dim measures.
    """
    return {"_class_name": "UNet2DModel", "sample_size": sample_size, "in_channels": channels,
            "out_channels": channels, "layers_per_block": 2, "block_out_channels": (width, width, 2 * width),
            "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D")}


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, purpose, index), the same on every machine and Python run."""
    return int(np.random.SeedSequence(parts).generate_state(1, np.uint64)[0]) >> 1


EPOCH_ORDER, STEP_NOISE, STEP_DROPOUT = 0, 1, 2  # the purposes of derived_seed


class DiffusersExampleLoop:
    """The example's model, optimizer, LR schedule and EMA around `model` on `dataset` (samples with
    "pixel_values" in [-1, 1]); `step()` runs one optimizer step and returns its loss (a tensor on the device)."""

    def __init__(self, model: torch.nn.Module, dataset, batch_size: int, accelerator, seed: int = 0,
                 settings: ExampleSettings = ExampleSettings()):
        self.accelerator, self.dataset, self.batch_size, self.seed, self.settings = (accelerator, dataset, batch_size,
                                                                                     seed, settings)
        self.noise_scheduler = diffusers.DDPMScheduler(num_train_timesteps=settings.ddpm_num_steps,
                                                       beta_schedule=settings.ddpm_beta_schedule)
        optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate,
                                      betas=(settings.adam_beta1, settings.adam_beta2),
                                      weight_decay=settings.adam_weight_decay, eps=settings.adam_epsilon)
        self.steps_per_epoch = math.ceil(len(dataset) / batch_size)  # the example keeps the last, partial batch
        lr_scheduler = get_scheduler(settings.lr_scheduler, optimizer, num_warmup_steps=settings.lr_warmup_steps,
                                     num_training_steps=self.steps_per_epoch * settings.num_epochs)
        self.model, self.optimizer, self.lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
        self.unet = accelerator.unwrap_model(self.model)
        self.ema = EMAModel(self.model.parameters(), decay=settings.ema_max_decay, use_ema_warmup=True,
                            inv_gamma=settings.ema_inv_gamma, power=settings.ema_power,
                            model_cls=diffusers.UNet2DModel, model_config=self.unet.config)
        self.ema.to(accelerator.device)
        self.generator = torch.Generator(accelerator.device)
        self.global_step = 0
        self._order = None  # (epoch, its permutation of the dataset)

    def _clean_images(self) -> torch.Tensor:
        """The batch of the current step: the next slice of its epoch's permutation, stacked."""
        epoch, index = divmod(self.global_step, self.steps_per_epoch)
        if self._order is None or self._order[0] != epoch:
            generator = torch.Generator().manual_seed(derived_seed(self.seed, EPOCH_ORDER, epoch))
            self._order = (epoch, torch.randperm(len(self.dataset), generator=generator).tolist())
        indices = self._order[1][index * self.batch_size : (index + 1) * self.batch_size]
        return torch.stack([self.dataset[i]["pixel_values"] for i in indices]).to(self.accelerator.device)

    def step(self) -> torch.Tensor:
        accelerator, model = self.accelerator, self.model
        clean = self._clean_images()
        self.generator.manual_seed(derived_seed(self.seed, STEP_NOISE, self.global_step))
        noise = torch.randn(clean.shape, generator=self.generator, device=clean.device)
        timesteps = torch.randint(0, self.settings.ddpm_num_steps, (clean.shape[0],), generator=self.generator,
                                  device=clean.device).long()
        noisy = self.noise_scheduler.add_noise(clean, noise, timesteps)
        torch.manual_seed(derived_seed(self.seed, STEP_DROPOUT, self.global_step))  # the global RNG drives dropout
        with accelerator.accumulate(model):
            model_output = model(noisy, timesteps).sample
            loss = F.mse_loss(model_output.float(), noise.float())
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), self.settings.max_grad_norm)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad()
        if accelerator.sync_gradients:
            self.ema.step(model.parameters())
        self.global_step += 1
        return loss.detach()

    # ------------------------------------------------------------------------------------------- saving
    def save_pipeline(self, folder: str | os.PathLike) -> None:
        """The stock DDPMPipeline (UNet2DModel + DDPMScheduler) with the EMA weights, as the example saves it."""
        parameters = list(self.unet.parameters())
        self.ema.store(parameters)
        self.ema.copy_to(parameters)
        try:
            diffusers.DDPMPipeline(unet=self.unet, scheduler=self.noise_scheduler).save_pretrained(folder)
        finally:
            self.ema.restore(parameters)

    def save(self, folder: str | os.PathLike, extra: dict | None = None) -> None:
        """The loop's state (weights, EMA, AdamW moments, LR schedule, step, and `extra`) into a new `folder`,
        written beside it and renamed, so `folder` is complete or absent."""
        folder = Path(folder)
        partial = folder.with_name(f".partial-{folder.name}")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        names = [name for name, _ in self.unet.named_parameters()]
        save_file({k: v.contiguous() for k, v in self.unet.state_dict().items()}, partial / "model.safetensors")
        ema = self.ema.state_dict()
        save_file(dict(zip(names, (p.contiguous() for p in ema.pop("shadow_params")))), partial / "ema.safetensors")
        optimizer = self.optimizer.state_dict()
        save_file({f"{index}.{key}": value for index, state in optimizer["state"].items()
                   for key, value in state.items()}, partial / "optimizer.safetensors")
        state = {"global_step": self.global_step, "ema": ema, "param_groups": optimizer["param_groups"],
                 "lr_scheduler": self.lr_scheduler.state_dict(), "extra": extra or {}}
        (partial / STATE_FILE).write_text(json.dumps(state, indent=1))
        os.replace(partial, folder)

    def load(self, folder: str | os.PathLike) -> dict:
        """Continue from a folder of `save`; returns its `extra`."""
        folder = Path(folder)
        state = json.loads((folder / STATE_FILE).read_text())
        self.unet.load_state_dict(load_file(folder / "model.safetensors"))
        shadow = load_file(folder / "ema.safetensors")
        self.ema.load_state_dict({**state["ema"], "shadow_params": [shadow[name] for name, _ in
                                                                    self.unet.named_parameters()]})
        self.ema.to(self.accelerator.device)
        moments = load_file(folder / "optimizer.safetensors")
        per_parameter: dict[int, dict] = {}
        for key, value in moments.items():
            index, name = key.split(".", 1)
            per_parameter.setdefault(int(index), {})[name] = value
        groups = [{**group, "betas": tuple(group["betas"])} for group in state["param_groups"]]
        self.optimizer.load_state_dict({"state": per_parameter, "param_groups": groups})
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.global_step = state["global_step"]
        return state["extra"]
