"""`htsrl-aio export`: a trained policy as one ONNX or TorchScript file that needs no htsrl-aio to run.

The exported module is the deterministic policy (the distribution's mode, `ActionDistribution.mode`)
of the checkpoint eval would play, from the env's own observation to the action `env.step` takes:

    one input per observation key --as ObsLayout stores it--> the network (uint8 scaling and the
    --normalize-obs statistics inside) --mode--> the action as ActionSpec.to_env gives it

Inputs are named after ObsLayout's keys (`obs` for a plain Box; Dict and Tuple leaves `image`, `0`,
`goal.position`), in the env's form (HWC images, integer categories), batch dimension first and
dynamic. A policy with memory takes `memory_in` (B, state size) and `episode_start` (B,) bool after them
and returns `memory_out` after `action`, so a caller steps it as eval does.

The file is written to a temporary file beside the target and renamed into place, and an ONNX file is
run once by onnxruntime before that, so a file at the target always loads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from htsrl_aio.checkpoint import CHECKPOINT_DIR
from htsrl_aio.envs.spaces import ObsField
from htsrl_aio.errors import ConfigError
from htsrl_aio.evaluate import TrainedPolicy, load_policy
from htsrl_aio.outputs.run_dir import atomic_write

Format = Literal["onnx", "torchscript"]
FORMATS: tuple[Format, ...] = ("onnx", "torchscript")
DEFAULT_NAMES: dict[Format, str] = {"onnx": "policy.onnx", "torchscript": "policy.pt"}
MEMORY_IN, EPISODE_START, ACTION, MEMORY_OUT = "memory_in", "episode_start", "action", "memory_out"
# What a TorchScript file carries beside the module: its input and output names, in call order.
SIGNATURE_FILE = "htsrl_aio_signature.json"
ONNX_OPSET = 17
_EXAMPLE_BATCH = 2  # more than one row, so nothing of the trace takes the batch dimension for a constant


@dataclasses.dataclass(frozen=True)
class ExportResult:
    file: Path
    checkpoint: Path
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


class DeterministicPolicy(nn.Module):
    """A trained network with the env's observation form in front and the env's action form behind:
    forward(*one tensor per observation key[, memory_in, episode_start]) -> action[, memory_out]."""

    def __init__(self, policy: TrainedPolicy) -> None:
        super().__init__()
        self.model, self.distribution = policy.model, policy.distribution
        self.fields = policy.spec.policy_obs.fields
        self.action = policy.spec.action
        self.recurrent = policy.model.state_size > 0
        self.env_dtype = torch.from_numpy(np.zeros(0, self.action.env_dtype)).dtype
        for index, f in enumerate(self.fields):
            if f.transform == "one_hot":  # entry and category value of each position of the one-hot
                entries = np.repeat(np.arange(len(f.sizes)), f.sizes)
                values = np.concatenate([np.arange(s, s + n) for s, n in zip(f.starts, f.sizes)])
                self.register_buffer(f"one_hot_entries_{index}", torch.from_numpy(entries))
                self.register_buffer(f"one_hot_values_{index}", torch.from_numpy(values))
        bounds = (self.action.low, self.action.high) if self.action.kind == "box" else (np.zeros(0),) * 2
        self.register_buffer("low", torch.from_numpy(np.asarray(bounds[0])))
        self.register_buffer("high", torch.from_numpy(np.asarray(bounds[1])))
        self.register_buffer("starts", torch.tensor(self.action.starts, dtype=torch.int64))

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        obs = {f.key: self._stored(index, f, x) for index, (f, x) in enumerate(zip(self.fields, inputs))}
        # The actor alone: a centralised critic's global state is no input of the exported policy.
        if not self.recurrent:
            return self._to_env(self.distribution.mode(self.model.act(obs)[0]))
        state, start = inputs[len(self.fields):]
        params, state = self.model.act(obs, state, start)
        return self._to_env(self.distribution.mode(params)), state

    def _stored(self, index: int, f: ObsField, x: torch.Tensor) -> torch.Tensor:
        """A batch of one leaf as ObsLayout stores it (ObsField.encode, in torch)."""
        if f.transform == "hwc":
            return x.permute(0, 3, 1, 2)
        if f.transform == "stack_hwc":
            return x.permute(0, 1, 4, 2, 3).reshape(-1, *f.shape)
        if f.transform == "channel":
            return x.unsqueeze(1)
        if f.transform == "one_hot":
            entries, values = (getattr(self, f"one_hot_{name}_{index}") for name in ("entries", "values"))
            return (x.reshape(-1, len(f.sizes)).index_select(1, entries) == values).to(torch.float32)
        return x

    def _to_env(self, action: torch.Tensor) -> torch.Tensor:
        """A batch of stored action rows as env.step takes them (ActionSpec.to_env, in torch)."""
        spec, dtype = self.action, self.env_dtype
        if spec.kind == "discrete":
            return action + self.starts[0]
        if spec.kind == "multi_discrete":
            return (action + self.starts).to(dtype).reshape(-1, *spec.env_shape)
        if spec.kind == "multi_binary":
            return action.to(dtype).reshape(-1, *spec.env_shape)
        return action.clamp(self.low, self.high).to(dtype).reshape(-1, *spec.env_shape)


def names(policy: TrainedPolicy) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(input names, output names) of a policy's exported module, in call order."""
    memory = policy.model.state_size > 0
    inputs = policy.spec.policy_obs.keys + ((MEMORY_IN, EPISODE_START) if memory else ())
    return inputs, (ACTION, MEMORY_OUT) if memory else (ACTION,)


