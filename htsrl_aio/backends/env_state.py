"""Saving and restoring an env replica's state, for checkpoints that resume exactly.

An env's state is saved when the env says how (`get_state()` / `set_state(state)` methods) or when
pickling it captures its state: gymnasium envs built from plain Python objects do, but envs that pickle
as constructor arguments (gymnasium's EzPickle: Box2D, MuJoCo, Atari) would come back freshly built,
so they count as not saveable and such a run resumes with restarted envs.

A saved state is pickled bytes, and unpickling runs code, so every blob carries an HMAC made with a
key private to this machine and user; a blob that does not verify is never unpickled.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import pickle
import secrets
from pathlib import Path
from typing import Any

from gymnasium.utils import EzPickle

_KEY_FILE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "htsrl-aio" / "env-state.key"


class NotRestored(ValueError):
    """A saved env state that is not loaded (the message says why): the env restarts."""


class ForeignState(NotRestored):
    """A saved env state whose signature does not verify: it is not unpickled, the env restarts."""


def capture(env: Any) -> bytes | None:
    """The env's state as signed bytes, or None when it cannot be saved faithfully."""
    if callable(getattr(env, "get_state", None)) and callable(getattr(env, "set_state", None)):
        payload = ("custom", env.get_state())
    elif _pickles_as_constructor(env):
        return None
    else:
        payload = ("env", env)
    try:
        data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # sockets, locks, C handles: not saveable, and that is fine
        return None
    return _mac(data) + data


def restore(blob: bytes, fresh_env: Any) -> Any:
    """The env `blob` was captured from; `fresh_env` receives a custom state or is replaced."""
    mac, data = blob[:32], blob[32:]
    if not hmac.compare_digest(mac, _mac(data)):
        raise ForeignState("the saved env state was not written on this machine (its signature does not "
                         "match), so it is not loaded")
    kind, value = pickle.loads(data)
    if kind == "custom":
        fresh_env.set_state(value)
        return fresh_env
    return value


def _pickles_as_constructor(env: Any) -> bool:
    while True:
        if isinstance(env, EzPickle):
            return True
        # Wrappers keep the env they wrap as `env`; PettingZoo's aec_to_parallel keeps it as `aec_env`.
        inner = getattr(env, "env", None)
        inner = getattr(env, "aec_env", None) if inner is None else inner
        if inner is None or inner is env:
            return False
        env = inner


def _mac(data: bytes) -> bytes:
    return hmac.new(_key(), data, hashlib.sha256).digest()


def _key() -> bytes:
    try:
        return _KEY_FILE.read_bytes()
    except FileNotFoundError:
        pass
    _KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
    tmp = _KEY_FILE.with_name(f".{_KEY_FILE.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
    try:
        os.link(tmp, _KEY_FILE)  # the first process to create the key wins; others read it
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return _KEY_FILE.read_bytes()
