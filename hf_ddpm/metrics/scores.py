"""The sample-quality scores as small functions of feature vectors: Frechet distance (FID, FD_DINOv2), KID and the
Inception Score, and `FeatureStatistics`, the Gaussian fit of a set's features that the Frechet distance compares."""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch

# Features kept (a fixed random subset) for KID; mean and covariance always use every image.
MAX_STORED_FEATURES = 10_000
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
IS_SPLITS = 10


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


class PrecomputedFeatures(torch.nn.Module):
    """Identity "feature extractor" through which torchmetrics' metrics take features computed elsewhere."""

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
        metric = KernelInceptionDistance(PrecomputedFeatures(features_real.shape[1]), subsets=subsets,
                                         subset_size=size)
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
        metric = InceptionScore(PrecomputedFeatures(logits.shape[1]), splits=splits)
        metric.update(torch.from_numpy(np.asarray(logits, np.float64)))
        mean, std = metric.compute()
    return float(mean), float(std) * math.sqrt((splits - 1) / splits)
