"""`python -m stellar_dist COMMAND ...` is `stellar-dist COMMAND ...` (and `accelerate launch -m stellar_dist ...`)."""

from .cli import main

if __name__ == "__main__":
    main()
