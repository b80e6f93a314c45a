"""How fast train.py's step runs on the same math: AdamW's kernels, memory layouts, TF32, the check of compiled
gradients, and copies to the device without a host sync."""

from __future__ import annotations

import torch

from hf_ddpm.options import RunFailure, UsageError


def adam_implementation(choice: str, device: torch.device) -> dict:
    """torch.optim.AdamW's keyword arguments for --adam_implementation on `device` (the same update; the kernels
    differ), refused before anything is written where PyTorch has no fused AdamW for the device."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices  # PyTorch's own list, as AdamW checks

    fused_devices = _get_fused_kernels_supported_devices()
    if choice == "auto":
        choice = "fused" if device.type in fused_devices else "foreach"
    elif choice == "fused" and device.type not in fused_devices:
        raise UsageError(f"PyTorch has no fused AdamW for {device.type} (only {', '.join(fused_devices)})",
                         "--adam_implementation", "use auto or foreach")
    return {"fused": choice == "fused", "foreach": choice == "foreach"}


def match_parameter_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each optimizer state tensor of a parameter's shape that parameter's memory format (strides)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def allow_tf32() -> None:
    """--allow_tf32: TensorFloat-32 in fp32 matmuls and cuDNN convolutions (NVIDIA Ampere and later only)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def check_compiled_gradients(model, compiled, unet, batch_shape: tuple, num_timesteps: int, memory_format,
                             half_precision: bool) -> None:
    """--compile: stop before training unless the compiled forward's gradients match eager PyTorch's on a random
    batch of the training shape (which compiles the graph the steps use). Compilers have had silent wrong-gradient
    bugs (PyTorch 2.13's CPU backend zeroes most of this UNet's), which a run would train on unnoticed. Rounding
    moves the gradient by well under 2% in fp32 (TF32 included) and by a few % under autocast; a bug zeroes or
    scrambles whole parameters' gradients."""
    unet.train()  # the training graph
    generator = torch.Generator().manual_seed(0)
    device = next(unet.parameters()).device
    noisy = torch.randn(batch_shape, generator=generator).to(device).contiguous(memory_format=memory_format)
    t = torch.randint(0, num_timesteps, batch_shape[:1], generator=generator).to(device)
    gradients = []
    for forward in (model, compiled):
        torch.manual_seed(0)  # the same dropout masks
        forward(noisy, t).sample.float().square().mean().backward()
        gradients.append({name: p.grad.float().clone() for name, p in unet.named_parameters() if p.grad is not None})
        unet.zero_grad(set_to_none=True)
    eager, got = gradients
    total = torch.linalg.vector_norm(torch.stack([g.norm() for g in eager.values()]))
    got = {name: got.get(name, torch.zeros_like(g)) for name, g in eager.items()}  # a missing gradient is 0
    errors = {name: (got[name] - g).norm() / g.norm() for name, g in eager.items() if g.norm() >= 1e-3 * total}
    overall = torch.linalg.vector_norm(torch.stack([(got[name] - g).norm() for name, g in eager.items()])) / total
    worst = max(errors, key=errors.get)
    if overall > (0.2 if half_precision else 0.02) or errors[worst] > 0.5:
        raise RunFailure(f"torch.compile's gradients are wrong on a test batch ({overall:.1%} off overall, "
                         f"{errors[worst]:.0%} on {worst}): a compiler bug of torch {torch.__version__} on "
                         f"{device.type}", "--compile", "train without --compile, or with another PyTorch version")


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without a host sync: on CUDA copied from pinned memory (the DataLoader's batches
    are pinned already), since a blocking copy waits for the GPU, and one from pageable memory does not overlap."""
    if device.type == "cuda" and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)
