"""ikl: Decoupled / Improved KL divergence losses (Cui et al., NeurIPS 2024) and their experiments."""

__version__ = "0.1.0"
