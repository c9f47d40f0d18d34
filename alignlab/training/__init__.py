"""Training: the one optimizer-step loop (``loop.py``), the step sources that feed it
(``source.py``), the forwards that turn batches into losses (``forward/``), what differs between
a policy and a reward model (``kinds.py``), and ``run.py``, which loads a run and starts the loop.

``alignlab.train(config)`` is the entry point (``alignlab/__init__.py``).
"""
