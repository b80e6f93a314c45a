"""Sharing on the Hub (issue 4): the model card, folder checks, `push`, and loading what was pushed.

Pushes go to tests/support/hub_server.LocalHub with the real huggingface_hub client (Git-LFS path:
HF_HUB_DISABLE_XET). Loading by repo id runs in subprocesses (HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE are read by
huggingface_hub at import): stock diffusers with hf_ddpm made unimportable, hf_ddpm online, then both with
HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import huggingface_hub.constants as hf_constants
from huggingface_hub import ModelCard
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.repocard_data import model_index_to_eval_results

from conftest import T, tiny_unet
from support.hub_server import LocalHub

import hf_ddpm.cli
import hf_ddpm.hub.card
from hf_ddpm import DDPMPipeline, DDPMScheduler
from hf_ddpm import hub as hf_hub

TOKEN = "hf_hfDdpmTestToken0123456789abcdef"
SEED = 0
EVAL_RESULTS = {
    "dataset": {"name": "fashion_mnist", "config": None, "split": "test", "num_images": 10000},
    "metrics": {"bpd": 3.70, "fid": 5.2, "kid": 0.001, "kid_std": 0.0002, "inception_score": 9.1,
                "inception_score_std": 0.1, "fd_dinov2": 100.0},
    "settings": {"num_samples": 10000, "num_inference_steps": 1000, "bpd_num_images": 100,
                 "feature_extractor": "inception-v3-compat"},
}
TRAINING = {
    "dataset": "fashion_mnist",
    "resolution": 28,
    "channels": 1,
    "unet_preset": "small28",
    "beta_schedule": "linear",
    "num_train_timesteps": T,
    "loss_type": "l_simple",
    "max_train_steps": 3,
    "train_batch_size": 4,
    "learning_rate": 1e-3,
    "use_ema": False,
    "mixed_precision": "no",
    "hardware": "CPU",
    "seed": SEED,
    "hub_token": TOKEN,  # a training script's vars(args) may carry it: it must never reach a file
    "output_dir": Path("/tmp/out"),
}
PIPELINE_FILES = {
    "README.md",
    "model_index.json",
    "samples.png",
    "training_config.json",
    "scheduler/scheduler_config.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
}


@pytest.fixture(autouse=True)
def _no_xet(monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)  # LocalHub speaks the Git-LFS upload path


def _sample(pipe) -> np.ndarray:
    out = pipe(batch_size=2, generator=torch.Generator().manual_seed(SEED), num_inference_steps=T, output_type="np")
    return out.images


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny pipeline trained a few Adam steps on Fashion-MNIST-shaped images, saved with samples and a card."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: extra threads only spin on a shared CPU
    try:
        return _train_and_save(tmp_path_factory.mktemp("trained") / "pipeline")
    finally:
        torch.set_num_threads(threads)


def _train_and_save(folder: Path) -> dict:
    unet = tiny_unet(SEED).train()
    scheduler = DDPMScheduler(num_train_timesteps=T)
    optimizer = torch.optim.Adam(unet.parameters(), lr=1e-3)
    images = torch.rand(4, 1, 28, 28) * 2 - 1
    for _ in range(3):
        noise, t = torch.randn_like(images), torch.randint(0, T, (4,))
        loss = torch.nn.functional.mse_loss(unet(scheduler.add_noise(images, noise, t), t).sample, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    unet.eval()
    pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(folder)
    samples = _sample(pipe)  # the reference for every loading test, and the sample grid
    Image.fromarray((np.concatenate(list(samples), axis=1)[..., 0] * 255).round().astype(np.uint8)).save(
        folder / "samples.png")
    hf_hub.write_model_card(folder, training=TRAINING)
    return {"dir": folder, "samples": samples, "num_parameters": sum(p.numel() for p in unet.parameters())}


@pytest.fixture
def folder(trained, tmp_path):
    """A private copy of the trained pipeline folder."""
    return Path(shutil.copytree(trained["dir"], tmp_path / "pipeline"))


@pytest.fixture
def hub():
    with LocalHub() as h:
        yield h


def _front_matter(readme: Path) -> dict:
    text = readme.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def _all_bytes(*roots: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for root in roots for p in Path(root).rglob("*") if p.is_file()]


# ------------------------------------------------------------------------------------------------ model card
def test_card_metadata_is_valid_and_model_index_round_trips(folder):
    (folder / "eval_results.json").write_text(json.dumps(EVAL_RESULTS))
    readme = hf_hub.write_model_card(folder, repo_id="test-user/tiny-ddpm")
    meta = _front_matter(readme)

    assert meta["library_name"] == "diffusers" and meta["pipeline_tag"] == "unconditional-image-generation"
    assert {"ddpm", "hf-ddpm"} <= set(meta["tags"]) and meta["license"] == "apache-2.0"
    assert meta["datasets"] == ["fashion_mnist"]
    known = {"library_name", "pipeline_tag", "license", "tags", "datasets", "metrics", "model-index"}
    assert set(meta) <= known and all(isinstance(t, str) for t in meta["tags"])

    name, results = model_index_to_eval_results(meta["model-index"])
    assert name == "test-user/tiny-ddpm"
    by_type = {r.metric_type: r for r in results}
    assert {t: r.metric_value for t, r in by_type.items()} == {
        "fid": 5.2, "is": 9.1, "kid": 0.001, "fd-dinov2": 100.0, "bits-per-dim": 3.70}
    for r in results:
        assert r.task_type == "unconditional-image-generation"
        assert (r.dataset_type, r.dataset_name, r.dataset_split) == ("fashion_mnist", "Fashion-MNIST", "test")
    assert by_type["fid"].metric_args["num_samples"] == 10000
    assert "feature_extractor" not in (by_type["fd-dinov2"].metric_args or {})  # DINOv2 is not Inception
    assert by_type["bits-per-dim"].metric_args == {"num_images": 100}
    assert sorted(meta["metrics"]) == sorted(by_type)

    card = ModelCard.load(readme)  # huggingface_hub's own parser: the card data round-trips
    assert card.data.to_dict()["model-index"] == meta["model-index"]
    assert [r.metric_value for r in card.data.eval_results] == [r.metric_value for r in results]


def test_card_body_reports_saved_facts(folder, trained):
    text = (folder / "README.md").read_text()
    assert 'DDPMPipeline.from_pretrained("USER/MODEL_NAME")' in text  # no repo id yet: a placeholder, said so
    assert f"num_inference_steps={T}" in text
    run = trained["dir"].parent.name  # the training run's output folder, which holds pipeline/
    assert f"\n# {run}\n" in text and f"![Samples from {run}](samples.png)" in text and "# pipeline" not in text
    assert f"| parameters | {trained['num_parameters']:,} (F32 weights) |" in text  # counted from the header
    assert "| resolution | 28x28 |" in text and "| reverse-process variance | fixed_small |" in text
    assert "| beta schedule | linear, beta 0.0001 -> 0.02 |" in text and "| diffusion steps T | 20 |" in text
    assert "| batch size (global) | 4 |" in text and "| saved weights | raw parameters (no EMA) |" in text
    assert "| learning rate | 0.001 |" in text and "| hardware | CPU |" in text
    assert "| EMA decay | 0.9999 |" not in text and "| EMA decay | not recorded |" in text
    assert "has not been evaluated" in text and "model-index" not in text
    assert "@inproceedings{ho2020denoising" in text and "Jain, Ajay" in text
    assert "Trained for 3 steps" in text  # a limitation drawn from the recorded facts


def test_card_without_recorded_facts_says_so_and_invents_nothing(trained, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(trained["dir"], bare, ignore=shutil.ignore_patterns("*.png", "*.md", "training_config.json"))
    text = hf_hub.write_model_card(bare).read_text()
    meta = _front_matter(bare / "README.md")
    assert "datasets" not in meta and "model-index" not in meta and "metrics" not in meta
    assert "No training configuration was recorded" in text
    assert text.count("| not recorded |") == len(hf_hub.TRAINING_FIELDS)
    assert "No sample grid was saved" in text and "has not been evaluated" in text
    assert "The training data was not recorded" in text
    assert "| diffusion steps T | 20 |" in text  # facts the saved configs hold are still there
    assert not (bare / "training_config.json").exists()


def test_training_config_is_saved_without_secrets_and_reused_after_evaluation(folder):
    saved = json.loads((folder / "training_config.json").read_text())
    assert "hub_token" not in saved and saved["output_dir"] == "/tmp/out" and saved["train_batch_size"] == 4
    for path, data in _all_bytes(folder):
        assert TOKEN.encode() not in data, path

    hf_hub.write_model_card(folder, repo_id="test-user/first")
    (folder / "eval_results.json").write_text(json.dumps(EVAL_RESULTS))
    readme = hf_hub.write_model_card(folder)  # what evaluation calls: training, repo id and license are kept
    text = readme.read_text()
    assert "| batch size (global) | 4 |" in text and "| hardware | CPU |" in text
    assert _front_matter(readme)["model-index"][0]["name"] == "test-user/first"
    assert "| FID | 5.2 |" in text and "| Inception Score | 9.1 +- 0.1 |" in text
    assert "biased upwards" in text  # 10k samples, not 50k


def test_card_reports_training_config_that_contradicts_the_saved_pipeline(folder):
    training = {"num_train_timesteps": 1000, "beta_schedule": "linear"}
    text = hf_hub.write_model_card(folder, training=training).read_text()
    assert "`num_train_timesteps`: training_config.json says 1000, the saved pipeline has 20." in text
    assert "`beta_schedule`" not in text  # agreeing facts are not flagged
    assert "| diffusion steps T | 20 |" in text


def test_partial_eval_results(folder):
    (folder / "eval_results.json").write_text(json.dumps({"dataset": {"name": "fashion_mnist", "split": "test"},
                                                         "metrics": {"fid": 12.5, "bpd": float("nan")}}))
    meta = _front_matter(hf_hub.write_model_card(folder, repo_id="u/m"))
    _, results = model_index_to_eval_results(meta["model-index"])
    assert [(r.metric_type, r.metric_value) for r in results] == [("fid", 12.5)]
    assert "`bpd` is not a finite number" in (folder / "README.md").read_text()

    (folder / "eval_results.json").write_text(json.dumps({"metrics": {"fid": 12.5}}))  # dataset not recorded
    meta = _front_matter(hf_hub.write_model_card(folder))
    assert "model-index" not in meta and "| FID | 12.5 |" in (folder / "README.md").read_text()


def test_local_dataset_paths_stay_private(folder, tmp_path):
    local = tmp_path / "private" / "my_faces"
    local.mkdir(parents=True)
    (folder / "eval_results.json").write_text(json.dumps({"dataset": {"name": str(local), "split": "train"},
                                                         "metrics": {"fid": 10.0}}))
    readme = hf_hub.write_model_card(folder, training={"dataset": str(local)})
    text, meta = readme.read_text(), _front_matter(readme)
    assert str(tmp_path) not in text and "| dataset | my_faces |" in text
    assert "datasets" not in meta and "huggingface.co/datasets/my_faces" not in text  # not a Hub dataset
    assert meta["model-index"][0]["results"][0]["dataset"]["type"] == "my_faces"


# What train.py records about its data (hf_ddpm.hub.record_training_data), from a run in a folder that holds
# ./my_images and data/train-images-idx3-ubyte, and what the card must then say, from any working directory.
DATA_SOURCES = {
    "hub-dataset": ({"dataset_name": "uoft-cs/cifar10"}, ["uoft-cs/cifar10"],
                    "[CIFAR-10](https://huggingface.co/datasets/uoft-cs/cifar10)"),
    "image-folder": ({"train_data_dir": "./my_images", "num_images": 8}, None,
                     "the local image folder `my_images`, 8 images at 28x28"),
    "idx-file": ({"idx_images": "data/train-images-idx3-ubyte", "num_images": 60000}, None,
                 "the local IDX file `train-images-idx3-ubyte`, 60,000 images at 28x28"),
    "default-fashion-mnist": ({}, ["fashion_mnist"], "[Fashion-MNIST](https://huggingface.co/datasets/fashion_mnist)"),
    "local-dataset-name": ({"dataset_name": "./my_images"}, None, "the local data `my_images`, 28x28"),
}
# training_config.json written before the data source was recorded: a name spelled like a path is local.
UNRECORDED_SOURCES = {
    "cifar10": (["cifar10"], "[CIFAR-10](https://huggingface.co/datasets/cifar10)"),
    "user/faces": (["user/faces"], "[user/faces](https://huggingface.co/datasets/user/faces)"),
    "./my_images": (None, "the local data `my_images`"),
    "/srv/data/my_images": (None, "the local data `my_images`"),
    "~/my_images": (None, "the local data `my_images`"),
    "data/sets/my_images": (None, "the local data `my_images`"),
    "train-images-idx3-ubyte.gz": (None, "the local data `train-images-idx3-ubyte.gz`"),
    "faces.png": (None, "the local data `faces.png`"),
}


def _render_elsewhere(folder: Path, training: dict, places: list[Path], monkeypatch) -> list[tuple[dict, str]]:
    """The card rendered with the process in each of `places` (one holds folders named like the datasets)."""
    out = []
    for place in places:
        monkeypatch.chdir(place)
        readme = hf_hub.write_model_card(folder, training=training)
        out.append((_front_matter(readme), readme.read_text()))
    return out


@pytest.fixture
def places(tmp_path):
    """An empty working directory, and one where every dataset name of the tables above exists as a folder."""
    empty, crowded = tmp_path / "empty", tmp_path / "crowded"
    empty.mkdir()
    for name in ["my_images", "cifar10", "user/faces", "fashion_mnist", "uoft-cs/cifar10", "data/sets/my_images"]:
        (crowded / name).mkdir(parents=True)
    return [empty, crowded]


@pytest.mark.parametrize("source", list(DATA_SOURCES))
def test_card_describes_each_data_source_the_same_from_any_directory(folder, tmp_path, places, monkeypatch, source):
    options, datasets, described = DATA_SOURCES[source]
    training_run = tmp_path / "run"  # where training ran: the relative paths exist there
    (training_run / "my_images").mkdir(parents=True)
    (training_run / "data").mkdir()
    (training_run / "data" / "train-images-idx3-ubyte").write_bytes(b"")
    monkeypatch.chdir(training_run)
    record = hf_hub.record_training_data(**options)
    assert record["dataset_kind"] in hf_hub.DATASET_KINDS and os.sep not in record["dataset"].replace("/", "", 1)
    training = {**TRAINING, **record, "resolution": 28}

    for meta, text in _render_elsewhere(folder, training, places, monkeypatch):
        assert meta.get("datasets") == datasets
        assert f"trained on {described}." in text.replace("\n", " "), text[:1500]
        assert f"resembling its training data ({described})" in text.replace("\n", " ")
        if datasets is None:
            assert "huggingface.co/datasets" not in text and str(training_run) not in text


@pytest.mark.parametrize("name", list(UNRECORDED_SOURCES))
def test_card_without_a_recorded_source_decides_by_spelling_not_by_directory(folder, places, monkeypatch, name):
    datasets, described = UNRECORDED_SOURCES[name]
    cards = _render_elsewhere(folder, {"dataset": name}, places, monkeypatch)
    assert cards[0] == cards[1]  # the same card wherever it was rendered
    meta, text = cards[0]
    assert meta.get("datasets") == datasets and f"trained on {described}." in text.replace("\n", " ")


def test_card_is_named_after_the_repo_else_the_run(trained, tmp_path):
    run = tmp_path / "fashion-run-7"
    shutil.copytree(trained["dir"], run / "pipeline")
    text = hf_hub.write_model_card(run / "pipeline").read_text()
    assert "\n# fashion-run-7\n" in text and "# pipeline" not in text
    meta = _front_matter(hf_hub.write_model_card(run / "pipeline", repo_id="test-user/named"))
    assert "\n# test-user/named\n" in (run / "pipeline" / "README.md").read_text() and meta["license"] == "apache-2.0"
    other = Path(shutil.copytree(trained["dir"], tmp_path / "my-ddpm"))  # not named pipeline: its own name
    (other / "README.md").unlink()
    assert "\n# my-ddpm\n" in hf_hub.write_model_card(other).read_text()


@pytest.mark.parametrize("argv, words", [
    (["--license", "apache"], ["'apache' is not a license identifier the Hub knows (--license)", "apache-2.0"]),
    (["--license", "Apache 2.0"], ["is not a license identifier the Hub knows (--license)", "'other'"]),
    (["--repo-id", "not a/valid id"], ["invalid repo id 'not a/valid id'", "(--repo-id): use USER/NAME"]),
    (["--repo-id", "a/b/c"], ["invalid repo id 'a/b/c'", "(--repo-id): use USER/NAME"]),
])
def test_card_command_refuses_an_invalid_license_or_repo_id(folder, capsys, argv, words):
    before = _all_bytes(folder)
    assert hf_ddpm.cli.main(["card", str(folder), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hf-ddpm card: error: ") and err.count("\n") == 1
    assert all(w in err for w in words), err
    assert _all_bytes(folder) == before  # nothing written
    with pytest.raises(ValueError):  # the same checks guard the Python API
        hf_hub.write_model_card(folder, **{argv[0][2:].replace("-", "_"): argv[1]})


def test_card_command_rerenders_and_protects_handwritten_cards(folder, capsys):
    (folder / "eval_results.json").write_text(json.dumps(EVAL_RESULTS))
    assert hf_ddpm.cli.main(["card", str(folder), "--repo-id", "test-user/re", "--license", "mit"]) == 0
    meta = _front_matter(folder / "README.md")
    assert meta["license"] == "mit" and meta["model-index"][0]["name"] == "test-user/re"
    (folder / "README.md").write_text("# my own card\n")
    assert hf_ddpm.cli.main(["card", str(folder)]) == 2
    assert "--force" in capsys.readouterr().err and (folder / "README.md").read_text() == "# my own card\n"


def test_template_is_found_and_packaged_path_wins(tmp_path, monkeypatch):
    assert hf_hub.model_card_template_path().read_text().startswith("---\n{{ card_data }}\n---")
    fake_pkg = tmp_path / "hf_ddpm"
    (fake_pkg / "model_cards").mkdir(parents=True)
    (fake_pkg / "model_cards" / hf_hub.TEMPLATE_NAME).write_text("x")
    monkeypatch.setattr(hf_ddpm.hub.card, "__file__", str(fake_pkg / "hub" / "card.py"))
    assert hf_hub.model_card_template_path() == (fake_pkg / "model_cards" / hf_hub.TEMPLATE_NAME).resolve()
    shutil.rmtree(fake_pkg / "model_cards")
    with pytest.raises(FileNotFoundError, match="reinstall"):
        hf_hub.model_card_template_path()


# ------------------------------------------------------------------------------------------------ folder checks
@pytest.mark.parametrize("bad", ["unet/diffusion_pytorch_model.bin", "extra/weights.pt", "ema.ckpt", "state.pkl"])
def test_pickle_files_are_refused(folder, hub, bad, capsys):
    (folder / bad).parent.mkdir(parents=True, exist_ok=True)
    (folder / bad).write_bytes(b"\x80\x04pickle")
    with pytest.raises(ValueError, match="pickle") as err:
        hf_hub.push_pipeline(folder, "test-user/x", token=TOKEN, endpoint=hub.endpoint)
    assert bad in str(err.value) and "safe_serialization=True" in str(err.value)
    assert hub.requests == []  # refused before any network call
    assert hf_ddpm.cli.main(["push", str(folder), "--repo-id", "test-user/x", "--token", TOKEN,
                             "--endpoint", hub.endpoint]) == 2
    err_text = capsys.readouterr().err
    assert err_text.startswith("hf-ddpm push: error: Refusing") and err_text.count("\n") == 1 and bad in err_text


@pytest.mark.parametrize("bad", ["checkpoints/checkpoint-500/model.safetensors", "checkpoint-10/unet.safetensors",
                                 "logs/events.out.tfevents.1700000000.host", "optimizer.safetensors"])
def test_training_state_is_refused(folder, bad):
    (folder / bad).parent.mkdir(parents=True, exist_ok=True)
    (folder / bad).write_bytes(b"x")
    with pytest.raises(ValueError, match="training state") as err:
        hf_hub.check_pipeline_folder(folder)
    assert bad in str(err.value)


def _break(folder: Path, how: str) -> str:
    if how == "no model_index":
        (folder / "model_index.json").unlink()
        return "no model_index.json"
    if how == "custom class":
        index = json.loads((folder / "model_index.json").read_text())
        index["unet"] = ["hf_ddpm.unet", "DDPMUNet2DModel"]
        (folder / "model_index.json").write_text(json.dumps(index))
        return "stock diffusers cannot load"
    if how == "no weights":
        (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
        return "no \\*.safetensors weights"
    if how == "truncated weights":
        weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-100])
        return "truncated or corrupt"
    if how == "no scheduler config":
        (folder / "scheduler" / "scheduler_config.json").unlink()
        return "scheduler/scheduler_config.json is missing"
    if how == "not a DDPMPipeline":
        index = json.loads((folder / "model_index.json").read_text())
        index["_class_name"] = "DDIMPipeline"
        (folder / "model_index.json").write_text(json.dumps(index))
        return "hf-ddpm pushes DDPMPipeline"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["no model_index", "custom class", "no weights", "truncated weights",
                                 "no scheduler config", "not a DDPMPipeline"])
def test_folders_that_are_not_loadable_pipelines_are_refused(folder, how):
    message = _break(folder, how)
    error = FileNotFoundError if how == "no model_index" else ValueError  # artifacts' folder check: a missing file
    with pytest.raises(error, match=message):
        hf_hub.check_pipeline_folder(folder)


def test_only_pipeline_files_are_selected(folder):
    (folder / "notes.txt").write_text("private notes")
    (folder / "samples").mkdir()
    (folder / "samples" / "step_100.png").write_bytes(b"png")
    (folder / "unet" / "extra").mkdir()
    (folder / "unet" / "extra" / "x.safetensors").write_bytes(b"x")
    (folder / "eval_results.json").write_text(json.dumps(EVAL_RESULTS))
    upload = hf_hub.check_pipeline_folder(folder)
    assert set(upload.files) == PIPELINE_FILES | {"eval_results.json"}
    assert upload.skipped == ["notes.txt", "samples/step_100.png", "unet/extra/x.safetensors"]
    with pytest.raises(FileNotFoundError):
        hf_hub.check_pipeline_folder(folder / "missing")


# ------------------------------------------------------------------------------------------------ push (in-process)
def test_push_uploads_only_pipeline_files_with_a_card_for_the_repo(folder, hub, monkeypatch):
    (folder / "notes.txt").write_text("private notes")
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # the standard place: no token argument
    info = hf_hub.push_pipeline(folder, "test-user/tiny-ddpm", endpoint=hub.endpoint)

    files = hub.files("test-user/tiny-ddpm")
    assert set(files) == PIPELINE_FILES | {".gitattributes"}
    for rel in PIPELINE_FILES:
        assert files[rel] == (folder / rel).read_bytes(), rel
    assert hub.tree("test-user/tiny-ddpm")["unet/diffusion_pytorch_model.safetensors"]["lfs"] is True
    assert info.oid == hub.head("test-user/tiny-ddpm") and not hub.is_private("test-user/tiny-ddpm")
    assert hub.commits("test-user/tiny-ddpm")[0]["title"].startswith("Upload DDPM pipeline with hf-ddpm")
    card = files["README.md"].decode()
    assert 'DDPMPipeline.from_pretrained("test-user/tiny-ddpm")' in card and "USER/MODEL_NAME" not in card
    writes = [r for r in hub.requests if r.method in ("POST", "PUT") and not r.path.startswith("/__lfs__/")]
    assert writes and all(r.authorization == f"Bearer {TOKEN}" for r in writes)

    head = hub.head("test-user/tiny-ddpm")
    hf_hub.push_pipeline(folder, "test-user/tiny-ddpm", endpoint=hub.endpoint)  # exist_ok, nothing changed
    assert hub.head("test-user/tiny-ddpm") == head


def test_push_options_private_revision_pr_and_message(folder, hub, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(TOKEN + "\n"))  # --token - reads it from stdin
    first = ["push", str(folder), "--token", "-", "--endpoint", hub.endpoint]
    assert hf_ddpm.cli.main(first + ["--repo-id", "test-user/secret", "--private", "--commit-message", "first!"]) == 0
    base = ["push", str(folder), "--token", TOKEN, "--endpoint", hub.endpoint]
    assert hub.is_private("test-user/secret") and hub.commits("test-user/secret")[0]["title"] == "first!"

    main_head = hub.head("test-user/secret")
    assert hf_ddpm.cli.main(base + ["--repo-id", "test-user/secret", "--revision", "dev"]) == 0
    assert hub.head("test-user/secret") == main_head  # main untouched
    (folder / "eval_results.json").write_text(json.dumps(EVAL_RESULTS))
    assert hf_ddpm.cli.main(base + ["--repo-id", "test-user/secret", "--revision", "dev"]) == 0
    assert "eval_results.json" in hub.files("test-user/secret", "dev")
    assert "eval_results.json" not in hub.files("test-user/secret")

    assert hf_ddpm.cli.main(base + ["--repo-id", "test-user/secret", "--create-pr", "--commit-message", "pr"]) == 0
    assert hub.head("test-user/secret") == main_head
    assert "eval_results.json" in hub.files("test-user/secret", "refs/pr/1")
    assert hub.commits("test-user/secret", "refs/pr/1")[0]["title"] == "pr"
    assert hub.commits("test-user/secret", "refs/pr/1")[1]["id"] == main_head  # the PR is based on main
    assert all(r.authorization == f"Bearer {TOKEN}" for r in hub.find_requests("POST", "/commit/"))
    out = capsys.readouterr()
    assert "Pull request:" in out.out and "discussions/1" in out.out
    assert TOKEN not in out.out + out.err


def test_push_private_into_existing_public_repo_is_refused(folder, hub):
    hub.create_repo("test-user/public")
    head = hub.head("test-user/public")
    with pytest.raises(ValueError, match="already exists and is public"):
        hf_hub.push_pipeline(folder, "test-user/public", token=TOKEN, endpoint=hub.endpoint, private=True)
    assert hub.head("test-user/public") == head


def test_rejected_token_never_appears_in_errors(folder, capsys):
    with LocalHub(tokens=["hf_theOnlyAcceptedToken000000000"]) as hub:
        with pytest.raises(PermissionError, match="refused access") as err:
            hf_hub.push_pipeline(folder, "test-user/x", token=TOKEN, endpoint=hub.endpoint)
        assert TOKEN not in str(err.value) and err.value.__cause__ is None
        assert hf_ddpm.cli.main(["push", str(folder), "--repo-id", "test-user/x", "--token", TOKEN,
                                 "--endpoint", hub.endpoint]) == 2
        out = capsys.readouterr()
        assert "refused access" in out.err and TOKEN not in out.out + out.err
        assert not hub.repo_exists("test-user/x")


def test_errors_that_quote_the_token_are_scrubbed(folder, hub, monkeypatch):
    from huggingface_hub import HfApi

    response = SimpleNamespace(status_code=500, headers={}, request=None)

    def leaky_upload(self, **kwargs):
        raise HfHubHTTPError(f"500 Server Error: echoing Authorization: Bearer {TOKEN}", response=response)

    monkeypatch.setattr(HfApi, "upload_folder", leaky_upload)
    with pytest.raises(hf_hub.HubPushError) as err:
        hf_hub.push_pipeline(folder, "test-user/x", token=TOKEN, endpoint=hub.endpoint)
    assert "Bearer ***" in str(err.value) and TOKEN not in str(err.value)

    def leaky_oserror(self, **kwargs):
        raise ConnectionError(f"cannot reach host with {TOKEN}")

    monkeypatch.setattr(HfApi, "upload_folder", leaky_oserror)
    with pytest.raises(hf_hub.HubPushError) as err:
        hf_hub.push_pipeline(folder, "test-user/x", token=TOKEN, endpoint=hub.endpoint)
    assert TOKEN not in str(err.value) and "cannot reach host" in str(err.value)


def test_push_to_an_unreachable_endpoint_is_one_line_without_the_token(folder, capsys, monkeypatch):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setattr(hf_constants, "ENDPOINT", endpoint)  # what HF_ENDPOINT sets
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    before = _all_bytes(folder)
    for extra in ([], ["--endpoint", endpoint, "--token", TOKEN]):
        assert hf_ddpm.cli.main(["push", str(folder), "--repo-id", "test-user/x", *extra]) == 1
        out = capsys.readouterr()
        assert out.err.count("\n") == 1 and TOKEN not in out.out + out.err, out.err
        assert out.err.startswith(f"hf-ddpm push: error: pushing to test-user/x failed: cannot reach the Hub at "
                                  f"{endpoint} (") and "(--endpoint): check the address" in out.err
        assert "HF_ENDPOINT" in out.err
    assert _all_bytes(folder) == before
    with pytest.raises(hf_hub.HubPushError, match="cannot reach the Hub"):
        hf_hub.push_pipeline(folder, "test-user/x", token=TOKEN)


def test_missing_token_and_bad_repo_id_are_clear_errors(folder, hub, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(ValueError, match="No Hugging Face token"):
        hf_hub.push_pipeline(folder, "test-user/x", endpoint=hub.endpoint)
    with pytest.raises(ValueError, match="invalid repo id"):
        hf_hub.push_pipeline(folder, "a/b/c", token=TOKEN, endpoint=hub.endpoint)
    (folder / "training_config.json").write_text(json.dumps({"note": f"token {TOKEN}"}))
    with pytest.raises(ValueError, match="contains your Hugging Face token") as err:
        hf_hub.push_pipeline(folder, "test-user/x", token=TOKEN, endpoint=hub.endpoint)
    assert TOKEN not in str(err.value)
    assert hub.find_requests("POST") == []


# ------------------------------------------------------------------------------------------------ end to end
def _env(hub: LocalHub, hf_home: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(hf_home), HF_HUB_DISABLE_XET="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1", **extra)
    return env


def _start(code: str, env: dict) -> subprocess.Popen:
    program = SAMPLE + textwrap.dedent(code)  # sample() is defined first
    return subprocess.Popen([sys.executable, "-c", program], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-4000:]
    return json.loads(out.strip().splitlines()[-1])


def _push_command() -> list[str]:
    """The installed `hf-ddpm` script (else the same entry point through the interpreter)."""
    script = shutil.which("hf-ddpm", path=os.path.dirname(sys.executable)) or shutil.which("hf-ddpm")
    return [script] if script else [sys.executable, "-m", "hf_ddpm.cli"]


SAMPLE = f"""
def sample(pipe):
    import torch
    pipe.set_progress_bar_config(disable=True)
    return pipe(batch_size=2, generator=torch.Generator().manual_seed({SEED}), num_inference_steps={T},
                output_type="np").images.tolist()
