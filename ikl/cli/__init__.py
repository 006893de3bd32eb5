"""The composition layer: Hydra configs to objects, the run session, one-line errors.

The only part of ``ikl`` that imports Hydra (and only its public API). The entry points
(``train_kd``, ``train_at``, ``eval_autoattack``) are console scripts and root-level shims.
"""
