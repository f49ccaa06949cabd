"""Judging generators beside their teacher: ``tables.py`` (quality versus NFE on the same noise and labels, the rows
every command shows, sample grids and plots) over ``metrics.py`` (Fréchet distance in a bundled classifier's
features, class agreement, sliced Wasserstein, MMD, fidelity to the teacher). No training loss reads these
classifiers.
"""
