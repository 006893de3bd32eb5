"""Run an entry point exactly as ``python <script> <overrides>`` would, with one test-only hang point.

    python tests/reliability/hooked.py train_kd.py <overrides>

The engine has switches for NaN (``IKL_TEST_NAN_AT_STEP``), SIGTERM (``IKL_TEST_SIGTERM_AFTER_STEP``)
and a pause inside checkpoint writes (``IKL_TEST_PAUSE_IN_SAVE``), but none that holds a run at a
precise point of training or evaluation. This wrapper adds two, so a test can SIGKILL the run
there (the process writes ``$IKL_TEST_HANG_MARKER`` and sleeps until it is killed):

* ``IKL_TEST_HANG_AFTER_STEP=N``: right after global step N's optimizer update (mid-epoch);
* ``IKL_TEST_HANG_IN_EVAL=E``: in epoch E's evaluation, after its first test batch.

Nothing else changes: the script runs as ``__main__`` with its own Hydra entry point.
"""

from __future__ import annotations

import os
import runpy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _hang(what: str) -> None:
    Path(os.environ["IKL_TEST_HANG_MARKER"]).write_text(what)
    while True:  # until SIGKILL
        time.sleep(60)


def _install_hooks() -> None:
    from ikl.engine import trainer

    after_step = os.environ.get("IKL_TEST_HANG_AFTER_STEP")
    in_eval = os.environ.get("IKL_TEST_HANG_IN_EVAL")
    if after_step:
        train_step = trainer.Trainer.train_step

        def hanging_train_step(self, *args, **kwargs):
            out = train_step(self, *args, **kwargs)
            if self.step == int(after_step):
                _hang(f"after step {self.step}")
            return out

        trainer.Trainer.train_step = hanging_train_step
    if in_eval:
        evaluate = trainer.Trainer.evaluate
        to_device = trainer.to_device

        def hanging_evaluate(self, epoch):
            if epoch == int(in_eval):
                batches = []

                def counting_to_device(batch, *args, **kwargs):
                    batches.append(1)
                    if len(batches) == 2:
                        _hang(f"in evaluation of epoch {epoch}, after its first test batch")
                    return to_device(batch, *args, **kwargs)

                trainer.to_device = counting_to_device
            return evaluate(self, epoch)

        trainer.Trainer.evaluate = hanging_evaluate


def main() -> None:
    script = str(ROOT / sys.argv[1])
    sys.argv = [script, *sys.argv[2:]]
    sys.path.insert(0, str(ROOT))
    _install_hooks()
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
