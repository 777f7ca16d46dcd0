"""`python -m htsrl_aio` is the `htsrl-aio` command."""

from htsrl_aio.cli import main

if __name__ == "__main__":
    main()