def example_inputs(policy: TrainedPolicy, batch: int = _EXAMPLE_BATCH) -> tuple[torch.Tensor, ...]:
    """Zeros of each input's shape and dtype (`batch` rows), the form a caller passes."""
    obs = tuple(torch.from_numpy(np.zeros((batch, *f.raw_shape), f.raw_dtype))
                for f in policy.spec.policy_obs.fields)
    if policy.model.state_size == 0:
        return obs
    return (*obs, torch.zeros(batch, policy.model.state_size), torch.ones(batch, dtype=torch.bool))


def default_output(checkpoint: Path, given: Path, fmt: Format) -> Path:
    """Where an export goes without --output: in the run directory given, or in the run directory of the
    checkpoint file given (a periodic one sits in its checkpoints/ folder)."""
    if given.is_dir():
        return given / DEFAULT_NAMES[fmt]
    run = checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINT_DIR else checkpoint.parent
    return run / DEFAULT_NAMES[fmt]


def require_onnx() -> None:
    """Refuse ONNX export without the packages it needs, before anything is loaded."""
    missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"--format onnx needs {' and '.join(missing)}, which the export extra installs: "
                          "pip install 'htsrl-aio[export]'.")


async def export_policy(path: str | Path, fmt: Format, output: str | Path | None = None,
                        env_timeout: float | None = None) -> ExportResult:
    """Export the deterministic policy of checkpoint `path` (or a run directory's newest) to `output`
    (default: policy.onnx / policy.pt in the run directory)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}.")
    if fmt == "onnx":
        require_onnx()
    policy = await load_policy(path, env_timeout)
    target = Path(output) if output is not None else default_output(policy.file, Path(path), fmt)
    if policy.config.precision == "bf16" and fmt == "onnx":
        raise ConfigError(f"{policy.file} was trained with --precision bf16, whose bfloat16 convolutions "
                          "onnxruntime does not run on CPUs; export it with --format torchscript.")
    module = DeterministicPolicy(policy).eval().requires_grad_(False)  # outputs need no autograd graph
    data = (_onnx if fmt == "onnx" else _torchscript)(module, policy)
    try:
        atomic_write(target, lambda f: f.write(data))
    except OSError as exc:
        raise ConfigError(f"could not write {target}: {exc.strerror or exc}; give a writable --output.") \
            from None
    return ExportResult(target, policy.file, *names(policy))


@contextlib.contextmanager
def _exporting() -> Iterator[None]:
    """No autograd, and none of the warnings torch's exporters give that do not concern this module."""
    with torch.no_grad(), warnings.catch_warnings():
        # torch.jit and the TorchScript-based ONNX exporter are deprecated for torch.export, but they are
        # what writes a TorchScript file, and ONNX without onnxscript (which the torch.export one needs).
        warnings.simplefilter("ignore", DeprecationWarning)
        # nn.GRU/LSTM check their arguments' shapes in Python, which a trace records as constants: the
        # tests step batches of other sizes than the trace's, recurrent ones included.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # Its advice (the initial state as an input) is what the module does: memory_in.
        warnings.filterwarnings("ignore", "Exporting a model to ONNX with a batch_size other than 1")
        yield


def _torchscript(module: DeterministicPolicy, policy: TrainedPolicy) -> bytes:
    buffer = io.BytesIO()
    inputs, outputs = names(policy)
    signature = json.dumps({"inputs": inputs, "outputs": outputs})
    with _exporting():
        traced = torch.jit.trace(module, example_inputs(policy))
        torch.jit.save(traced, buffer, _extra_files={SIGNATURE_FILE: signature})
    return buffer.getvalue()


def _onnx(module: DeterministicPolicy, policy: TrainedPolicy) -> bytes:
    inputs, outputs = names(policy)
    # The TorchScript-based exporter names values as TorchScript does, which refuses a key such as a
    # Tuple leaf's "0": it exports with placeholder names, and the graph's inputs are renamed after.
    placeholders = [f"htsrl_input_{index}" for index in range(len(inputs))]
    buffer = io.BytesIO()
    with _exporting():
        torch.onnx.export(module, example_inputs(policy), buffer, dynamo=False, opset_version=ONNX_OPSET,
                          input_names=placeholders, output_names=list(outputs),
                          dynamic_axes={name: {0: "batch"} for name in (*placeholders, *outputs)})
    data = _renamed(buffer.getvalue(), dict(zip(placeholders, inputs)))
    _check_onnx(data, policy, outputs)
    return data


def _renamed(data: bytes, names: dict[str, str]) -> bytes:
    """An ONNX model with its graph inputs (and every use of them) renamed."""
    import onnx

    model = onnx.load_from_string(data)
    for value in model.graph.input:
        value.name = names.get(value.name, value.name)
    for node in model.graph.node:
        node.input[:] = [names.get(name, name) for name in node.input]
    return model.SerializeToString()


def _check_onnx(data: bytes, policy: TrainedPolicy, outputs: tuple[str, ...]) -> None:
    """Run the exported model once in onnxruntime, so a file that does not load is never written."""
    import onnxruntime

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    inputs, _ = names(policy)
    got = session.run(list(outputs), {name: x.numpy() for name, x in zip(inputs, example_inputs(policy))})
    assert got[0].shape[0] == _EXAMPLE_BATCH, f"the exported model answered {got[0].shape} for a batch of 2"
