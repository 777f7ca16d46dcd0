"""`python -m htsrl_aio` is the `htsrl-aio` command."""

import sys

from htsrl_aio.cli import main

if __name__ == "__main__":
    sys.exit(main())