"""


def test_push_then_load_by_repo_id_with_stock_diffusers_hf_ddpm_and_offline(trained, hub, tmp_path):
    repo = "test-user/tiny-ddpm"
    folder = Path(shutil.copytree(trained["dir"], tmp_path / "pipeline"))
    hf_home = tmp_path / "hf_home"

    # 1. the CLI in a subprocess, token from HF_TOKEN, with huggingface_hub's debug logging on
    proc = subprocess.run(_push_command() + ["push", str(folder), "--repo-id", repo], capture_output=True, text=True,
                          env=_env(hub, hf_home, HF_TOKEN=TOKEN, HF_DEBUG="1"), timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"Pushed {folder} to {repo}" in proc.stdout and TOKEN not in proc.stdout + proc.stderr
    assert set(hub.files(repo)) == PIPELINE_FILES | {".gitattributes"}

    # 2. stock diffusers, in a process where hf_ddpm cannot even be imported, and (3.) hf_ddpm, side by side
    stock = _start(
        f"""
        import json, sys
        sys.modules["hf_ddpm"] = None  # any attempt to import hf_ddpm raises ImportError
        from diffusers import DDPMPipeline
        pipe = DDPMPipeline.from_pretrained({repo!r})
        loaded = [m for m, v in sys.modules.items() if m.startswith("hf_ddpm") and v is not None]
        print(json.dumps({{"images": sample(pipe), "scheduler": type(pipe.scheduler).__module__, "hf_ddpm": loaded}}))
        """,
        _env(hub, hf_home),
    )
    ours = _start(
        f"""
        import json, hf_ddpm
        pipe = hf_ddpm.DDPMPipeline.from_pretrained({repo!r})
        print(json.dumps({{"images": sample(pipe), "scheduler": type(pipe.scheduler).__module__}}))
        """,
        _env(hub, tmp_path / "hf_home_hf_ddpm"),
    )
    stock, ours = _result(stock), _result(ours)
    assert stock["hf_ddpm"] == [] and stock["scheduler"].startswith("diffusers.")
    np.testing.assert_allclose(np.array(stock["images"]), trained["samples"], atol=1e-5)
    assert ours["scheduler"].startswith("hf_ddpm.")
    np.testing.assert_allclose(np.array(ours["images"]), trained["samples"], atol=1e-6)
    for home in (hf_home, tmp_path / "hf_home_hf_ddpm"):  # both downloaded the pushed commit from the server
        assert (home / "hub" / "models--test-user--tiny-ddpm" / "snapshots" / hub.head(repo)).is_dir()

    # 4. HF_HUB_OFFLINE=1: both load from the same HF_HOME cache without a single request
    hub.clear_requests()
    offline = _result(_start(
        f"""
        import json, diffusers, hf_ddpm
        a = diffusers.DDPMPipeline.from_pretrained({repo!r})
        b = hf_ddpm.DDPMPipeline.from_pretrained({repo!r})
        print(json.dumps({{"stock": sample(a), "ours": sample(b)}}))
        """,
        _env(hub, hf_home, HF_HUB_OFFLINE="1"),
    ))
    assert hub.requests == []
    np.testing.assert_allclose(np.array(offline["stock"]), trained["samples"], atol=1e-5)
    np.testing.assert_allclose(np.array(offline["ours"]), trained["samples"], atol=1e-6)

    for path, data in _all_bytes(hf_home, folder, hub.root):  # the token was written nowhere
        assert TOKEN.encode() not in data, path
