"""Share hf-ddpm pipelines on the Hugging Face Hub: model cards, checked uploads, and the `push` / `card` commands.

- `write_model_card(pipeline_dir, training, dataset, license, repo_id)` renders `model_cards/ddpm_model_card.md`
  through `huggingface_hub.ModelCard` into `pipeline_dir/README.md`. Facts come from the saved pipeline itself
  (`model_index.json`, `unet/config.json`, `scheduler/scheduler_config.json`, parameter count and dtype from the
  safetensors headers), from `training_config.json` (the `training` dict, saved there) and from `eval_results.json`
  (written by evaluation: the model-index). A fact that was not recorded is printed as "not recorded".
- `push_pipeline(pipeline_dir, repo_id, ...)` checks the folder first (a loadable stock-named pipeline, no pickle
  file, no training state), creates the repo if needed and uploads only the pipeline's files.
- `register_cli(subparsers)`: `hf-ddpm push PIPELINE_DIR --repo-id USER/NAME` and `hf-ddpm card PIPELINE_DIR`.

What goes up (everything else in the folder is left out and listed): `model_index.json`; in each component folder
named by `model_index.json`, its `*.json` configs and `*.safetensors` weights; at the top level `README.md`,
`*.json` (training_config.json, eval_results.json...), images (`samples.png`...) and `LICENSE*`.
What is refused, before any network call: a folder without a loadable `model_index.json`, components that name
non-diffusers classes or lack their config / safetensors weights, any pickle-format file anywhere (`*.bin`, `*.pt`,
`*.pth`, `*.ckpt`, `*.pkl`, `*.pickle`) and training state (`checkpoints/`, `checkpoint-*/`, `logs/`, `runs/`,
`wandb/`, `optimizer*`, `*tfevents*`, `random_states*`): push the folder that `save_pretrained` wrote, not the
training output directory.

The token is resolved like every huggingface_hub call (argument > `HF_TOKEN` > the `hf auth login` cache). It is
only handed to `HfApi`; it is never printed, logged or written, and it is scrubbed from the message of any error
re-raised here. A folder file that contains the token is refused.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import math
import os
import re
import struct
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

logger = logging.getLogger(__name__)

TEMPLATE_NAME = "ddpm_model_card.md"
CARD_MARKER = "hf-ddpm model card"  # in an HTML comment of every generated README.md
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
TRAINING_STATE_DIRS = ("checkpoints", "checkpoint-*", "logs", "runs", "wandb", "mlruns")
TRAINING_STATE_FILES = ("optimizer*", "*tfevents*", "random_states*")
TOP_LEVEL_UPLOADS = ("README.md", "*.json", "*.png", "*.jpg", "*.jpeg", "*.webp", "*.gif", "LICENSE", "LICENSE.*")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")

# The `training` keys the card knows, in the order of its training table, with their labels.
TRAINING_FIELDS = {
    "dataset": "dataset",
    "dataset_config": "dataset config",
    "random_flip": "random horizontal flip",
    "unet_preset": "UNet preset",
    "loss_type": "objective (loss)",
    "loss_weighting": "loss weighting",
    "max_train_steps": "training steps",
    "train_batch_size": "batch size (global)",
    "gradient_accumulation_steps": "gradient accumulation steps",
    "learning_rate": "learning rate",
    "lr_warmup_steps": "LR warmup steps",
    "adam_beta1": "Adam beta1",
    "adam_beta2": "Adam beta2",
    "adam_weight_decay": "Adam weight decay",
    "max_grad_norm": "gradient clipping (global norm)",
    "use_ema": "saved weights",
    "ema_decay": "EMA decay",
    "mixed_precision": "mixed precision",
    "hardware": "hardware",
    "num_processes": "processes (devices)",
    "training_time_hours": "training time (hours)",
    "seed": "seed",
}
# `training` keys whose value the saved configs / weights also hold: the saved value wins, a difference is reported.
CONFIG_CHECKED_FIELDS = (
    "resolution",
    "channels",
    "num_parameters",
    "beta_schedule",
    "num_train_timesteps",
    "prediction_type",
    "variance_type",
    "dropout",
)
NOT_RECORDED = "not recorded"

# eval_results.json metric -> (model-index type, display name, std key, which settings describe it)
METRICS = {
    "fid": ("fid", "FID", None, "inception"),
    "inception_score": ("is", "Inception Score", "inception_score_std", "inception"),
    "kid": ("kid", "KID", "kid_std", "inception"),
    "fd_dinov2": ("fd-dinov2", "FD (DINOv2)", None, "samples"),
    "bpd": ("bits-per-dim", "NLL (bits/dim, upper bound)", None, "bpd"),
}
DATASET_NAMES = {
    "fashion_mnist": "Fashion-MNIST",
    "zalando-datasets/fashion_mnist": "Fashion-MNIST",
    "mnist": "MNIST",
    "ylecun/mnist": "MNIST",
    "cifar10": "CIFAR-10",
    "uoft-cs/cifar10": "CIFAR-10",
    "celeba_hq": "CelebA-HQ",
    "lsun_church": "LSUN Church",
    "lsun_bedroom": "LSUN Bedroom",
    "lsun_cat": "LSUN Cat",
}
# variance types whose sampling in stock diffusers' DDPMScheduler differs from hf-ddpm's (see hf_ddpm.scheduling_ddpm)
STOCK_VARIANCE_DIFFERENCES = {
    "fixed_large_log": "stock diffusers samples `fixed_large_log` with the square root of a log-variance (NaN)",
    "learned": "stock diffusers reads the model's variance output as a variance, hf-ddpm as a log-variance "
    "(Improved DDPM)",
}
_SECRET_KEY_RE = re.compile(r"token|secret|passw|api[_-]?key|credential|authorization", re.IGNORECASE)
_HF_TOKEN_RE = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# How to get a pipeline folder: said by every error about a missing or damaged one.
PASS_PIPELINE = ("pass the folder that pipeline.save_pretrained(folder) wrote (a training run saves it as "
                 "OUTPUT_DIR/pipeline)")
RESAVE_WEIGHTS = ("save the pipeline again with pipeline.save_pretrained(folder), or copy the file again if a "
                  "transfer cut it short")


# ---------------------------------------------------------------------------------------------------- template
def model_card_template_path() -> Path:
    """The model-card template: `hf_ddpm/model_cards/` of an installed wheel, else `model_cards/` of the checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "model_cards" / TEMPLATE_NAME, here.parent / "model_cards" / TEMPLATE_NAME):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"The model-card template {TEMPLATE_NAME} is missing: it ships in model_cards/ of the hf-ddpm source and "
        "as hf_ddpm/model_cards/ in the wheel; reinstall hf-ddpm."
    )


