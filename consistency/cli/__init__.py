"""The command lines: training (train.py, used by main.py and main_imagenet9.py), sampling and editing.

    python -m consistency.cli.sample --checkpoint runs/mnist/checkpoint.pt --n 64 --grid grid.png
    python -m consistency.cli.edit inpaint --checkpoint runs/mnist/checkpoint.pt --input examples/digit.png --box 0,14,28,28 --class-label 7 --out o.png

The library never imports this package.
"""
