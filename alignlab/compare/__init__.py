"""`alignlab compare`: train and evaluate a grid of methods, hyperparameters, seeds and decoding
methods on the same data and budget, and report them side by side.

``config.py`` reads and checks the config and expands it into cells; ``run.py`` runs the cells as
processes, resumably; ``cell.py`` is one cell's process; ``alignlab.report`` renders the result.
"""
