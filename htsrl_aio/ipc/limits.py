"""The open-files limit a run needs, raised where this process may raise it, refused in one sentence
where it may not.

A run keeps files open for every env worker (its pipe and exit sentinel), every shared-memory array (the
segment and its mapping) and the parameters it shares with the learner process (torch passes each
tensor as a file). Running out part-way shows as tracebacks in several processes at once, so the limit
is checked before anything starts.
"""

from __future__ import annotations

from htsrl_aio.errors import ConfigError

# What a run with a few env workers was seen to need (CartPole, learner process: 160 was too few).
BASE_OPEN_FILES = 256
OPEN_FILES_PER_WORKER = 8
# Raised to at least this when it is raised at all (as Ray does), so what a run leaves open is no worry.
RAISED_OPEN_FILES = 4096


def ensure_open_files(workers: int) -> None:
    """Raise this process's soft limit of open files to what a run with `workers` env workers needs, up
    to its hard limit; a ConfigError if the hard limit is lower."""
    try:
        import resource  # POSIX only
    except ImportError:
        return
    needed = BASE_OPEN_FILES + OPEN_FILES_PER_WORKER * workers
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise ConfigError(f"this process may open only {hard} files (ulimit -n), and a run with "
                          f"{workers} env worker(s) needs about {needed}; raise the limit (ulimit -n 4096) "
                          "or use fewer --workers.")
    target = max(needed, RAISED_OPEN_FILES)
    if hard != resource.RLIM_INFINITY:
        target = min(target, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


# What `htsrl-aio train` maps before it creates an env (torch, and BLAS buffers that end the process
# instead of raising when they cannot be had): 1 GiB was enough for a CartPole run, 830 MiB too little.
MIN_ADDRESS_SPACE = 2**30


def ensure_address_space() -> None:
    """A ConfigError if this process may map less than a run needs before it can say so (ulimit -v)."""
    try:
        import resource  # POSIX only
    except ImportError:
        return
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY and soft < MIN_ADDRESS_SPACE:
        raise ConfigError(f"this process may map only {soft // 2**20} MiB (ulimit -v), and a run maps about "
                          f"{MIN_ADDRESS_SPACE // 2**20} MiB before it creates its envs; raise the limit "
                          "(ulimit -v unlimited).")
