"""Save configs under stock diffusers class names, so shared checkpoints load without hf_ddpm installed.

diffusers writes `_class_name` from the Python class and names each pipeline component by its module
(`["hf_ddpm.unet", "DDPMUNet2DModel"]`); stock `DiffusionPipeline.from_pretrained` cannot load either. Every
hf_ddpm class only adds behaviour on top of a stock class and keeps the stock config keys, so it saves itself as
that stock class.
"""

from __future__ import annotations

import json
import re

from .checks import check_config_kind, check_pretrained_source


class StockConfigMixin:
    """Mixin for ConfigMixin subclasses: serialize `_class_name` (and pipeline components) as stock diffusers."""

    _stock_class_name: str  # the diffusers class this one extends, e.g. "UNet2DModel"

    def to_json_string(self) -> str:
        config = json.loads(super().to_json_string())
        config["_class_name"] = self._stock_class_name
        for name, value in config.items():
            is_component = isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)
            stock_name = getattr(getattr(self, name, None), "_stock_class_name", None) if is_component else None
            if stock_name is not None:
                config[name] = ["diffusers", stock_name]
        return json.dumps(config, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """diffusers' `from_config`, refusing a config of another kind of class (a UNet config given to a
        scheduler, or the reverse), which diffusers would silently turn into a default object."""
        check_config_kind(cls, config)
        return super().from_config(config, return_unused_kwargs, **kwargs)


def load_safetensors_only(load, pretrained_model_name_or_path, kind: str | None = None, **kwargs):
    """Call a diffusers `from_pretrained` with safetensors required unless the caller opts out explicitly, and
    turn diffusers' loading failures into one line that names the problem and its fix.

    `kind` ("pipeline" or "model") checks a local folder first (`hf_ddpm.checks.check_pretrained_source`): that it
    exists, holds a well-formed model_index.json / config of the right kind, and is not a pipeline folder given to
    a model without `subfolder`. Pickle weights (.bin/.pt) execute code when loaded, so they are read only with
    `use_safetensors=False`.
    """
    kwargs.setdefault("use_safetensors", True)
    if kind is not None:
        source = check_pretrained_source(pretrained_model_name_or_path, kind, kwargs.get("subfolder"))
    else:
        source = str(pretrained_model_name_or_path)
    try:
        return load(source, **kwargs)
    except OSError as error:
        message = " ".join(str(error).split())
        unreadable = re.search(r"checkpoint file for '([^']+)'", message)
        if unreadable:
            raise OSError(
                f"{unreadable.group(1)} is truncated or not a safetensors file: save the model again with "
                "save_pretrained(..., safe_serialization=True), or download it again."
            ) from None
        if "no file named" in message and ".safetensors" in message and kwargs["use_safetensors"]:
            raise OSError(
                f"{source} has no safetensors weights, and hf_ddpm does not unpickle weight files (they can run "
                "code): re-save them with save_pretrained(..., safe_serialization=True), or pass "
                "use_safetensors=False if you trust their source."
            ) from None
        if "model_index.json" in message:
            raise OSError(
                f"{source} is not a saved pipeline ({message.split(':')[0].strip()}): pass a folder written by "
                "save_pretrained, e.g. a training run's OUTPUT_DIR/pipeline."
            ) from None
        raise
