"""Operating-system plumbing: child processes that die with the run (children.py) and shared memory
that is freed with it (shm.py)."""
