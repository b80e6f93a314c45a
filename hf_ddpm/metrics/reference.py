"""The reference images the metrics compare against (which dataset, split and column; as uint8 at the model's size)
and their feature statistics, computed once per (dataset, split, resolution, channels, extractor, count) and cached
as safetensors under `default_cache_dir()`."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Iterable

import torch

from .features import FeatureExtractor, extract_features
from .scores import FeatureStatistics

FASHION_MNIST = "fashion_mnist"


@dataclass
class DatasetSpec:
    """Which images: `name` is "fashion_mnist", an HF dataset name, an image folder or an IDX file."""

    name: str = FASHION_MNIST
    config: str | None = None
    split: str | None = None
    image_column: str | None = None
    cache_dir: str | None = None

    @property
    def kind(self) -> str:
        if self.name in (FASHION_MNIST, "fashion-mnist"):
            return "fashion_mnist"
        if os.path.isdir(self.name):
            return "folder"
        if os.path.isfile(self.name):
            return "idx"
        if self.name.startswith(("/", "./", "../", "~")) or os.sep + os.sep in self.name:
            raise FileNotFoundError(
                f"dataset {self.name}: no such folder or file. Pass an existing image folder or IDX file, "
                f"{FASHION_MNIST!r}, or a Hugging Face dataset name."
            )
        return "hub"

    @property
    def resolved_split(self) -> str | None:
        kind = self.kind
        if kind == "idx":  # an IDX file is one split already
            if self.split not in (None, "train"):
                raise ValueError(f"--split does not apply to an IDX file ({self.name}): it is one split already.")
            return None
        return self.split or ("train" if kind == "folder" else "test")

    def check(self) -> None:
        """Refuse, before any work, a dataset that does not exist or settings that do not apply to it."""
        kind, _ = self.kind, self.resolved_split
        if kind != "hub" and self.config is not None:
            raise ValueError(f"--dataset-config applies to Hugging Face datasets only, not to {self.name}.")
        if kind in ("fashion_mnist", "idx") and self.image_column is not None:
            raise ValueError(f"--image-column applies to HF datasets and image folders only, not to {self.name}.")

    def describe(self) -> dict:
        """The "dataset" entry of eval_results.json (num_images added by the caller)."""
        self.check()
        name = FASHION_MNIST if self.kind == "fashion_mnist" else self.name
        return {"name": name, "config": self.config, "split": self.resolved_split}

    def load(self, max_samples: int | None = None):
        """The raw images, through `hf_ddpm.data.load_image_dataset`."""
        from ..data import load_image_dataset

        self.check()
        kind, split = self.kind, self.resolved_split
        if kind == "fashion_mnist":
            return load_image_dataset(split=split, max_samples=max_samples)
        if kind == "idx":
            return load_image_dataset(idx_images=self.name, max_samples=max_samples)
        kwargs = {"image_column": self.image_column, "cache_dir": self.cache_dir, "max_samples": max_samples}
        if kind == "folder":
            try:
                return load_image_dataset(train_data_dir=self.name, split=split, **kwargs)
            except FileNotFoundError as error:
                if "doesn't contain any data files" not in str(error):
                    raise
                raise ValueError(
                    f"dataset folder {self.name} has no images (datasets: {' '.join(str(error).split())}): pass a "
                    "folder that holds image files (PNG, JPEG, ...; subfolders count), an IDX file, or "
                    f"{FASHION_MNIST!r}."
                ) from None
        try:
            return load_image_dataset(dataset_name=self.name, dataset_config_name=self.config, split=split, **kwargs)
        except (ConnectionError, OSError) as error:
            if isinstance(error, (FileNotFoundError, PermissionError)):
                raise
            raise ValueError(
                f"unknown dataset {self.name!r}: it is not {FASHION_MNIST!r}, an image folder, an IDX file, nor a "
                f"dataset that could be loaded ({type(error).__name__}: {error})"
            ) from error


class ModelImages:
    """Dataset images as uint8 [C, H, W] at the model's resolution and channels, via `hf_ddpm.data.ImageDataset`."""

    def __init__(self, raw, resolution: int, channels: int, resize: bool):
        from ..data import ImageDataset

        self.dataset = ImageDataset(raw, resolution=resolution if resize else None, num_channels=channels,
                                    center_crop=True)
        self.shape = (channels, resolution, resolution)
        self.raw = raw

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        pixels = self.dataset[index]["pixel_values"]
        if tuple(pixels.shape) != self.shape:
            _, height, width = pixels.shape
            raise ValueError(
                f"{self.raw.describe(index)} is {height}x{width} but the model makes {self.shape[1]}x{self.shape[2]} "
                "images: pass --resize to resize and centre-crop the dataset to the model's resolution."
            )
        return ((pixels + 1) * 127.5).round().to(torch.uint8)  # exact inverse of k -> 2k/255 - 1

    def batches(self, batch_size: int, count: int | None = None) -> Iterable[torch.Tensor]:
        count = len(self) if count is None else min(count, len(self))
        for start in range(0, count, batch_size):
            yield torch.stack([self[i] for i in range(start, min(start + batch_size, count))])


