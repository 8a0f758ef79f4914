"""A federated runtail example: Flower + PyTorch Lightning on scikit-learn's digits.

Run it with ``python -m examples.flower_digits --rounds 5 --log-dir runs``
from the repository root; see README.md in this folder.
"""
