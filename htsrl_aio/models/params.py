"""Parameters as values: copying them between networks (key-checked) and hashing them."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch
from torch import nn

StateDict = Mapping[str, torch.Tensor]


@torch.no_grad()
def copy_params(dst: nn.Module | dict[str, torch.Tensor], src: nn.Module | StateDict) -> None:
    """Copy every parameter and buffer of `src` into `dst` in place, by name.

    Both sides must hold the same names: a mismatch (another architecture, a renamed layer) raises
    instead of silently copying a prefix, as zipping two state dicts would.
    """
    target = dst.state_dict() if isinstance(dst, nn.Module) else dst
    source = src.state_dict() if isinstance(src, nn.Module) else src
    if target.keys() != source.keys():
        missing, extra = sorted(target.keys() - source.keys()), sorted(source.keys() - target.keys())
        raise ValueError(f"parameters do not match: missing {missing[:3]}, unexpected {extra[:3]}")
    for name, tensor in target.items():
        tensor.copy_(source[name])


def clone_params(src: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter and buffer of `src`."""
    return {name: tensor.detach().clone() for name, tensor in src.state_dict().items()}


def params_sha256(model: nn.Module) -> str:
    """SHA-256 over every parameter and buffer, in state_dict order, as little-endian bytes."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