def default_cache_dir() -> str:
    """$HF_DDPM_CACHE, else $HF_HOME/hf_ddpm/fid_stats, else ~/.cache/hf_ddpm/fid_stats."""
    if os.environ.get("HF_DDPM_CACHE"):
        return os.environ["HF_DDPM_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hf_ddpm", "fid_stats")
    return os.path.join(os.path.expanduser("~"), ".cache", "hf_ddpm", "fid_stats")


def _slug(text) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "--", str(text)).strip("-") or "none"


def reference_cache_path(
    spec: DatasetSpec, resolution: int, channels: int, extractor: FeatureExtractor, max_images: int | None,
    cache_dir: str | None = None,
) -> str | None:
    """Where the reference statistics of (dataset, config, split, resolution, channels, extractor, count) live."""
    if extractor.cache_id is None:
        return None
    kind, name = spec.kind, spec.describe()["name"]
    if kind in ("folder", "idx"):  # a path: keep it readable, and unique through a hash of the absolute path
        digest = hashlib.sha1(os.path.abspath(name).encode()).hexdigest()[:8]
        name = f"{os.path.basename(os.path.normpath(name))}-{digest}"
    parts = [name, spec.config or "default", spec.resolved_split or "file", f"{resolution}px", f"{channels}ch",
             extractor.cache_id, f"n{max_images or 'all'}"]
    return os.path.join(cache_dir or default_cache_dir(), "__".join(_slug(p) for p in parts) + ".safetensors")


def reference_statistics(
    spec: DatasetSpec, extractor: FeatureExtractor, resolution: int, channels: int, *, batch_size: int,
    max_images: int | None = None, resize: bool = False, cache_dir: str | None = None, use_cache: bool = True,
    recompute: bool = False, progress: bool = True,
) -> FeatureStatistics:
    """Feature statistics of a dataset's images at (resolution, channels), computed once and cached."""
    path = reference_cache_path(spec, resolution, channels, extractor, max_images, cache_dir) if use_cache else None
    if path and os.path.isfile(path) and not recompute:
        return FeatureStatistics.load(path)
    images = ModelImages(spec.load(max_images), resolution, channels, resize)
    if len(images) < 2:
        raise ValueError(f"the reference set needs at least 2 images, {spec.name} has {len(images)}.")
    features = extract_features(images.batches(batch_size), extractor, batch_size=batch_size,
                                desc=f"reference {extractor.name}", progress=progress, total=len(images))["features"]
    stats = FeatureStatistics.from_features(features)
    if path:
        stats.save(path, {"dataset": json.dumps(spec.describe()), "extractor": extractor.cache_id})
    return stats
