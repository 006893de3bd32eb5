"""Placeholder: eval_autoattack.py is not built yet (see the project's open issues)."""

import sys

if __name__ == "__main__":
    sys.exit("eval_autoattack.py is not built yet; it lands with its issue. Nothing was run.")
