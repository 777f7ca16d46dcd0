"""--torch-compile: the observation encoders run through torch.compile.

The encoder (an image policy's Nature CNN trunk, or the input handling of an MLP) is where a policy
that reads images spends nearly all its arithmetic; torch.compile (inductor) fuses its pointwise work
around the convolutions. On the 2-core Xeon the atari-ppo learner's minibatch step ran 1.3-1.6x faster
(docs/benchmarks.md, "Pong at the bound, re-measured, and torch.compile").

Each batch size gets a graph of its own (static shapes), because a graph compiled for one size is then
the same whichever size came first: with dynamic shapes inductor tunes the shared graph to the first
size it sees, and a resumed run, whose first update sees other sizes than the original's, would run
other kernels. Compiled kernels round differently from eager ones, so the setting is part of a run's
bits (config.json keeps it, a resumed run keeps it); the same setting on the same machine and thread
count repeats its bits, also from inductor's on-disk cache (its key holds the thread count).
"""

from __future__ import annotations

from htsrl_aio.errors import ConfigError
from htsrl_aio.models.actor_critic import ActorCritic


def compile_encoders(model: ActorCritic) -> None:
    """Compile `model`'s observation encoders in place (its parameters and state dict are unchanged)."""
    for encoder in (model.encoder, model.critic_encoder):
        if encoder is not None:
            encoder.compile(dynamic=False)


def check_compilable(setting: str, *, agents: bool, deterministic: bool, device_type: str) -> None:
    """Refuse, in one sentence, a --torch-compile `setting` this run cannot keep its bits with, or a CPU
    machine without the C++ compiler inductor needs (at the start, not as inductor's traceback at the
    first update)."""
    if setting == "none":
        return
    if agents:
        raise ConfigError("--torch-compile compiles a graph for each batch size, and a multi-agent env's "
                          "minibatches change size as agents leave, so a resumed run could compile other "
                          "graphs than the original; drop --torch-compile for multi-agent envs.")
    if setting == "all" and not deterministic:
        raise ConfigError("--torch-compile all compiles a graph for each inference batch size, and without "
                          "fixed inference blocks (--no-deterministic) every size compiles anew; use "
                          "--torch-compile learner, or keep --deterministic.")
    if device_type != "cpu":
        return
    from torch._inductor.cpp_builder import get_cpp_compiler  # the search inductor itself makes

    try:
        get_cpp_compiler()
    except Exception as exc:  # inductor's InvalidCxxCompiler, or an OS error running the search
        raise ConfigError("--torch-compile builds C++ kernels on a CPU and this machine has no C++ compiler "
                          "(g++); install one (e.g. apt install g++) or drop --torch-compile.") from exc
