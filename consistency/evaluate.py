"""`python -m consistency.evaluate`: score a checkpoint with its data set's yardstick (consistency/cli/evaluate.py)."""

from .cli.evaluate import main

if __name__ == "__main__":
    main()
