"""What a saved pipeline folder is: its file names, the checks that a path is one, loading it, the facts it
states about itself (configs, parameter count from safetensors headers), the training run's record
(training_config.json, without secrets), and the .npz files evaluation writes."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MODEL_INDEX = "model_index.json"
TRAINING_CONFIG_FILE = "training_config.json"  # the training run's record, written by training/train.py
RESULTS_FILE = "eval_results.json"
BPD_TERMS_FILE = "bpd_terms.npz"
SAMPLES_GRID_FILE = "samples_grid.png"
SAMPLES_FILE = "samples.npz"

PASS_PIPELINE = ("pass the folder that pipeline.save_pretrained(folder) wrote (a training run saves it as "
                 "OUTPUT_DIR/pipeline)")
RESAVE_WEIGHTS = ("save the pipeline again with pipeline.save_pretrained(folder), or copy the file again if a "
                  "transfer cut it short")


def spatial_size(unet_config) -> tuple[int, int]:
    """(height, width) of a UNet config's `sample_size`, which diffusers allows as an int or a pair."""
    size = unet_config["sample_size"] if isinstance(unet_config, dict) else unet_config.sample_size
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# File names that are local data, never a Hub id: images and MNIST-style IDX files.
LOCAL_DATA_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", "-ubyte", "-ubyte.gz", ".idx", ".idx.gz")


def is_local_path(name: str, on_disk: bool = True) -> bool:
    """Whether `name` means a path on this machine: spelled like one (absolute, ./ ../ ~, a separator beyond one
    "user/name", an image or IDX file name) or, with `on_disk`, existing here. Without `on_disk` the answer depends
    on the spelling only, never on the current working directory (what a model card needs)."""
    spelled = (os.path.isabs(name) or name.startswith(("./", "../", "~", ".\\", "..\\")) or name.count("/") > 1
               or (os.sep != "/" and os.sep in name) or name.lower().endswith(LOCAL_DATA_SUFFIXES))
    return spelled or (on_disk and os.path.exists(name))


# -------------------------------------------------------------------------------------------- the folder check
def looks_like_hub_id(path: str) -> bool:
    """Whether `path`, which is not a local file or folder, may name a Hub model ("user/name")."""
    return (not path.startswith(("/", "./", "../", "~")) and path.count("/") == 1
            and re.fullmatch(r"[\w.-]+/[\w.-]+", path) is not None)


def check_pipeline_path(path: str) -> None:
    """Refuse, before any work, a pipeline path that is no saved pipeline folder and cannot be a Hub id."""
    if os.path.exists(path) or not looks_like_hub_id(path):
        check_pipeline_folder_exists(Path(path))


def check_pipeline_folder_exists(path: Path) -> None:
    """A local pipeline folder: exists, is a folder, has a model_index.json."""
    if not path.exists():
        raise FileNotFoundError(f"pipeline folder {path} not found: {PASS_PIPELINE}.")
    if not path.is_dir():
        raise NotADirectoryError(f"pipeline {path} is a file, not a folder: {PASS_PIPELINE}.")
    if not (path / MODEL_INDEX).is_file():
        raise FileNotFoundError(f"{path} is not a saved pipeline: it has no {MODEL_INDEX}; {PASS_PIPELINE}.")


# ----------------------------------------------------------------------------------------------- loading
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


def load_pipeline(pipeline, device="cpu", progress: bool = True):
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


# ------------------------------------------------------------------------------------------------- facts
def read_json(path: Path, fix: str = "save the pipeline again with pipeline.save_pretrained(folder)") -> Any:
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
            weight_map = read_json(index).get("weight_map", {})
            return [component_dir / name for name in sorted(set(weight_map.values()))]
    files = sorted(component_dir.glob("*.safetensors"))
    plain = [f for f in files if "." not in f.name[: -len(".safetensors")]]
    return plain or files[:1]


weight_files = _weight_files  # the public name (hf_ddpm.hub.upload checks every file it lists)


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
    check_pipeline_folder_exists(path)
    index_path = path / MODEL_INDEX
    model_index = read_json(index_path)
    if not isinstance(model_index, dict) or not isinstance(model_index.get("_class_name"), str):
        raise ValueError(f"{index_path} has no _class_name: it is not a diffusers pipeline index.")
    facts = PipelineFacts(path=path, class_name=model_index["_class_name"], components=_components(model_index, path))
    if (path / "unet" / "config.json").is_file():
        facts.unet_config = read_json(path / "unet" / "config.json")
    if (path / "scheduler" / "scheduler_config.json").is_file():
        facts.scheduler_config = read_json(path / "scheduler" / "scheduler_config.json")
    if (path / "unet").is_dir() and _weight_files(path / "unet"):
        facts.num_parameters, facts.weight_dtypes = count_parameters(path / "unet")
    return facts


# ------------------------------------------------------------------------------- the training run's record
SECRET_KEY_PATTERN = re.compile(r"token|secret|passw|api[_-]?key|credential|authorization", re.IGNORECASE)
HF_TOKEN_PATTERN = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")  # what a Hugging Face access token looks like
TRAINING_CONFIG_FIX = ("fix it, or delete it (the card then shows the training settings as not recorded; training "
                       "writes the file with the pipeline)")


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
        with contextlib.suppress(TypeError, ValueError):
            return _jsonable(value.item())
    return str(value)


def _drop_secrets(value: Any) -> Any:
    """Remove secret-looking keys (token, password, api_key...) and values that look like Hugging Face tokens."""
    def secret(v: Any) -> bool:
        return isinstance(v, str) and HF_TOKEN_PATTERN.search(v) is not None

    if isinstance(value, dict):
        return {k: _drop_secrets(v) for k, v in value.items() if not SECRET_KEY_PATTERN.search(str(k)) and not secret(v)}
    if isinstance(value, list):
        return [_drop_secrets(v) for v in value if not secret(v)]
    return value


def clean_training_config(training: dict) -> dict:
    """`training` made JSON-safe, with secret-looking entries removed (what training_config.json stores: it is
    uploaded with the pipeline)."""
    if not isinstance(training, dict):
        raise ValueError(f"training must be a dict of training settings, got {type(training).__name__}.")
    return _drop_secrets(_jsonable(training))


def write_training_config(pipeline_dir: str | os.PathLike, training: dict) -> Path:
    """Write the training run's record, cleaned (`clean_training_config`), as `pipeline_dir/training_config.json`."""
    path = Path(pipeline_dir) / TRAINING_CONFIG_FILE
    path.write_text(json.dumps(clean_training_config(training), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def read_training_config(pipeline_dir: str | os.PathLike) -> dict | None:
    """The training run's record saved with a pipeline (None when there is none), or a ValueError saying the fix."""
    path = Path(pipeline_dir) / TRAINING_CONFIG_FILE
    if not path.is_file():
        return None
    training = read_json(path, TRAINING_CONFIG_FIX)
    if not isinstance(training, dict):
        raise ValueError(f"{path} must hold a JSON object of training settings: {TRAINING_CONFIG_FIX}.")
    return training


# ---------------------------------------------------------------------------------------------- npz files
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