# ---------------------------------------------------------------------------------------------------- pipeline facts
def _read_json(path: Path, fix: str = "save the pipeline again with pipeline.save_pretrained(folder)") -> Any:
    """The JSON in `path`; a ValueError naming the file and `fix` when it is not valid JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}): {fix}.") from None


def read_safetensors_header(path: str | os.PathLike) -> dict:
    """The JSON header of a safetensors file (tensor name -> dtype, shape, offsets), checked against the file size."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path} is not a safetensors file (it is {size} bytes long): {RESAVE_WEIGHTS}.")
        (header_size,) = struct.unpack("<Q", raw)
        if header_size > min(size - 8, 100 * 1024 * 1024):
            raise ValueError(f"{path} is not a safetensors file (bad header size): {RESAVE_WEIGHTS}.")
        try:
            header = json.loads(f.read(header_size))
        except (ValueError, UnicodeDecodeError):
            raise ValueError(f"{path} is not a safetensors file (unreadable header): {RESAVE_WEIGHTS}.") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not a safetensors file (unreadable header): {RESAVE_WEIGHTS}.")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    end = max((int(v["data_offsets"][1]) for v in tensors.values()), default=0)
    if 8 + header_size + end != size:
        raise ValueError(f"{path} is truncated or corrupt: its header describes {8 + header_size + end} bytes, "
                         f"the file has {size}. To fix it, {RESAVE_WEIGHTS}.")
    return tensors


def _weight_files(component_dir: Path) -> list[Path]:
    """The safetensors files of one set of weights: a sharded index's files, else the non-variant file(s)."""
    indexes = sorted(component_dir.glob("*.safetensors.index.json"))
    for index in indexes:
        if index.name.count(".") == 3:  # "diffusion_pytorch_model.safetensors.index.json": not a variant
            weight_map = _read_json(index).get("weight_map", {})
            return [component_dir / name for name in sorted(set(weight_map.values()))]
    files = sorted(component_dir.glob("*.safetensors"))
    plain = [f for f in files if "." not in f.name[: -len(".safetensors")]]
    return plain or files[:1]


def count_parameters(component_dir: str | os.PathLike) -> tuple[int, list[str]]:
    """(number of parameters, sorted dtypes) of a component's safetensors weights, read from headers only."""
    total, dtypes = 0, set()
    for path in _weight_files(Path(component_dir)):
        for info in read_safetensors_header(path).values():
            total += math.prod(info["shape"])
            dtypes.add(str(info["dtype"]))
    return total, sorted(dtypes)


@dataclass
class PipelineFacts:
    """What a saved pipeline folder says about itself."""

    path: Path
    class_name: str
    components: dict[str, tuple[str, str]]
    unet_config: dict = field(default_factory=dict)
    scheduler_config: dict = field(default_factory=dict)
    num_parameters: int | None = None
    weight_dtypes: list[str] = field(default_factory=list)


def _components(model_index: dict, path: Path) -> dict[str, tuple[str, str]]:
    out = {}
    for name, value in model_index.items():
        if name.startswith("_") or not isinstance(value, (list, tuple)) or len(value) != 2:
            continue
        if value[0] is None and value[1] is None:  # an optional component that is not set
            continue
        if not all(isinstance(v, str) for v in value):
            raise ValueError(f"{path / 'model_index.json'}: component {name!r} must be [library, class], "
                             f"got {value!r}.")
        out[name] = (value[0], value[1])
    return out


