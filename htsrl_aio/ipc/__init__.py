"""Operating-system plumbing: child processes that die with the run (children.py), marks that find what
they started wherever it went (marks.py), shared memory that is freed with it (shm.py), and the process
limits a run needs (limits.py)."""
