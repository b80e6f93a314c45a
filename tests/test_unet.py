import json
import logging

import diffusers
import pytest
import torch

from hf_ddpm import UNET_PRESETS, DDPMUNet2DModel


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_cifar10_preset_is_the_papers_35_7m_network():
    model = DDPMUNet2DModel.from_preset("cifar10")
    assert count(model) == 35_746_307
    assert model.config.dropout == 0.1 and model.config.block_out_channels == (128, 256, 256, 256)
    # attention at 16x16 on both paths, single head
    attention_resolutions = []
    x = torch.zeros(1, 3, 32, 32)
    hooks = [m.register_forward_hook(lambda m, i, o: attention_resolutions.append(i[0].shape[-1]))
             for name, m in model.named_modules() if name.endswith("attentions.0") and "mid" not in name]
    with torch.no_grad():
        assert model(x, 10).sample.shape == (1, 3, 32, 32)
    for hook in hooks:
        hook.remove()
    assert attention_resolutions == [16, 16]


@pytest.mark.parametrize("name", ["celebahq256", "lsun256"])
def test_256_presets_are_the_114m_network(name):
    assert 113e6 < count(DDPMUNet2DModel.from_preset(name)) < 115e6


@pytest.mark.parametrize("name", ["small28", "small32"])
def test_small_presets_run_and_learned_variance_doubles_channels(name):
    model = DDPMUNet2DModel.from_preset(name, learned_variance=True).eval()
    config = UNET_PRESETS[name]
    x = torch.zeros(2, config["in_channels"], config["sample_size"], config["sample_size"])
    assert model(x, torch.tensor([1, 999])).sample.shape == (2, 2 * config["in_channels"], *x.shape[2:])
    assert count(model) < 5e6


def test_saved_config_is_a_stock_unet_that_loads_without_warnings(tmp_path, caplog):
    model = DDPMUNet2DModel.from_preset("small28")
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_class_name"] == "UNet2DModel"
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    with caplog.at_level(logging.WARNING):
        diffusers.utils.logging.enable_propagation()
        stock = diffusers.UNet2DModel.from_pretrained(tmp_path)
        diffusers.utils.logging.disable_propagation()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    for a, b in zip(stock.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


def test_preset_errors():
    with pytest.raises(ValueError, match="Unknown UNet preset 'cifar'"):
        DDPMUNet2DModel.from_preset("cifar")
    with pytest.raises(ValueError, match=r"Unknown UNet2DModel options \['block_channels'\]"):
        DDPMUNet2DModel.from_preset("small28", block_channels=(1,))