def read_pipeline_facts(pipeline_dir: str | os.PathLike) -> PipelineFacts:
    """Read model_index.json, the unet / scheduler configs and the unet's parameter count from a pipeline folder."""
    path = Path(pipeline_dir)
    if not path.exists():
        raise FileNotFoundError(f"No pipeline folder at {path}: {PASS_PIPELINE}.")
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a folder: pass the folder that pipeline.save_pretrained() wrote.")
    index_path = path / "model_index.json"
    if not index_path.is_file():
        raise ValueError(
            f"{path} is not a diffusers pipeline folder: it has no model_index.json. Pass the folder written by "
            "pipeline.save_pretrained(folder)."
        )
    model_index = _read_json(index_path)
    if not isinstance(model_index, dict) or not isinstance(model_index.get("_class_name"), str):
        raise ValueError(f"{index_path} has no _class_name: it is not a diffusers pipeline index.")
    facts = PipelineFacts(path=path, class_name=model_index["_class_name"], components=_components(model_index, path))
    if (path / "unet" / "config.json").is_file():
        facts.unet_config = _read_json(path / "unet" / "config.json")
    if (path / "scheduler" / "scheduler_config.json").is_file():
        facts.scheduler_config = _read_json(path / "scheduler" / "scheduler_config.json")
    if (path / "unet").is_dir() and _weight_files(path / "unet"):
        facts.num_parameters, facts.weight_dtypes = count_parameters(path / "unet")
    return facts


# ---------------------------------------------------------------------------------------------------- folder checks
@dataclass
class PipelineUpload:
    """The result of `check_pipeline_folder`: the files that go up and those left out (paths relative, POSIX)."""

    path: Path
    files: list[str]
    skipped: list[str]


def _list_files(path: Path) -> list[str]:
    out = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d != ".cache")  # huggingface_hub's upload metadata cache
        rel_root = Path(root).relative_to(path)
        out.extend((rel_root / name).as_posix() for name in sorted(files))
    return sorted(out)


def _training_state(rel: str) -> bool:
    parts = rel.split("/")
    if any(fnmatch.fnmatch(d.lower(), pattern) for d in parts[:-1] for pattern in TRAINING_STATE_DIRS):
        return True
    return any(fnmatch.fnmatch(parts[-1].lower(), pattern) for pattern in TRAINING_STATE_FILES)


def _short_list(paths: list[str], limit: int = 5) -> str:
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def check_pipeline_folder(pipeline_dir: str | os.PathLike) -> PipelineUpload:
    """Check that `pipeline_dir` is a shareable pipeline; return what goes up. Raises ValueError saying what to fix.

    Refuses: pickle-format files anywhere, training state (checkpoints, logs, optimizer states), a missing or
    invalid model_index.json, components naming classes stock diffusers does not have, a component folder without
    its config, a model without safetensors weights (or with corrupt ones).
    """
    path = Path(pipeline_dir)
    if not path.exists():
        raise FileNotFoundError(f"No pipeline folder at {path}: {PASS_PIPELINE}.")
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a folder: pass the folder that pipeline.save_pretrained() wrote.")
    all_files = _list_files(path)

    pickles = [f for f in all_files if f.lower().endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise ValueError(
            f"Refusing to push {path}: it holds pickle-format files ({_short_list(pickles)}), which can run code when "
            "loaded. Save the pipeline with pipeline.save_pretrained(folder, safe_serialization=True) and push that "
            "folder (safetensors only)."
        )
    state = [f for f in all_files if _training_state(f)]
    if state:
        raise ValueError(
            f"Refusing to push {path}: it holds training state ({_short_list(state)}). Push only the pipeline folder "
            "that pipeline.save_pretrained(folder) wrote; keep checkpoints, logs and optimizer states out of it."
        )

    facts = read_pipeline_facts(path)
    import diffusers  # deferred: importing hf_ddpm.hub stays light

    if not hasattr(diffusers, facts.class_name):
        raise ValueError(f"{path / 'model_index.json'} names the pipeline class {facts.class_name!r}, which diffusers "
                         "does not have.")
    if facts.class_name != "DDPMPipeline" or not {"unet", "scheduler"} <= set(facts.components):
        raise ValueError(
            f"{path} is a {facts.class_name} with components {sorted(facts.components)}: hf-ddpm pushes DDPMPipeline "
            "folders (unet + scheduler) as written by hf_ddpm.DDPMPipeline.save_pretrained()."
        )
    allowed = {"model_index.json"}
    for name, (library, class_name) in facts.components.items():
        if library != "diffusers" or not hasattr(diffusers, class_name):
            raise ValueError(
                f"{path / 'model_index.json'} names {name} = [{library!r}, {class_name!r}], which stock diffusers "
                "cannot load: save the pipeline with hf_ddpm (it writes stock diffusers class names)."
            )
        component = path / name
        configs = [c for c in ("config.json", "scheduler_config.json") if (component / c).is_file()]
        is_scheduler = class_name.endswith("Scheduler")
        expected = "scheduler_config.json" if is_scheduler else "config.json"
        if expected not in configs:
            raise ValueError(f"{path} is not a loadable pipeline: {name}/{expected} is missing.")
        config_class = _read_json(component / expected).get("_class_name")
        if config_class is not None and not hasattr(diffusers, config_class):
            raise ValueError(f"{path / name / expected} names the class {config_class!r}, which stock diffusers "
                             "cannot load: save the pipeline with hf_ddpm (it writes stock diffusers class names).")
        if not is_scheduler:
            weights = _weight_files(component)
            if not weights:
                raise ValueError(f"{path} is not a loadable pipeline: {name}/ has no *.safetensors weights. Save it "
                                 "with pipeline.save_pretrained(folder, safe_serialization=True).")
            for weight in weights:
                if not weight.is_file():
                    raise ValueError(f"{path} is not a loadable pipeline: {weight.relative_to(path)} is missing.")
                read_safetensors_header(weight)
        for rel in all_files:
            head, _, tail = rel.partition("/")
            if head == name and "/" not in tail and (tail.endswith(".json") or tail.endswith(".safetensors")):
                allowed.add(rel)
    for rel in all_files:
        if "/" not in rel and any(fnmatch.fnmatch(rel, pattern) for pattern in TOP_LEVEL_UPLOADS):
            allowed.add(rel)
    files = sorted(allowed)
    return PipelineUpload(path=path, files=files, skipped=[f for f in all_files if f not in allowed])


# ---------------------------------------------------------------------------------------------------- model card
def _fmt(value: Any) -> str:
    """A value for a Markdown table cell."""
    if value is None:
        return NOT_RECORDED
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, (list, tuple)):
        text = "(" + ", ".join(str(v) for v in value) + ")"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ") or NOT_RECORDED


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        try:
            return _jsonable(value.item())
        except (TypeError, ValueError):
            pass
    return str(value)


