"""A run's inputs, opened and checked against each other before anything is written: the UNet config and the images.

`build_unet_config` gives the network's config (a preset or a config file, with the run's overrides);
`open_images` the raw training images (an image folder's files all opened once, so a damaged one stops the run at
start-up); `check_data_fits_model` that the images' channels and size suit the network; `load_eval_images` the
held-out images of the periodic bits/dim.
"""

from __future__ import annotations

import io

import numpy as np
import PIL.Image
import torch
from diffusers import UNet2DModel

import hf_ddpm
from hf_ddpm.data import ArrayImages, ImageDataset, load_fashion_mnist, load_image_dataset
from hf_ddpm.options import UsageError

GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # PIL modes of one-channel images


def build_unet_config(config) -> dict:
    """The UNet2DModel config: a preset or a config file, with --learned_variance, --dropout and --resolution."""
    if config.model_config_name_or_path:
        unet_config = load_unet_config(config.model_config_name_or_path)
        if config.learned_variance:
            unet_config["out_channels"] = 2 * unet_config["in_channels"]
    else:
        unet_config = hf_ddpm.DDPMUNet2DModel.preset_config(config.preset, config.learned_variance)
    if config.dropout is not None:
        unet_config["dropout"] = config.dropout
    if config.resolution is not None:
        unet_config["sample_size"] = config.resolution
    return unet_config


def load_unet_config(name_or_path: str) -> dict:
    """A UNet2DModel config from a file or folder, refusing configs of other classes (a scheduler's, say)."""
    option = "--model_config_name_or_path"
    try:
        unet_config = dict(UNet2DModel.load_config(name_or_path))
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read a UNet2DModel config from {name_or_path} ({' '.join(str(error).split())[:200]})",
                         option, "pass a unet/config.json file or folder, or use --model_preset") from None
    if unet_config.get("_class_name") not in ("UNet2DModel", "DDPMUNet2DModel"):
        raise UsageError(f"{name_or_path} is a {unet_config.get('_class_name')} config, not a UNet2DModel's", option,
                         "pass a unet/config.json, or use --model_preset")
    return unet_config


def open_images(source: dict, max_samples: int | None):
    """The raw training images; an image folder's files are all opened now, so a damaged one stops the run here."""
    raw = load_image_dataset(**source, max_samples=max_samples)
    if source["train_data_dir"] is not None:
        for index, encoded in enumerate(raw.table[raw.column]):
            file = io.BytesIO(encoded["bytes"]) if encoded["bytes"] else encoded["path"]
            try:  # header and checksums, no decoding: fast enough for large folders
                with PIL.Image.open(file) as image:
                    image.verify()
            except Exception as error:  # noqa: BLE001 - PIL raises many types for damaged files
                raise UsageError(f"{raw.describe(index)} cannot be read ({error})", "--train_data_dir",
                                 "remove or replace it") from None
    return raw


def check_data_fits_model(raw_images, unet_config: dict, model_flag: str, resolution: int | None,
                          convert_channels: bool) -> None:
    """The images' channels match the model's, and the UNet can halve the resolution at every level."""
    size = unet_config["sample_size"]
    sizes = (size, size) if isinstance(size, int) else tuple(size)
    factor = 2 ** (len(unet_config["block_out_channels"]) - 1)
    if any(s % factor for s in sizes):
        fits = ", ".join(str(factor * k) for k in range(max(1, sizes[0] // factor), sizes[0] // factor + 3))
        raise UsageError(f"the UNet halves the image {factor.bit_length() - 1} times, so its side must be divisible by "
                         f"{factor}, but it is {size}", "--resolution" if resolution is not None else model_flag,
                         f"pass --resolution {fits}, or a model with fewer blocks")
    first = raw_images[0]
    gray = first.ndim == 2 if isinstance(first, np.ndarray) else first.mode in GRAY_MODES
    channels, model_channels = (1 if gray else 3), unet_config["in_channels"]
    if channels != model_channels and not convert_channels:
        kind = "grayscale (1 channel)" if gray else "color (3 channels)"
        raise UsageError(f"the images are {kind} but the model's in_channels is {model_channels}", model_flag,
                         f"use a model with {channels} input channel{'s' if channels > 1 else ''}, or add "
                         "--convert_channels to convert the images")


def load_eval_images(source: dict, unet_config: dict, num_images: int) -> torch.Tensor:
    """num_images held-out images (the source's test split) for the periodic bits/dim."""
    if all(source[k] is None for k in ("dataset_name", "train_data_dir", "idx_images")):
        raw = ArrayImages(load_fashion_mnist("test"), "fashion_mnist test")
    else:
        raw = load_image_dataset(**source, split="test")
    dataset = ImageDataset(raw, resolution=unet_config["sample_size"], num_channels=unet_config["in_channels"],
                           center_crop=True)
    return torch.stack([dataset[i]["pixel_values"] for i in range(min(num_images, len(dataset)))])
