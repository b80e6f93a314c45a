"""`hf_ddpm.DDPMUNet2DModel`: diffusers' UNet2DModel with the paper's networks available by name.

The subclass adds no config keys and saves itself as `UNet2DModel`, so every checkpoint it writes is a stock
diffusers UNet. Presets (paper Appendix B):

- ``cifar10``: 35,746,307 parameters, the paper's 35.7M CIFAR-10 network: base 128 channels, multipliers
  (1, 2, 2, 2), 2 residual blocks per resolution, single-head self-attention at 16x16, dropout 0.1.
- ``celebahq256`` / ``lsun256``: the 114M network for 256x256 images: multipliers (1, 1, 2, 2, 4, 4),
  attention at 16x16, dropout 0.0 (pass `dropout=` to change it).
- ``small28`` (28x28 grayscale) and ``small32`` (32x32 RGB): the same architecture scaled down to train on a
  2-core CPU in minutes.
"""

from __future__ import annotations

import inspect

from diffusers import UNet2DModel

from .checks import check_unet_config
from .stock_compat import StockConfigMixin, load_safetensors_only

# Settings every preset shares, chosen to reproduce the paper's network in diffusers' building blocks.
_PAPER_UNET = {
    "layers_per_block": 2,
    "freq_shift": 1,  # sinusoidal embedding as in the release: frequencies exp(-log(10000) i / (half - 1))
    "flip_sin_to_cos": False,  # [sin, cos] order, as in the release
    "downsample_padding": 0,
    "norm_eps": 1e-6,
    "norm_num_groups": 32,
    "attention_head_dim": None,  # one attention head spanning all channels
    "act_fn": "silu",
    "time_embedding_type": "positional",
}

UNET_PRESETS = {
    "cifar10": {
        **_PAPER_UNET,
        "sample_size": 32,
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": (128, 256, 256, 256),
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        # up blocks run at 4, 8, 16 and 32 pixels: index 2 is the 16x16 one that gets attention
        "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        "dropout": 0.1,
    },
    "celebahq256": {
        **_PAPER_UNET,
        "sample_size": 256,
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": (128, 128, 256, 256, 512, 512),
        "down_block_types": ("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
        "dropout": 0.0,
    },
    "small28": {
        **_PAPER_UNET,
        "sample_size": 28,
        "in_channels": 1,
        "out_channels": 1,
        "layers_per_block": 1,
        "norm_num_groups": 16,
        "block_out_channels": (32, 64, 64),
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),  # attention at 14x14
        "up_block_types": ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        "dropout": 0.1,
    },
    "small32": {
        **_PAPER_UNET,
        "sample_size": 32,
        "in_channels": 3,
        "out_channels": 3,
        "layers_per_block": 1,
        "block_out_channels": (64, 128, 128),
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),  # attention at 16x16
        "up_block_types": ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        "dropout": 0.1,
    },
}
UNET_PRESETS["lsun256"] = dict(UNET_PRESETS["celebahq256"])


class DDPMUNet2DModel(StockConfigMixin, UNet2DModel):
    """UNet2DModel plus the paper's presets (`from_preset`) and learned-variance output channels."""

    _stock_class_name = "UNet2DModel"

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """diffusers' loader, restricted to safetensors unless `use_safetensors=False` is passed explicitly."""
        return load_safetensors_only(super().from_pretrained, pretrained_model_name_or_path, kind="model", **kwargs)

    @classmethod
    def preset_config(cls, name: str, learned_variance: bool = False, **overrides) -> dict:
        """The UNet2DModel config of preset `name`; `learned_variance` doubles the output channels."""
        if name not in UNET_PRESETS:
            raise ValueError(f"Unknown UNet preset {name!r}: choose one of {', '.join(UNET_PRESETS)}.")
        config = {**UNET_PRESETS[name], **overrides}
        unknown = set(overrides) - set(inspect.signature(UNet2DModel.__init__).parameters)
        if unknown:
            raise ValueError(f"Unknown UNet2DModel options {sorted(unknown)}: pass only arguments of diffusers' "
                             "UNet2DModel (e.g. sample_size, block_out_channels, dropout).")
        if learned_variance:
            config["out_channels"] = 2 * config["in_channels"]
        check_unet_config(config)  # before anything is built: a size the network cannot halve fails in torch.cat
        return config

    @classmethod
    def from_preset(cls, name: str, learned_variance: bool = False, **overrides) -> "DDPMUNet2DModel":
        """A freshly initialized network of preset `name` (e.g. ``cifar10``), with optional config overrides."""
        return cls(**cls.preset_config(name, learned_variance, **overrides))
