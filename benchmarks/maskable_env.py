"""sb3-contrib's invalid-action env, seeded by reset: the env of benchmarks/vs_maskable.py.

`sb3_contrib.common.envs.InvalidActionEnvDiscrete` draws each state with `action_space.sample()` and the
actions it forbids with numpy's global RNG, and `reset(seed=...)` seeds neither, so runs of it are not
reproducible. Here `reset(seed=...)` also seeds the action space, and the forbidden actions come from the
env's own generator (`self.np_random`, which that reset seeds): the global RNG is shared by every env of a
process, so with it the draws would depend on the order in which envs step. The dynamics are sb3-contrib's.
"""

from __future__ import annotations

from sb3_contrib.common.envs import InvalidActionEnvDiscrete


class SeededInvalidActionEnv(InvalidActionEnvDiscrete):
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[int, dict]:
        if seed is not None:
            self.action_space.seed(seed)
        return super().reset(seed=seed, options=options)

    def _choose_next_state(self) -> None:
        # InvalidActionEnvDiscrete's, with self.np_random in place of numpy's global RNG
        self.state = self.action_space.sample()
        allowed_to_forbid = [i for i in self.possible_actions if i != self.state]
        self.invalid_actions = self.np_random.choice(allowed_to_forbid, self.n_invalid_actions,
                                                     replace=False).tolist()


def invalid_action_env(dim: int = 80, n_invalid_actions: int = 60, ep_length: int = 100
                       ) -> SeededInvalidActionEnv:
    """The env as `--env maskable_env:invalid_action_env` (benchmarks/ on PYTHONPATH) makes it."""
    return SeededInvalidActionEnv(dim=dim, ep_length=ep_length, n_invalid_actions=n_invalid_actions)
