"""Evaluation (issue 5): bits/dim of a trained vs an untrained model, and `hf-ddpm evaluate` end to end
(eval_results.json format, merging, its options' checks). The metrics themselves: tests/test_metrics.py.

The CLI tests use a tiny TorchScript stand-in for the Inception network with NVIDIA's layout (features + softmax),
which also exercises the Inception Score path.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy as np
import PIL.Image
import pytest
import torch

from conftest import T, run_cli, tiny_pipeline, tiny_unet
from hf_ddpm import DDPMLikelihoodPipeline, DDPMPipeline, DDPMScheduler, cli
from hf_ddpm import evaluation as ev
from hf_ddpm.commands import evaluate as evaluate_command
from hf_ddpm.data import load_fashion_mnist

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_subcommand_is_registered_in_the_cli():
    assert evaluate_command.COMMAND in cli.COMMANDS, "add it to hf_ddpm.cli.COMMANDS"


def idx_file(path, images: np.ndarray) -> str:
    """An uncompressed IDX image file (the MNIST format) of uint8 images [N, H, W]."""
    header = bytes([0, 0, 8, 3]) + b"".join(int(n).to_bytes(4, "big") for n in images.shape)
    path.write_bytes(header + images.astype(np.uint8).tobytes())
    return str(path)


run = run_cli


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
    before = ev.evaluate(untrained, metrics=["bpd"], bpd_num_images=8, output=tmp_path / "before", quiet=True)
    trained = DDPMPipeline(train_tiny(tiny_unet(dropout=0.0), scheduler, train), scheduler)
    after = ev.evaluate(trained, metrics=["bpd"], bpd_num_images=8, output=tmp_path / "after", quiet=True)
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
    # and as the one bits/dim helper (what training logs), on uint8 pixels or on [-1, 1] floats alike
    shared = ev.bits_per_dim(trained.unet, trained.scheduler, images, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(shared.bpd.numpy(), terms["bpd"], rtol=1e-5)
    floats = ev.bits_per_dim(trained.unet, trained.scheduler, images.float() * (2 / 255) - 1,
                             generator=torch.Generator().manual_seed(0), model_batch_size=7)
    np.testing.assert_allclose(floats.bpd.numpy(), terms["bpd"], rtol=1e-5)


# --------------------------------------------------------------------------------------------- evaluate CLI


def test_evaluate_cli_writes_the_results_file_and_merges(tiny_pipeline_dir, fake_inception, tiny_dinov2, tmp_path,
                                                         capsys):
    out = tmp_path / "eval"
    common = ["--output", str(out), "--cache-dir", str(tmp_path / "cache"), "--quiet", "--max-reference-images", "40",
              "--num-samples", "20", "--num-inference-steps", "5", "--batch-size", "10"]
    code = cli.main(["evaluate", tiny_pipeline_dir, "--metrics", "bpd,fid,kid,is", "--bpd-num-images", "3",
                     "--inception-weights", fake_inception["nvidia"], "--save-samples", *common])
    assert code == 0
    with open(out / "eval_results.json") as file:
        results = json.load(file)
    assert set(results) == {"dataset", "metrics", "settings", "samplers"}
    assert results["dataset"] == {"name": "fashion_mnist", "config": None, "split": "test", "num_images": 40}
    assert set(results["metrics"]) == {"bpd", "fid", "kid", "kid_std", "inception_score", "inception_score_std"}
    assert all(isinstance(v, float) and np.isfinite(v) for v in results["metrics"].values())
    assert results["metrics"]["fid"] > 0 and results["metrics"]["inception_score"] >= 1
    seconds = results["settings"].pop("sampling_seconds")
    assert results["settings"] == {"num_samples": 20, "num_inference_steps": 5, "bpd_num_images": 3, "seed": 0,
                                   "scheduler": "ddpm", "nfe": 5, "device": "cpu",
                                   "feature_extractor": "inception-v3-compat"}
    assert 0 < seconds < 60
    # the run is also recorded under its sampler's key, with its own numbers and settings
    (key, run), = results["samplers"].items()
    assert key == "ddpm-5" and run["metrics"] == {k: v for k, v in results["metrics"].items() if k != "bpd"}
    results["settings"]["sampling_seconds"] = seconds
    assert run["settings"] == {k: v for k, v in results["settings"].items() if k != "bpd_num_images"}
    assert json.loads(capsys.readouterr().out) == results
    terms = np.load(out / "bpd_terms.npz", allow_pickle=False)
    assert terms["terms_bpd"].shape == (3, T) and terms["x0_mse"].shape == (3, T)
    # the grid (diffusers' make_image_grid, no border): 20 samples in 5 columns and 4 rows, in order
    grid = np.asarray(PIL.Image.open(out / "samples_grid.png"))
    samples = np.load(out / "samples.npz")["images"]
    assert grid.shape[:2] == (4 * 28, 5 * 28) and grid.std() > 10
    np.testing.assert_array_equal(grid[:28, :28, 0], samples[0, ..., 0])
    np.testing.assert_array_equal(grid[3 * 28:, 4 * 28:, 0], samples[19, ..., 0])

    # a later run adds FD_DINOv2 (a local DINOv2 folder) and keeps the earlier metrics
    tiny_dinov2.save_pretrained(tmp_path / "dinov2")
    code = cli.main(["evaluate", tiny_pipeline_dir, "--metrics", "fd_dinov2", "--dinov2-model",
                     str(tmp_path / "dinov2"), "--dinov2-resolution", "28", *common])
    assert code == 0
    with open(out / "eval_results.json") as file:
        merged = json.load(file)
    assert merged["metrics"]["fd_dinov2"] > 0
    assert {k: merged["metrics"][k] for k in results["metrics"]} == results["metrics"]
    assert {**merged["settings"], "sampling_seconds": 0} == {**results["settings"], "sampling_seconds": 0}
    assert merged["samplers"]["ddpm-5"]["metrics"]["fd_dinov2"] == merged["metrics"]["fd_dinov2"]
    # results for another dataset are not mixed in
    code = cli.main(["evaluate", tiny_pipeline_dir, "--metrics", "bpd", "--bpd-num-images", "1", "--split", "train",
                     *common])
    assert code == 2
    assert "holds results for dataset" in capsys.readouterr().err


def test_evaluate_default_output_is_the_pipeline_folder_and_reuses_samples(tiny_pipeline_dir, fake_inception,
                                                                           tmp_path):
    pipeline_dir = shutil.copytree(tiny_pipeline_dir, tmp_path / "pipe")  # the shared folder stays untouched
    samples = np.asarray(load_fashion_mnist("test")[100:120])[..., None]
    np.savez(tmp_path / "samples.npz", images=samples)
    results = ev.evaluate(pipeline_dir, metrics="fid", samples=str(tmp_path / "samples.npz"),
                          inception_weights=fake_inception["pool3"], max_reference_images=20,
                          cache_dir=str(tmp_path / "cache"), quiet=True, overwrite=True)
    assert os.path.isfile(os.path.join(pipeline_dir, "eval_results.json"))
    assert results["settings"]["num_samples"] == 20 and "num_inference_steps" not in results["settings"]
    # the same 20 images as the reference (test[:20]) would give 0; these are 20 others
    assert results["metrics"]["fid"] > 0
    same = ev.evaluate(pipeline_dir, metrics="fid", samples=np.asarray(load_fashion_mnist("test")[:20]),
                       inception_weights=fake_inception["pool3"], max_reference_images=20,
                       cache_dir=str(tmp_path / "cache"), quiet=True, output=tmp_path / "same")
    assert abs(same["metrics"]["fid"]) < 1e-6
    # an options object is the same call
    config = evaluate_command.EvaluateConfig(pipeline_dir, metrics="fid", samples=np.asarray(
        load_fashion_mnist("test")[:20]), inception_weights=fake_inception["pool3"], max_reference_images=20,
        cache_dir=str(tmp_path / "cache"), quiet=True, output=tmp_path / "config")
    assert ev.evaluate(config)["metrics"] == same["metrics"]
    with pytest.raises(TypeError, match="not both"):
        ev.evaluate(config, quiet=False)


def test_inception_score_only_where_the_weights_have_the_classifier(tiny_pipeline_dir, fake_inception, tmp_path):
    with pytest.raises(ValueError, match="no classifier"):  # asked for: an error
        ev.evaluate(tiny_pipeline_dir, metrics="is", num_samples=10, num_inference_steps=2,
                    inception_weights=fake_inception["pool3"], output=tmp_path, quiet=True)
    with warnings.catch_warnings():  # the default list: IS is left out without a word
        warnings.simplefilter("error")
        results = ev.evaluate(tiny_pipeline_dir, samples=np.asarray(load_fashion_mnist("test")[50:60]),
                              metrics=None, bpd_num_images=1, max_reference_images=10,
                              inception_weights=fake_inception["pool3"], cache_dir=str(tmp_path / "c"),
                              output=tmp_path, quiet=True, overwrite=True)
    assert "inception_score" not in results["metrics"] and {"bpd", "fid", "kid"} <= set(results["metrics"])
    # with the classifier, the default list includes it
    results = ev.evaluate(tiny_pipeline_dir, samples=np.asarray(load_fashion_mnist("test")[50:60]),
                          bpd_num_images=1, max_reference_images=10, inception_weights=fake_inception["nvidia"],
                          cache_dir=str(tmp_path / "c"), output=tmp_path / "nvidia", quiet=True)
    assert results["metrics"]["inception_score"] >= 1


def test_bpd_num_images_all_or_at_most_what_the_dataset_has(tiny_pipeline_dir, tmp_path, capsys):
    idx = idx_file(tmp_path / "three-idx3-ubyte", load_fashion_mnist("test")[:3])
    common = ["evaluate", tiny_pipeline_dir, "--dataset", idx, "--metrics", "bpd", "--quiet"]
    code, _, err = run([*common, "--bpd-num-images", "5", "--output", str(tmp_path / "five")], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "5 images asked for bits/dim" in err and "has 3" in err and "pass 3 or fewer, or all" in err, err
    assert not (tmp_path / "five").exists()
    code, out, _ = run([*common, "--bpd-num-images", "all", "--output", str(tmp_path / "all")], capsys)
    assert code == 0 and json.loads(out)["settings"] == {"bpd_num_images": 3}
    code, _, err = run([*common, "--bpd-num-images", "some", "--output", str(tmp_path / "x")], capsys)
    assert code == 2 and "expected a whole number or 'all', got 'some'" in err and err.count("\n") == 1


@pytest.mark.parametrize("args, message", [
    (["/no/such/pipeline"], "pipeline folder /no/such/pipeline not found"),
    (["{pipe}", "--dataset", "/no/such/images"], "no such folder or file"),
    (["{pipe}", "--metrics", "fid,nll"], "unknown metrics ['nll']"),
    (["{pipe}", "--metrics", "fid", "--num-samples", "1"], "need at least 2 samples"),
    (["{pipe}", "--metrics", "bpd", "--bpd-num-images", "0"], "0 is not >= 1 (--bpd_num_images)"),
    (["{pipe}", "--metrics", "fid", "--samples", "{bad_samples}"], "samples must be uint8 [N, 28, 28, 1]"),
    (["{pipe32}", "--metrics", "bpd", "--bpd-num-images", "2"], "is 28x28 but the model makes 32x32 images"),
    (["{pipe}", "--dataset", "{idx}", "--split", "test", "--metrics", "bpd"], "does not apply to an IDX file"),
    (["{pipe}", "--samples", "{bad_samples}", "--num-samples", "50"],
     "--samples and --num_samples cannot be used together"),
    (["{pipe}", "--samples", "{bad_samples}", "--save-samples"], "--samples and --save_samples cannot be used"),
    (["{pipe}", "--device", "gpu7"], "not a torch device: use cpu, cuda, cuda:N or mps (--device)"),
    (["{pipe}", "--metrics", "fid", "--num-inference-steps", "21"],
     "--num_inference_steps 21 is more than the model's T = 20 diffusion steps (--num_inference_steps): pass at most "
     "20"),
    (["{pipe}", "--metrics", "fid", "--scheduler", "dpmsolver++", "--steps", "20"],
     "--num_inference_steps 20 is more than T - 1 = 19 for dpmsolver++ (T = 20)"),
    (["{pipe}", "--scheduler", "euler", "--eta", "0.5"], "--eta has no meaning for euler (no step that takes eta) "
                                                          "(--eta): drop --eta, or sample with ddim"),
    (["{pipe}", "--scheduler", "ddim", "--eta", "2"], "2.0 is not >= 0 and <= 1 (--eta): pass a value in [0, 1]"),
    (["{pipe}", "--scheduler", "heun"], "invalid choice: 'heun'"),
    (["{pipe}", "--sweep", "ddim"], "'ddim' does not list step counts (--sweep): give whole numbers >= 1 after the "
                                    "name, e.g. ddim:10,20,50"),
    (["{pipe}", "--sweep", "ddim:10,x"], "'ddim:10,x' does not list step counts"),
    (["{pipe}", "--sweep", "plms:10"], "unknown sampler 'plms' in 'plms:10' (--sweep)"),
    (["{pipe}", "--sweep", "ddim:5", "dpmsolver++:20"], "--sweep 20 is more than T - 1 = 19 for dpmsolver++"),
    (["{pipe}", "--sweep", "ddim:5", "--scheduler", "ddim"], "--sweep and --scheduler cannot be used together"),
    (["{pipe}", "--sweep", "ddim:5", "--steps", "5"], "--sweep and --num_inference_steps cannot be used together"),
    (["{pipe}", "--sweep", "ddim:5", "--save-samples"], "--save_samples and --sweep cannot be used together"),
    (["{pipe}", "--sweep", "ddim:5", "--metrics", "bpd"], "--sweep compares samplers by sample metrics"),
    (["{pipe}", "--sweep", "euler:5", "--eta", "1"], "--eta has no meaning for euler"),
])
def test_evaluate_cli_errors_are_one_line(args, message, tiny_pipeline_dir, tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((4, 32, 32, 3), np.uint8))
    pipe32 = tmp_path / "pipe32"
    tiny_pipeline(sample_size=32).save_pretrained(pipe32)
    values = {"pipe": tiny_pipeline_dir, "pipe32": str(pipe32), "bad_samples": str(bad),
              "idx": "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"}
    argv = ["evaluate", *[a.format(**values) for a in args], "--output", str(tmp_path / "o"), "--quiet"]
    code, _, err = run(argv, capsys)
    assert code == 2
    assert err.startswith("hf-ddpm evaluate: error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "o").exists()


def test_a_device_this_machine_lacks_is_refused(tiny_pipeline_dir, tmp_path, capsys):
    missing = next((d for d in ("cuda", "mps") if d == "cuda" and not torch.cuda.is_available()
                    or d == "mps" and not torch.backends.mps.is_available()), None)
    if missing is None:
        pytest.skip("this machine has both cuda and mps")
    code, _, err = run(["evaluate", tiny_pipeline_dir, "--device", missing, "--output", str(tmp_path)], capsys)
    assert code == 2 and f"no {missing} device on this machine" in err and err.count("\n") == 1


def test_resize_flag_resizes_the_dataset_to_the_model(tmp_path):
    pipe = tiny_pipeline(sample_size=32)
    results = ev.evaluate(pipe, metrics="bpd", bpd_num_images=2, resize=True, output=tmp_path, quiet=True)
    assert np.isfinite(results["metrics"]["bpd"])


# ----------------------------------------------------------------------------------- samplers (issue 10)


def read_results(folder) -> dict:
    with open(os.path.join(folder, "eval_results.json")) as file:
        return json.load(file)


def test_other_samplers_are_keyed_timed_and_never_overwrite_each_other(tiny_pipeline_dir, fake_inception, tmp_path,
                                                                       capsys):
    out = tmp_path / "eval"
    common = ["evaluate", tiny_pipeline_dir, "--metrics", "fid,kid", "--output", str(out), "--cache-dir",
              str(tmp_path / "cache"), "--quiet", "--max-reference-images", "20", "--num-samples", "6",
              "--batch-size", "4", "--inception-weights", fake_inception["pool3"]]
    code, _, err = run([*common, "--scheduler", "ddim", "--steps", "4", "--eta", "0.5"], capsys)
    assert code == 0, err
    ddim = read_results(out)
    assert ddim["metrics"] == {} and ddim["settings"] == {}  # the top level is the ddpm sampler's (the card's)
    (key, entry), = ddim["samplers"].items()
    assert key == "ddim-4-eta0.5" and set(entry["metrics"]) == {"fid", "kid", "kid_std"}
    seconds = entry["settings"].pop("sampling_seconds")
    assert entry["settings"] == {"scheduler": "ddim", "num_inference_steps": 4, "eta": 0.5, "nfe": 4, "num_samples": 6,
                                 "seed": 0, "device": "cpu", "feature_extractor": "inception-v3-compat"}
    assert 0 < seconds < 60
    assert (out / "samples_grid_ddim-4-eta0.5.png").is_file() and not (out / "samples_grid.png").exists()
    # the ddpm sampler (the old --num-inference-steps spelling) fills the top level; the ddim entry stays
    code, _, err = run([*common, "--num-inference-steps", "3"], capsys)
    assert code == 0, err
    both = read_results(out)
    assert set(both["samplers"]) == {"ddim-4-eta0.5", "ddpm-3"}
    assert both["samplers"]["ddim-4-eta0.5"]["metrics"] == entry["metrics"]
    assert both["metrics"] == both["samplers"]["ddpm-3"]["metrics"] and both["settings"]["num_inference_steps"] == 3
    assert both["settings"]["scheduler"] == "ddpm" and both["settings"]["nfe"] == 3
    # a ddpm run of other steps replaces the top level as a whole: no KID of 3 steps beside the FID of 5
    code, _, err = run([*common, "--metrics", "fid", "--steps", "5"], capsys)
    assert code == 0, err
    last = read_results(out)
    assert set(last["metrics"]) == {"fid"} and last["settings"]["num_inference_steps"] == 5
    assert last["metrics"]["fid"] == last["samplers"]["ddpm-5"]["metrics"]["fid"]
    assert last["samplers"]["ddpm-3"] == both["samplers"]["ddpm-3"]  # still recorded under its own key
    # the same samples again (same sampler, steps, count and seed): metrics merge, here KID joins the FID
    code, _, err = run([*common, "--metrics", "kid", "--steps", "5"], capsys)
    assert code == 0, err
    assert set(read_results(out)["metrics"]) == {"fid", "kid", "kid_std"}
    # from Python: the same keyword options
    direct = ev.evaluate(tiny_pipeline_dir, metrics="fid", scheduler="dpmsolver++", num_inference_steps=3,
                         num_samples=6, batch_size=4, max_reference_images=20, cache_dir=str(tmp_path / "cache"),
                         inception_weights=fake_inception["pool3"], quiet=True, output=tmp_path / "py")
    assert direct["samplers"]["dpmsolver++-3"]["settings"]["nfe"] == 3 and direct["metrics"] == {}


def test_sweep_evaluates_every_pair_with_one_reference_and_seed(tiny_pipeline_dir, fake_inception, tmp_path, capsys,
                                                                monkeypatch):
    calls = []
    original = ev.reference_statistics
    monkeypatch.setattr(ev, "reference_statistics", lambda *a, **k: calls.append(1) or original(*a, **k))
    out = tmp_path / "sweep"
    code, printed, err = run(["evaluate", tiny_pipeline_dir, "--sweep", "ddpm:20,5", "ddim:2,5", "dpmsolver++:2,5",
                              "ddim:5", "--num-samples", "6", "--batch-size", "3", "--max-reference-images", "20",
                              "--inception-weights", fake_inception["pool3"], "--cache-dir", str(tmp_path / "cache"),
                              "--output", str(out), "--quiet"], capsys)
    assert code == 0, err
    results = read_results(out)
    assert json.loads(printed) == results
    assert list(results["samplers"]) == ["ddpm-20", "ddpm-5", "ddim-2-eta0", "ddim-5-eta0", "dpmsolver++-2",
                                         "dpmsolver++-5"]  # every pair once, in order
    assert results["metrics"] == {} and results["dataset"]["num_images"] == 20  # a sweep leaves the top level alone
    for key, entry in results["samplers"].items():
        settings = entry["settings"]
        assert set(entry["metrics"]) == {"fid", "kid", "kid_std"}  # the sweep's default metrics
        assert settings["nfe"] == settings["num_inference_steps"] == int(key.split("-")[1])
        assert (settings["seed"], settings["num_samples"]) == (0, 6) and settings["sampling_seconds"] > 0
        assert (out / f"samples_grid_{key}.png").is_file()
    assert len(calls) == 1 and len(os.listdir(tmp_path / "cache")) >= 1  # the reference: computed once, cached
    # DDIM with eta 0 is deterministic: the same seed gives the same samples, so the same FID, when run alone
    alone = ev.evaluate(tiny_pipeline_dir, metrics="fid", scheduler="ddim", num_inference_steps=5, num_samples=6,
                        batch_size=3, max_reference_images=20, inception_weights=fake_inception["pool3"],
                        cache_dir=str(tmp_path / "cache"), quiet=True)
    assert alone["samplers"]["ddim-5-eta0"]["metrics"]["fid"] == pytest.approx(
        results["samplers"]["ddim-5-eta0"]["metrics"]["fid"], rel=1e-9)
