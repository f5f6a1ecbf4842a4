"""Where tensors live: the device a module runs on, and moving a batch's tensors there.

The PyTorch paths (reference pipeline, compensator, training) build small index and mask tensors
on the CPU and move them to the model's device in one place each.
"""

from __future__ import annotations

import dataclasses

import torch


def module_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def tensors_to(batch, device):
    """A copy of dataclass ``batch`` with every tensor field on ``device`` (other fields shared)."""
    return dataclasses.replace(batch, **{f.name: value.to(device) for f in dataclasses.fields(batch)
                                         if isinstance(value := getattr(batch, f.name), torch.Tensor)})
