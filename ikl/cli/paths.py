"""Where the Hydra configs are: ``ikl/configs`` in an installed package, ``configs/`` in a checkout."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]
# A wheel carries the repository's configs/ as the package data ikl/configs (pyproject.toml).
CONFIGS = _PACKAGE / "configs" if (_PACKAGE / "configs").is_dir() else _PACKAGE.parent / "configs"