def _drop_secrets(value: Any) -> Any:
    """Remove secret-looking keys (token, password, api_key...) and values that look like Hugging Face tokens."""
    if isinstance(value, dict):
        return {k: _drop_secrets(v) for k, v in value.items() if not _SECRET_KEY_RE.search(str(k))
                and not (isinstance(v, str) and _HF_TOKEN_RE.search(v))}
    if isinstance(value, list):
        return [_drop_secrets(v) for v in value if not (isinstance(v, str) and _HF_TOKEN_RE.search(v))]
    return value


def clean_training_config(training: dict) -> dict:
    """`training` made JSON-safe, with secret-looking entries removed (what `training_config.json` stores)."""
    if not isinstance(training, dict):
        raise ValueError(f"training must be a dict of training settings, got {type(training).__name__}.")
    return _drop_secrets(_jsonable(training))


def _dataset_name(name: str | None) -> str | None:
    if not name:
        return None
    return DATASET_NAMES.get(name.lower(), name)


def _is_local_path(name: str) -> bool:
    return os.path.isabs(name) or name.startswith(("./", "../", "~")) or os.path.exists(name)


def _is_hub_dataset(name: str | None) -> bool:
    return bool(name) and _HUB_ID_RE.match(name) is not None and not _is_local_path(name)


def _public_dataset_name(name: str) -> str:
    """A dataset name fit for a public card: a local path is reduced to its last component."""
    return os.path.basename(os.path.normpath(os.path.expanduser(name))) if _is_local_path(name) else name


def _sample_size(unet_config: dict) -> tuple[int, int] | None:
    size = unet_config.get("sample_size")
    if isinstance(size, int):
        return size, size
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return int(size[0]), int(size[1])
    return None


