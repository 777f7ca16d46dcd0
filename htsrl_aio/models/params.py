"""Parameters as values: copying them between networks (checked by name and shape) and hashing them."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch
from torch import nn

from htsrl_aio.errors import ConfigError

StateDict = Mapping[str, torch.Tensor]


class ParamsMismatch(ValueError):
    """Parameters that do not fit a network; the message says what differs, from the network's side."""


@torch.no_grad()
def copy_params(dst: nn.Module | dict[str, torch.Tensor], src: nn.Module | StateDict) -> None:
    """Copy every parameter and buffer of `src` into `dst` in place, by name.

    Both sides must hold the same names and shapes: a mismatch (another architecture, a renamed layer,
    another env's spaces) raises ParamsMismatch instead of silently copying a prefix, as zipping two
    state dicts would, or failing inside torch's copy.
    """
    target = dst.state_dict() if isinstance(dst, nn.Module) else dst
    source = src.state_dict() if isinstance(src, nn.Module) else src
    _check_fit(target, source)
    for name, tensor in target.items():
        tensor.copy_(source[name])


def load_params(model: nn.Module, params: StateDict, where: str, built_for: str) -> None:
    """Copy a checkpoint's parameters (`where`: its file) into `model`, the network built for
    `built_for`; parameters that do not fit are one ConfigError sentence saying what differs."""
    try:
        copy_params(model, params)
    except ParamsMismatch as exc:
        raise ConfigError(f"the parameters in {where} do not fit the network built for {built_for}: {exc}; "
                          "the env's spaces or the network settings differ from those the checkpoint was "
                          "written with (another env, another version of it, or an altered file): use it "
                          "with the env and settings it was trained with.") from None


def _check_fit(target: StateDict, source: StateDict) -> None:
    if target.keys() != source.keys():
        missing, extra = sorted(target.keys() - source.keys()), sorted(source.keys() - target.keys())
        sides = ([f"the network has {missing[:3]} that they lack"] if missing else []) + \
            ([f"they have {extra[:3]} that the network lacks"] if extra else [])
        raise ParamsMismatch(", and ".join(sides))
    differ = [name for name, tensor in target.items() if tensor.shape != source[name].shape]
    if differ:
        name = differ[0]
        more = f" (and {len(differ) - 1} more of other shapes)" if len(differ) > 1 else ""
        raise ParamsMismatch(f"{name} is {_shape(source[name])} in them but {_shape(target[name])} in the "
                             f"network{more}")


def _shape(tensor: torch.Tensor) -> str:
    return "x".join(map(str, tensor.shape)) or "a scalar"


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
