"""Save configs under stock diffusers class names, so shared checkpoints load without hf_ddpm installed.

diffusers writes `_class_name` from the Python class and names each pipeline component by its module
(`["hf_ddpm.unet", "DDPMUNet2DModel"]`); stock `DiffusionPipeline.from_pretrained` cannot load either. Every
hf_ddpm class only adds behaviour on top of a stock class and keeps the stock config keys, so it saves itself as
that stock class.
"""

from __future__ import annotations

import json
import re


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


def load_safetensors_only(load, pretrained_model_name_or_path, **kwargs):
    """Call a diffusers `from_pretrained` with safetensors required unless the caller opts out explicitly, and
    turn diffusers' loading failures into one line that names the problem and its fix.

    Pickle weights (.bin/.pt) execute code when loaded, so they are read only with `use_safetensors=False`.
    """
    kwargs.setdefault("use_safetensors", True)
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