def _attention_resolutions(unet_config: dict) -> list[int]:
    size = _sample_size(unet_config)
    if size is None:
        return []
    return [size[0] // 2**i for i, block in enumerate(unet_config.get("down_block_types") or ()) if "Attn" in block]


def _existing_card_settings(readme: Path) -> dict:
    """The settings recorded in the marker of an hf-ddpm generated README.md ({} for other or missing cards)."""
    if not readme.is_file():
        return {}
    match = re.search(r"<!-- " + re.escape(CARD_MARKER) + r" (\{.*?\}) -->", readme.read_text(encoding="utf-8"))
    if not match:
        return {}
    try:
        settings = json.loads(match.group(1))
    except ValueError:
        return {}
    return settings if isinstance(settings, dict) else {}


def is_generated_card(readme: str | os.PathLike) -> bool:
    """Whether `readme` is a README.md written by hf-ddpm (and may be re-rendered)."""
    readme = Path(readme)
    return readme.is_file() and f"<!-- {CARD_MARKER} " in readme.read_text(encoding="utf-8")


def _model_rows(facts: PipelineFacts) -> list[tuple[str, str]]:
    unet, sched = facts.unet_config, facts.scheduler_config
    size = _sample_size(unet)
    in_ch, out_ch = unet.get("in_channels"), unet.get("out_channels")
    learned = in_ch is not None and out_ch == 2 * in_ch
    attn = _attention_resolutions(unet)
    if sched.get("trained_betas") is not None:
        schedule = f"{sched.get('beta_schedule', 'linear')} (saved as explicit trained_betas)"
    else:
        schedule = (f"{sched.get('beta_schedule', NOT_RECORDED)}, "
                    f"beta {sched.get('beta_start')} -> {sched.get('beta_end')}")
    if sched.get("rescale_betas_zero_snr"):
        schedule += ", rescaled to zero terminal SNR"
    params = f"{facts.num_parameters:,}" if facts.num_parameters is not None else NOT_RECORDED
    clip_range = ""
    if sched.get("clip_sample") and "clip_sample_range" in sched:
        clip_range = f" (to +-{sched['clip_sample_range']})"
    rows = [
        ("architecture", f"`{facts.components.get('unet', ('', 'UNet2DModel'))[1]}` (U-Net, diffusers)"),
        ("parameters", params + (f" ({', '.join(facts.weight_dtypes)} weights)" if facts.weight_dtypes else "")),
        ("resolution", f"{size[0]}x{size[1]}" if size else NOT_RECORDED),
        ("channels", f"{in_ch} in, {out_ch} out" + (" (mean and variance)" if learned else "")),
        ("block channels", _fmt(unet.get("block_out_channels"))),
        ("residual blocks per resolution", _fmt(unet.get("layers_per_block"))),
        ("self-attention at", ", ".join(f"{r}x{r}" for r in attn) if attn else "none"),
        ("dropout", _fmt(unet.get("dropout"))),
        ("diffusion steps T", _fmt(sched.get("num_train_timesteps"))),
        ("beta schedule", schedule),
        ("model predicts (objective target)", _fmt(sched.get("prediction_type"))),
        ("reverse-process variance", _fmt(sched.get("variance_type"))),
        ("x0 clipping when sampling", _fmt(sched.get("clip_sample")) + clip_range),
    ]
    return [(name, value.replace("|", "\\|")) for name, value in rows]


def _training_rows(training: dict) -> tuple[list[tuple[str, str]], list[str]]:
    rows, missing = [], []
    for key, label in TRAINING_FIELDS.items():
        value = training.get(key)
        if value is None:
            missing.append(f"`{key}`")
        if key == "dataset" and value is not None:
            value = _dataset_name(_public_dataset_name(str(value)))
        if key == "use_ema" and value is not None:
            value = "exponential moving average (EMA) of the parameters" if value else "raw parameters (no EMA)"
        if key == "ema_decay" and value is not None and training.get("use_ema") is False:
            value = f"{_fmt(value)} (EMA not used for the saved weights)"
        rows.append((label, _fmt(value)))
    return rows, missing


def _conflicts(training: dict, facts: PipelineFacts) -> list[str]:
    unet, sched = facts.unet_config, facts.scheduler_config
    size = _sample_size(unet)
    saved = {
        "resolution": size[0] if size and size[0] == size[1] else (list(size) if size else None),
        "channels": unet.get("in_channels"),
        "num_parameters": facts.num_parameters,
        "beta_schedule": sched.get("beta_schedule"),
        "num_train_timesteps": sched.get("num_train_timesteps"),
        "prediction_type": sched.get("prediction_type"),
        "variance_type": sched.get("variance_type"),
        "dropout": unet.get("dropout"),
    }
    out = []
    for key in CONFIG_CHECKED_FIELDS:
        recorded, actual = training.get(key), saved.get(key)
        if recorded is None or actual is None:
            continue
        same = math.isclose(float(recorded), float(actual)) if all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in (recorded, actual)) else recorded == actual
        if not same:
            out.append(f"`{key}`: training_config.json says {_fmt(recorded)}, the saved pipeline has {_fmt(actual)}.")
    return out


def _eval_section(evaluation: dict, model_name: str):
    """(EvalResult list for the model-index, table rows, description, notes) from an eval_results.json dict."""
    from huggingface_hub import EvalResult

    if not isinstance(evaluation, dict) or not isinstance(evaluation.get("metrics", {}), dict):
        raise ValueError("eval_results.json must be an object with a 'metrics' object.")
    dataset = evaluation.get("dataset") or {}
    settings = evaluation.get("settings") or {}
    metrics = evaluation.get("metrics") or {}
    if not isinstance(dataset, dict) or not isinstance(settings, dict):
        raise ValueError("eval_results.json: 'dataset' and 'settings' must be objects.")
    name, split, config = dataset.get("name"), dataset.get("split"), dataset.get("config")
    name = _public_dataset_name(str(name)) if name else None
    described = {
        "samples": ("num_samples", "num_inference_steps"),
        "inception": ("num_samples", "num_inference_steps", "feature_extractor"),
        "bpd": ("bpd_num_images",),
    }
    metric_settings = {
        kind: {k.replace("bpd_", ""): settings[k] for k in keys if settings.get(k) is not None}
        for kind, keys in described.items()
    }

    results, rows, notes = [], [], []
    for key in sorted(metrics, key=lambda k: list(METRICS).index(k) if k in METRICS else len(METRICS)):
        value = metrics[key]
        if key not in METRICS:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            notes.append(f"`{key}` is not a finite number in eval_results.json ({value!r}); it is left out.")
            continue
        metric_type, label, std_key, kind = METRICS[key]
        args = dict(metric_settings[kind])
        std = metrics.get(std_key) if std_key else None
        has_std = isinstance(std, (int, float)) and not isinstance(std, bool)
        shown = f"{value:.4g}" + (f" +- {std:.2g}" if has_std else "")
        rows.append((label, shown, ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in args.items()) or NOT_RECORDED))
        if name:
            results.append(
                EvalResult(
                    task_type="unconditional-image-generation",
                    task_name="Unconditional Image Generation",
                    dataset_type=name,
                    dataset_name=_dataset_name(name),
                    dataset_config=config,
                    dataset_split=split,
                    dataset_args={"num_images": dataset["num_images"]} if dataset.get("num_images") else None,
                    metric_type=metric_type,
                    metric_name=label,
                    metric_value=float(value),
                    metric_args=args or None,
                )
            )
    unknown = sorted(k for k in metrics if k not in METRICS and not k.endswith("_std"))
    if unknown:
        notes.append(f"Other metrics in eval_results.json, not described by this card: {', '.join(unknown)}.")
    if rows and not name:
        notes.append("The evaluation dataset was not recorded, so these results are not in the card's model-index.")
    where = (
        f"{_dataset_name(name)} (`{name}`{f', config `{config}`' if config else ''}), "
        f"split `{split or NOT_RECORDED}`" if name else f"a dataset that was {NOT_RECORDED}"
    )
    n = dataset.get("num_images")
    description = f"Evaluated against {where}{f', {n} reference images' if n else ''} (from `eval_results.json`)."
    num_samples = settings.get("num_samples")
    if "fid" in metrics and isinstance(num_samples, int) and num_samples < 50000:
        notes.append(f"FID from {num_samples} samples is biased upwards compared with the usual 50,000.")
    return results, rows, description, notes


