"""The small validators that guard hf_ddpm's Python API: timesteps, generators, step counts, images, UNet configs,
configs handed to the wrong class, pretrained sources and pipeline folders (devices: `hf_ddpm.options.check_device`).

Each raises `hf_ddpm.options.UsageError` (a ValueError) with one line naming the argument, what is wrong and how to
fix it. The scheduler, the pipelines, the likelihood pipeline, `DDPMUNet2DModel.from_preset` / `from_pretrained`
and the `hf-ddpm` commands call these instead of checking inline, so the same input gets the same answer
everywhere. They cost a few Python operations: tensors already on an accelerator are not range-checked (that would
synchronize the host on every call).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .options import UsageError

MODEL_INDEX = "model_index.json"


def _fail(what: str, fix: str) -> UsageError:
    return UsageError(what, None, fix)


# ---------------------------------------------------------------------------------------------- numbers
def check_positive_int(value: Any, name: str, fix: str | None = None) -> int:
    """`value` as an int >= 1 (bools and non-integral numbers refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise _fail(f"{name} must be an integer >= 1, got {value!r}", fix or f"pass {name} as a positive integer")
    return int(value)


def check_num_inference_steps(steps: Any, num_train_timesteps: int | None = None) -> int | None:
    """None (meaning: the default) or an integer in [1, T]; 0 is refused rather than read as "all T steps"."""
    if steps is None:
        return None
    hint = f"pass 1..{num_train_timesteps} (T = num_train_timesteps)" if num_train_timesteps else "pass 1 or more"
    steps = check_positive_int(steps, "num_inference_steps", f"{hint}, or None for the scheduler's default")
    if num_train_timesteps is not None and steps > num_train_timesteps:
        raise _fail(f"num_inference_steps must be <= num_train_timesteps = {num_train_timesteps}, got {steps}",
                    f"{hint}: a chain cannot have more steps than the model was trained with")
    return steps


# -------------------------------------------------------------------------------------------- timesteps
TIMESTEP_FIX = "pass an int or a [batch] integer tensor, e.g. a value of scheduler.timesteps"


def scalar_timestep(timestep: Any, name: str = "timestep") -> int:
    """An int, an integral float, a numpy integer or a 0-d integer tensor, as an int; never truncated."""
    if isinstance(timestep, torch.Tensor):
        if timestep.ndim != 0:
            raise _fail(f"{name} must be a scalar here, got shape {tuple(timestep.shape)}", TIMESTEP_FIX)
        if timestep.dtype.is_floating_point or timestep.dtype.is_complex or timestep.dtype == torch.bool:
            raise _fail(f"timesteps must be integers, got dtype {timestep.dtype} ({timestep.item()!r})",
                        "pass an integer tensor: timestep.long() after checking it holds whole numbers")
        return int(timestep)
    if isinstance(timestep, (bool, np.bool_)) or not isinstance(timestep, (int, float, np.integer, np.floating)):
        raise _fail(f"{name} must be an int or an integer tensor of shape [batch], got {type(timestep).__name__}",
                    TIMESTEP_FIX)
    if isinstance(timestep, (float, np.floating)) and not float(timestep).is_integer():
        raise _fail(f"{name} must be an integer, got {float(timestep)!r}",
                    "pass a whole number (a float is never rounded or truncated silently)")
    return int(timestep)


def check_timestep_batch(timesteps: torch.Tensor, batch: int | None, name: str = "timesteps") -> None:
    """A [batch] integer tensor: one timestep per sample."""
    if timesteps.ndim != 1 or (batch is not None and timesteps.shape[0] != batch):
        raise _fail(f"{name} must have shape [batch] = [{'?' if batch is None else batch}] (or be a scalar), "
                    f"got {tuple(timesteps.shape)}", "pass one timestep per sample, or a single int for all")
    if timesteps.dtype.is_floating_point or timesteps.dtype.is_complex or timesteps.dtype == torch.bool:
        raise _fail(f"timesteps must be integers, got dtype {timesteps.dtype}",
                    "pass an integer tensor, e.g. torch.randint(0, T, (batch,)), or timesteps.long() after "
                    "checking it holds whole numbers")


def check_timestep_range(timesteps: int | torch.Tensor, num_train_timesteps: int) -> None:
    """Every timestep in [0, T); CPU tensors and ints only (accelerator tensors are trusted)."""
    T = num_train_timesteps
    fix = f"pass timesteps in [0, {T - 1}] (T = num_train_timesteps = {T})"
    if isinstance(timesteps, torch.Tensor):
        if timesteps.device.type == "cpu" and timesteps.numel() and (timesteps.min() < 0 or timesteps.max() >= T):
            low, high = int(timesteps.min()), int(timesteps.max())
            raise _fail(f"timesteps must lie in [0, {T - 1}], got values {low}..{high}", fix)
    elif not 0 <= timesteps < T:
        raise _fail(f"timestep must lie in [0, {T - 1}], got {timesteps}", fix)


def train_timesteps(timesteps: Any, x: torch.Tensor, num_train_timesteps: int) -> int | torch.Tensor:
    """Timesteps of the T-step process for a batch `x`: an int, or a [B] long tensor moved to x's device."""
    if isinstance(timesteps, torch.Tensor) and timesteps.ndim > 0:
        check_timestep_batch(timesteps, batch_of(x))
        check_timestep_range(timesteps, num_train_timesteps)
        return timesteps.to(device=x.device, dtype=torch.long)
    if isinstance(timesteps, (list, tuple)):
        raise _fail(f"timesteps must be an int or an integer tensor of shape [batch], got a {type(timesteps).__name__}",
                    "pass torch.tensor(timesteps) (one per sample) or a single int")
    t = scalar_timestep(timesteps)
    check_timestep_range(t, num_train_timesteps)
    return t


def batch_of(x: torch.Tensor) -> int | None:
    """The batch size of a [B, ...] tensor, or None for a placeholder (a scalar or an empty tensor)."""
    return x.shape[0] if x.ndim > 0 and x.numel() > 0 else None


def check_model_output(model_output: torch.Tensor, sample: torch.Tensor) -> None:
    """The UNet's output for `sample`: the same batch and spatial size (channels may be 2C for a learned variance)."""
    if not isinstance(model_output, torch.Tensor):
        raise _fail(f"model_output must be a tensor, got {type(model_output).__name__}",
                    "pass the UNet's output tensor, e.g. unet(x_t, t).sample")
    if model_output.ndim != sample.ndim or model_output.shape[0] != sample.shape[0] \
            or model_output.shape[2:] != sample.shape[2:]:
        raise _fail(f"model_output {tuple(model_output.shape)} does not match the sample {tuple(sample.shape)} in "
                    "batch or spatial size", "pass the UNet's output for this very sample, e.g. unet(x_t, t).sample")


# ------------------------------------------------------------------------------------------- generators
def check_generator(generator: Any, batch_size: int, name: str = "generator", allow_list: bool = True) -> None:
    """None, a torch.Generator, or (with `allow_list`) a list of one or `batch_size` generators."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, (list, tuple)):
        if not allow_list:
            raise _fail(f"{name} must be one torch.Generator here, got a list of {len(generator)}",
                        "pass a single torch.Generator().manual_seed(seed)")
        bad = [type(g).__name__ for g in generator if not isinstance(g, torch.Generator)]
        if bad or not generator:
            raise _fail(f"{name} must be a list of torch.Generator, got {bad or 'an empty list'}",
                        f"pass [torch.Generator().manual_seed(s) for s in seeds] with {batch_size} seeds")
        if len(generator) not in (1, batch_size):
            raise _fail(f"{name} is a list of {len(generator)} generators for a batch of {batch_size}",
                        f"pass one generator per image ({batch_size}), or a single torch.Generator")
        return
    raise _fail(f"{name} must be a torch.Generator or a list of them, got {type(generator).__name__}",
                "pass torch.Generator().manual_seed(seed) (a seed alone is not a generator)")


# ------------------------------------------------------------------------------------------------ images
def check_image_layout(shape: tuple, channels: int, name: str = "images") -> None:
    """[B, C, H, W] with the model's C; says how to fix the usual mix-ups (channels-last, a missing axis)."""
    shape = tuple(shape)
    if len(shape) == 4 and shape[1] == channels:
        return
    if len(shape) == 4 and shape[-1] == channels:
        fix = "your array is [B, H, W, C]: permute it, images.permute(0, 3, 1, 2) (numpy: images.transpose(0, 3, 1, 2))"
    elif len(shape) == 3 and channels == 1:
        fix = "add the channel axis: images[:, None]"
    elif len(shape) == 3 and shape[0] == channels:
        fix = "add the batch axis: images[None]"
    elif len(shape) == 4:
        fix = (f"this model takes {channels}-channel images: convert them (PIL: image.convert('"
               f"{'L' if channels == 1 else 'RGB'}')); if your array is [B, H, W, C], permute it")
    else:
        fix = "pass a batch of images [B, C, H, W]; if your array is [B, H, W, C], permute it"
    raise _fail(f"{name} must have shape [B, {channels}, H, W] (expected [B, C, H, W] with C={channels}), got {shape}",
                fix)


def check_finite(tensor: torch.Tensor, name: str = "images") -> None:
    """No NaN or Inf values (they turn every result they touch into NaN)."""
    if tensor.dtype.is_floating_point and tensor.numel():
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise _fail(f"{name} contain {bad} NaN or Inf values (of {tensor.numel()})",
                        "replace or drop those images: every pixel must be a finite number in [-1, 1]")


def check_spatial_size(shape: tuple, expected: tuple[int, int], name: str = "images") -> None:
    if tuple(shape[2:]) != tuple(expected):
        raise _fail(f"{name} must be {expected[0]}x{expected[1]} for this model, got {tuple(shape[2:])}",
                    f"resize them to {expected[0]}x{expected[1]}")


# ------------------------------------------------------------------------------------------- UNet configs
def check_unet_config(config: Mapping, name: str = "sample_size") -> None:
    """A UNet2DModel config the network can run: matching block lists, GroupNorm-divisible channels, and a
    sample_size every down block can halve (divisible by 2 ** (number of down blocks - 1))."""
    down, up = tuple(config.get("down_block_types", ())), tuple(config.get("up_block_types", ()))
    channels = tuple(config.get("block_out_channels", ()))
    if not (len(down) == len(up) == len(channels)):
        raise _fail(f"block_out_channels ({len(channels)}), down_block_types ({len(down)}) and up_block_types "
                    f"({len(up)}) must have the same length", "give one entry per resolution in each")
    groups = config.get("norm_num_groups")
    if groups:
        odd = [c for c in channels if c % groups]
        if odd:
            raise _fail(f"block_out_channels {list(channels)}: {odd} not divisible by norm_num_groups={groups}",
                        "use channel counts that are multiples of norm_num_groups, or lower norm_num_groups")
    size = config.get("sample_size")
    sizes = (size, size) if isinstance(size, (int, np.integer)) else tuple(size or ())
    if len(sizes) != 2 or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in sizes):
        raise _fail(f"{name} must be a positive integer or a (height, width) pair, got {size!r}",
                    "pass the image size, e.g. 32")
    factor = 2 ** max(len(down) - 1, 0)
    if any(s % factor for s in sizes):
        shown = sizes[0] if sizes[0] == sizes[1] else f"{sizes[0]}x{sizes[1]}"
        good = sorted({m for s in sizes for m in (factor * (s // factor), factor * -(-s // factor)) if m > 0})
        raise _fail(f"{name} {shown} cannot pass through this UNet: its {len(down)} down blocks halve the image "
                    f"{len(down) - 1} times, so the size must be divisible by {factor}",
                    f"use a multiple of {factor} (e.g. {' or '.join(map(str, good))}), or resize the images")


# ---------------------------------------------------------------------------- configs of the wrong class
# Keys only a model config has, and keys only a scheduler config has: enough to tell which one a dict is.
_MODEL_KEYS = {"block_out_channels", "down_block_types", "up_block_types", "in_channels", "layers_per_block"}
_SCHEDULER_KEYS = {"beta_start", "beta_end", "beta_schedule", "trained_betas", "timestep_spacing"}


def config_kind(config: Mapping) -> tuple[str | None, str | None]:
    """("model" | "scheduler" | "pipeline" | None, the class name if the config says it) of a config dict."""
    class_name = config.get("_class_name")
    class_name = class_name if isinstance(class_name, str) else None
    if class_name:
        import diffusers
        from diffusers import ModelMixin, SchedulerMixin
        from diffusers.pipelines.pipeline_utils import DiffusionPipeline

        cls = getattr(diffusers, class_name, None)
        if isinstance(cls, type):
            for kind, base in (("model", ModelMixin), ("scheduler", SchedulerMixin), ("pipeline", DiffusionPipeline)):
                if issubclass(cls, base):
                    return kind, class_name
    keys = set(config)
    if keys & _MODEL_KEYS and not keys & _SCHEDULER_KEYS:
        return "model", class_name or ("UNet2DModel" if "down_block_types" in keys else None)
    if keys & _SCHEDULER_KEYS and not keys & _MODEL_KEYS:
        return "scheduler", class_name
    has_components = any(isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(s, str) for s in v)
                         for v in config.values())
    if has_components and "_diffusers_version" in keys and not keys & (_MODEL_KEYS | _SCHEDULER_KEYS):
        return "pipeline", class_name
    return None, class_name


def _kind_of_class(cls: type) -> str | None:
    from diffusers import ModelMixin, SchedulerMixin
    from diffusers.pipelines.pipeline_utils import DiffusionPipeline

    for kind, base in (("model", ModelMixin), ("scheduler", SchedulerMixin), ("pipeline", DiffusionPipeline)):
        if issubclass(cls, base):
            return kind
    return None


_WHERE_CONFIG = {"scheduler": "pipe.scheduler.config, or a scheduler_config.json",
                 "model": "pipe.unet.config, or a unet/config.json"}


def check_config_kind(cls: type, config: Any, source: str = "config") -> None:
    """Refuse a config of another kind of class (a UNet config given to a scheduler, or the reverse): diffusers
    would ignore every key and build a default object."""
    if not isinstance(config, Mapping):
        return
    want = _kind_of_class(cls)
    have, class_name = config_kind(config)
    if want is None or have is None or have == want:
        return
    what = f"a {class_name} config" if class_name else f"a {have} config"
    raise _fail(f"{source} is {what}, not a {want} config: {cls.__name__} would ignore its keys and use defaults",
                f"pass the {want}'s config to {cls.__name__}.from_config ({_WHERE_CONFIG.get(want, 'its config')})")


# -------------------------------------------------------------------------------- pretrained sources
def _looks_local(source: str) -> bool:
    return (os.path.isabs(source) or source.startswith(("./", "../", "~", ".\\", "..\\")) or source.count("/") > 1
            or (os.sep != "/" and os.sep in source))


PASS_SAVED = ("pass the folder that save_pretrained(folder) wrote (a training run saves OUTPUT_DIR/pipeline) or a "
              "Hub repo id USER/NAME")


def check_pretrained_source(source: Any, kind: str, subfolder: str | None = None) -> str:
    """`source` of a `from_pretrained` call as a string; a local folder is checked before diffusers sees it:
    that it exists, that it holds what `kind` ("pipeline" or "model") needs, and that its configs are of the
    right kind. Hub ids are left to diffusers."""
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str):
        raise _fail(f"pretrained_model_name_or_path must be a folder or a Hub repo id, got {type(source).__name__}",
                    PASS_SAVED)
    path = Path(source).expanduser()
    if not path.exists():
        if _looks_local(source):
            raise _fail(f'The provided pretrained_model_name_or_path "{source}" is neither a valid local path nor a '
                        "valid repo id (no such folder)", f"check the parameter, and {PASS_SAVED}")
        return source
    if not path.is_dir():
        raise _fail(f"{source} is a file, not a folder", PASS_SAVED)
    if kind == "pipeline":
        check_pipeline_folder(path)
    elif kind == "model":
        _check_model_folder(path, subfolder)
    return source


_UNREADABLE = object()


def _read_json(path: Path) -> Any:
    """The JSON in `path`, or `_UNREADABLE` (diffusers then says what is wrong with the file)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return _UNREADABLE


def _check_model_folder(path: Path, subfolder: str | None) -> None:
    folder = path / subfolder if subfolder else path
    config_path = folder / "config.json"
    if not config_path.is_file():
        index = _read_json(path / MODEL_INDEX) if not subfolder else None
        if isinstance(index, dict):
            models = [name for name, value in index.items() if _is_component(value) and value[1]
                      and (name == "unet" or "Model" in str(value[1]))]
            choice = models[0] if models else "unet"
            raise _fail(f"{path} is a saved pipeline, not a model folder (it has {MODEL_INDEX} and no config.json)",
                        f'pass subfolder="{choice}": DDPMUNet2DModel.from_pretrained(folder, subfolder="{choice}"), '
                        "or load the whole pipeline with DDPMPipeline.from_pretrained(folder)")
        if (folder / "scheduler_config.json").is_file():
            raise _fail(f"{folder} holds a scheduler (scheduler_config.json), not a model",
                        'pass the model\'s folder, e.g. subfolder="unet" of a saved pipeline')
        return
    config = _read_json(config_path)
    if isinstance(config, dict):
        from diffusers import UNet2DModel

        check_config_kind(UNet2DModel, config, str(config_path))


def _is_component(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2


_CONFIG_FILES = {"model": "config.json", "scheduler": "scheduler_config.json"}
RESAVE = "save the pipeline again with pipeline.save_pretrained(folder), or restore the file from the original"


def check_pipeline_folder(path: str | os.PathLike) -> None:
    """A saved pipeline folder whose model_index.json is well formed and whose component configs are what it names
    (diffusers otherwise fails with TypeError/AttributeError, or loads mismatched weights)."""
    path = Path(path)
    index_path = path / MODEL_INDEX
    if not index_path.is_file():
        return  # diffusers names the missing model_index.json
    index = _read_json(index_path)
    if index is _UNREADABLE:
        return  # not JSON: diffusers says "is not a valid JSON file"
    if not isinstance(index, dict):
        raise _fail(f"{index_path} must hold a JSON object (the pipeline's components), got a "
                    f"{type(index).__name__}", RESAVE)
    if not isinstance(index.get("_class_name"), str):
        raise _fail(f"{index_path} has no _class_name string (got {index.get('_class_name')!r}): it is not a "
                    "diffusers pipeline index", RESAVE)
    components = {}
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, (list, tuple)):
            continue
        if len(value) != 2 or not all(v is None or isinstance(v, str) for v in value) \
                or (value[0] is None) != (value[1] is None):
            raise _fail(f"{index_path}: component {name!r} must be [library, class] (two strings), got {value!r}",
                        RESAVE)
        if value[1] is not None:
            components[name] = value
    for name, (library, class_name) in components.items():
        if library not in ("diffusers", "transformers") and not library.startswith("hf_ddpm"):
            continue
        want = _kind_by_name(library, class_name)
        folder = path / name
        if want not in _CONFIG_FILES or not folder.is_dir():
            continue
        config_path = folder / _CONFIG_FILES[want]
        other = folder / _CONFIG_FILES["scheduler" if want == "model" else "model"]
        if not config_path.is_file() and other.is_file():
            raise _fail(f"{name}/{other.name} is there but {name}/{config_path.name} is not: {MODEL_INDEX} names a "
                        f"{class_name} for {name!r}", RESAVE)
        config = _read_json(config_path) if config_path.is_file() else None
        if isinstance(config, dict):
            have, have_name = config_kind(config)
            if have is not None and have != want:
                raise _fail(f"{name}/{config_path.name} is {('a ' + have_name) if have_name else 'a ' + have} config, "
                            f"but {MODEL_INDEX} names a {class_name} for {name!r} (the files were mixed up)", RESAVE)


def _kind_by_name(library: str, class_name: str) -> str | None:
    if library == "diffusers":
        import diffusers

        cls = getattr(diffusers, class_name, None)
        return _kind_of_class(cls) if isinstance(cls, type) else None
    if library.startswith("hf_ddpm"):
        import hf_ddpm

        cls = getattr(hf_ddpm, class_name, None)
        return _kind_of_class(cls) if isinstance(cls, type) else None
    return None