def render_model_card(
    pipeline_dir: str | os.PathLike,
    training: dict | None = None,
    dataset: str | None = None,
    license: str = "apache-2.0",
    repo_id: str | None = None,
    evaluation: dict | None = None,
    template_path: str | os.PathLike | None = None,
):
    """The `huggingface_hub.ModelCard` of a pipeline folder, without writing anything.

    `training` defaults to nothing recorded; `evaluation` is an eval_results.json dict (None: not evaluated).
    """
    from huggingface_hub import ModelCard, ModelCardData

    from . import __version__

    path = Path(pipeline_dir)
    facts = read_pipeline_facts(path)
    for name, config in (("unet/config.json", facts.unet_config), ("scheduler/scheduler_config.json",
                                                                   facts.scheduler_config)):
        if not config:
            raise ValueError(f"{path} has no {name}: the card reads the model's facts from it. Pass the folder "
                             "written by pipeline.save_pretrained(folder).")
    training = clean_training_config(training or {})
    model_name = repo_id or path.resolve().name
    dataset = dataset or training.get("dataset") or ((evaluation or {}).get("dataset") or {}).get("name")
    hub_dataset = str(dataset) if dataset and _is_hub_dataset(str(dataset)) else None
    dataset = _public_dataset_name(str(dataset)) if dataset else None  # local paths stay private

    eval_results, eval_rows, eval_description, eval_notes = ([], [], "", [])
    if evaluation is not None:
        eval_results, eval_rows, eval_description, eval_notes = _eval_section(evaluation, model_name)

    tags = ["ddpm", "hf-ddpm", "diffusers", "unconditional-image-generation", "diffusion-models"]
    card_data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="unconditional-image-generation",
        license=license,
        tags=tags,
        datasets=[hub_dataset] if hub_dataset else None,
        metrics=sorted({r.metric_type for r in eval_results}) or None,
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
    )

    unet, sched = facts.unet_config, facts.scheduler_config
    size = _sample_size(unet)
    channels = unet.get("in_channels")
    kind = {1: "grayscale", 3: "RGB"}.get(channels, f"{channels}-channel" if channels else "")
    image_description = f"{size[0]}x{size[1]} {kind} images" if size else "images"
    T = sched.get("num_train_timesteps", 1000)  # stock's default when the config leaves it out
    variance = sched.get("variance_type")
    stock_note = ""
    if variance in STOCK_VARIANCE_DIFFERENCES:
        stock_note = (f"> **Note:** this model uses `variance_type=\"{variance}\"`, and "
                      f"{STOCK_VARIANCE_DIFFERENCES[variance]}. Sample it with `hf_ddpm.DDPMPipeline` (below) to get "
                      "the intended chain.")
    elif variance:
        stock_note = (f"For the full chain with `variance_type=\"{variance}\"`, stock diffusers' `DDPMScheduler` "
                      "samples the same chain as hf-ddpm (up to floating-point rounding).")

    dataset_md = None
    if dataset:
        pretty = _dataset_name(dataset)
        dataset_md = f"[{pretty}](https://huggingface.co/datasets/{hub_dataset})" if hub_dataset else pretty
    training_rows, missing = _training_rows(training)
    limitations = []
    steps = training.get("max_train_steps")
    if isinstance(steps, int) and steps < 800_000:
        limitations.append(f"Trained for {steps:,} steps; the paper trains its models for 800k steps or more.")
    if not eval_rows:
        limitations.append("No evaluation was recorded: the sample quality of this model is not measured.")
    samples = next((path / n for n in ("samples.png", "samples_grid.png") if (path / n).is_file()), None)
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path or model_card_template_path()),
        marker=f"{CARD_MARKER} " + json.dumps({"repo_id": repo_id, "license": license, "dataset": hub_dataset}),
        model_name=model_name,
        load_id=repo_id or "USER/MODEL_NAME",
        load_id_is_placeholder=repo_id is None,
        hf_ddpm_version=__version__,
        pipeline_class=facts.class_name,
        unet_class=facts.components["unet"][1] if "unet" in facts.components else NOT_RECORDED,
        scheduler_class=facts.components["scheduler"][1] if "scheduler" in facts.components else NOT_RECORDED,
        image_description=image_description,
        num_train_timesteps=T,
        record_example=", ".join(str(t) for t in sorted({T - 1, T // 2, 0}, reverse=True)),
        dataset_md=dataset_md,
        stock_note=stock_note,
        samples_file=samples.name if samples else None,
        samples_caption=f"The sample grid saved with the model (`{samples.name if samples else ''}`).",
        model_rows=_model_rows(facts),
        training_recorded=bool(training),
        training_rows=training_rows,
        missing_training=missing if training else [],
        conflicts=_conflicts(training, facts),
        eval_rows=eval_rows,
        eval_description=eval_description,
        eval_notes=eval_notes,
        show_paper_results="cifar" in (dataset or "").lower(),
        limitations=limitations,
    )
    return card


def write_model_card(
    pipeline_dir: str | os.PathLike,
    training: dict | None = None,
    dataset: str | None = None,
    license: str | None = "apache-2.0",
    repo_id: str | None = None,
) -> Path:
    """Render the model card of a saved pipeline into `pipeline_dir/README.md` and return its path.

    `training` (see TRAINING_FIELDS; missing keys are reported as "not recorded") is saved as
    `training_config.json` with secret-looking entries dropped; when it is None the saved `training_config.json`
    is used, if any. `eval_results.json` in the folder, when present, fills the evaluation section and the
    model-index. `repo_id=None` keeps the repo id of a previously generated card (else a placeholder);
    `license=None` keeps the previous card's license (else apache-2.0).
    """
    path = Path(pipeline_dir)
    read_pipeline_facts(path)  # fail early on a folder that is not a pipeline
    previous = _existing_card_settings(path / "README.md")
    config_path = path / "training_config.json"
    if training is not None:
        training = clean_training_config(training)
        config_path.write_text(json.dumps(training, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    elif config_path.is_file():
        fix = ("fix it, or delete it (the card then shows the training settings as not recorded; training "
               "writes the file with the pipeline)")
        training = _read_json(config_path, fix)
        if not isinstance(training, dict):
            raise ValueError(f"{config_path} must hold a JSON object of training settings: {fix}.")
    eval_path = path / "eval_results.json"
    evaluation = None
    if eval_path.is_file():
        evaluation = _read_json(eval_path, "fix it, or delete it and run `hf-ddpm evaluate` again")
    card = render_model_card(
        path,
        training=training,
        dataset=dataset or (training or {}).get("dataset") or previous.get("dataset"),
        license=license or previous.get("license") or "apache-2.0",
        repo_id=repo_id or previous.get("repo_id"),
        evaluation=evaluation,
    )
    readme = path / "README.md"
    readme.write_text(str(card), encoding="utf-8")
    return readme


# ---------------------------------------------------------------------------------------------------- push
class HubPushError(RuntimeError):
    """A push that failed on the Hub's side (network, server error); its message never contains the token."""


def _scrub(text: str, token: str | None) -> str:
    if token:
        text = text.replace(token, "***")
    return _HF_TOKEN_RE.sub("hf_***", text)


@contextmanager
def _hub_errors(token: str | None, repo_id: str) -> Iterator[None]:
    """Re-raise Hub errors as one-line, token-free errors (PermissionError for a rejected token)."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

    try:
        yield
    except OfflineModeIsEnabled:
        raise ValueError("HF_HUB_OFFLINE is set: pushing needs the network; unset it to push.") from None
    except (RepositoryNotFoundError, HfHubHTTPError) as error:
        status = getattr(getattr(error, "response", None), "status_code", None)
        detail = _scrub(" ".join(str(error).split()), token)
        if isinstance(error, RepositoryNotFoundError) or status in (401, 403):
            raise PermissionError(
                f"the Hub refused access to {repo_id} (HTTP {status}): check that your token (HF_TOKEN, "
                f"`hf auth login` or --token) has write access to it. Hub said: {detail}"
            ) from None
        raise HubPushError(f"pushing to {repo_id} failed (HTTP {status}): {detail}") from None
    except (ValueError, OSError, RuntimeError) as error:
        message = str(error)
        leaks = bool(token and token in message) or bool(_HF_TOKEN_RE.search(message))
        if isinstance(error, OSError) and not isinstance(error, PermissionError):  # e.g. connection refused
            raise HubPushError(f"pushing to {repo_id} failed: {_scrub(message, token)}") from None
        if leaks and isinstance(error, (ValueError, PermissionError)):
            raise type(error)(_scrub(message, token)) from None
        if leaks:
            raise HubPushError(_scrub(message, token)) from None
        raise


def _resolve_token(token: str | None) -> str:
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise ValueError("No Hugging Face token: set HF_TOKEN, run `hf auth login`, or pass --token.")
    return token


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"invalid repo id {repo_id!r}: use USER/NAME ({error}).") from None


def _escape_pattern(rel: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", rel)


def push_pipeline(
    pipeline_dir: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    endpoint: str | None = None,
    update_card: bool = True,
):
    """Push a saved DDPM pipeline folder to the Hub; returns huggingface_hub's `CommitInfo` (a str: the commit URL).

    The folder is checked first (`check_pipeline_folder`). The repo is created if needed (`private` applies to a new
    repo; pushing with private=True to an existing public repo is refused). `revision` is a branch, created from
    main if missing; with `create_pr` the commit opens a pull request against it (default main). With `update_card`,
    a missing README.md, or one generated by hf-ddpm, is (re-)rendered for `repo_id` first. `endpoint` defaults to
    HF_ENDPOINT / the Hub. Only the files listed by `check_pipeline_folder` are uploaded.
    """
    from huggingface_hub import HfApi

    from . import __version__

    path = Path(pipeline_dir)
    _check_repo_id(repo_id)
    upload = check_pipeline_folder(path)  # before any network call
    token = _resolve_token(token)
    for rel in upload.files:
        if rel.endswith((".json", ".md")) and token in (path / rel).read_text(encoding="utf-8", errors="replace"):
            raise ValueError(f"Refusing to push {path}: {rel} contains your Hugging Face token. Remove it first.")

    api = HfApi(endpoint=endpoint, token=token, library_name="hf-ddpm", library_version=__version__)
    with _hub_errors(token, repo_id):
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if private and not api.repo_info(repo_id).private:
            raise ValueError(f"{repo_id} already exists and is public: --private only applies to a new repo. Make it "
                             "private in its settings first, or push without --private.")
        if revision and revision != "main":  # a branch to commit to, or the base of the pull request
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        readme = path / "README.md"
        if update_card and (not readme.exists() or is_generated_card(readme)):
            write_model_card(path, repo_id=repo_id, license=None)
            upload = check_pipeline_folder(path)
        elif readme.exists():
            from huggingface_hub import ModelCard

            try:
                ModelCard.load(readme)
            except Exception as error:  # noqa: BLE001 - any parse failure means the Hub would reject the card
                raise ValueError(f"{readme} has invalid metadata: {error}") from None
        if upload.skipped:
            logger.warning("Not uploading (not part of the pipeline): %s", _short_list(upload.skipped, 10))
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=path,
            allow_patterns=[_escape_pattern(rel) for rel in upload.files],
            commit_message=commit_message or f"Upload DDPM pipeline with hf-ddpm {__version__}",
            revision=revision,
            create_pr=create_pr,
        )
    return info


# ---------------------------------------------------------------------------------------------------- CLI
def _run_push(args: argparse.Namespace) -> int:
    token = args.token
    if token == "-":
        token = sys.stdin.readline().strip() or None
    try:
        info = push_pipeline(
            args.pipeline_dir,
            args.repo_id,
            token=token,
            private=args.private,
            revision=args.revision,
            create_pr=args.create_pr,
            commit_message=args.commit_message,
            endpoint=args.endpoint,
            update_card=not args.no_card_update,
        )
    except HubPushError as error:
        print(f"hf-ddpm push: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    print(f"Pushed {args.pipeline_dir} to {args.repo_id}: {info.commit_url}")
    if getattr(info, "pr_url", None):
        print(f"Pull request: {info.pr_url}")
    return 0


def _run_card(args: argparse.Namespace) -> int:
    readme = Path(args.pipeline_dir) / "README.md"
    if readme.exists() and not is_generated_card(readme) and not args.force:
        raise FileExistsError(f"{readme} was not written by hf-ddpm: pass --force to replace it.")
    path = write_model_card(args.pipeline_dir, dataset=args.dataset, license=args.license, repo_id=args.repo_id)
    print(path)
    return 0


def register_cli(subparsers) -> None:
    push = subparsers.add_parser(
        "push",
        help="upload a saved pipeline folder to the Hugging Face Hub",
        description="Upload a pipeline folder written by save_pretrained() to the Hub: only its safetensors weights, "
        "configs, model card, results and images go up. Token: --token, else HF_TOKEN, else `hf auth login`.",
    )
    push.add_argument("pipeline_dir", metavar="PIPELINE_DIR")
    push.add_argument("--repo-id", required=True, metavar="USER/NAME")
    push.add_argument("--private", action="store_true", help="create the repo as private")
    push.add_argument("--revision", metavar="BRANCH", help="push to this branch (created from main if missing)")
    push.add_argument("--create-pr", action="store_true",
                      help="open a pull request (against --revision, default main) instead of committing")
    push.add_argument("--commit-message", metavar="MESSAGE")
    push.add_argument("--token", metavar="TOKEN", help="a Hub token, or '-' to read it from stdin (prefer HF_TOKEN: "
                      "command lines are visible to other users)")
    push.add_argument("--endpoint", metavar="URL", help="Hub endpoint (default: HF_ENDPOINT or huggingface.co)")
    push.add_argument("--no-card-update", action="store_true",
                      help="upload README.md as it is instead of re-rendering a generated card for the repo id")
    push.set_defaults(run=_run_push)

    card = subparsers.add_parser(
        "card",
        help="(re-)render a pipeline folder's README.md model card",
        description="Render PIPELINE_DIR/README.md from the saved configs, training_config.json and eval_results.json.",
    )
    card.add_argument("pipeline_dir", metavar="PIPELINE_DIR")
    card.add_argument("--repo-id", metavar="USER/NAME",
                      help="the repo id used in the card (default: the previous card's)")
    card.add_argument("--license", help="license id (default: the previous card's, else apache-2.0)")
    card.add_argument("--dataset", help="training dataset (default: training_config.json's)")
    card.add_argument("--force", action="store_true", help="replace a README.md that hf-ddpm did not write")
    card.set_defaults(run=_run_card)
