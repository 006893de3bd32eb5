"""Shared fixtures. Tests never touch the network or a W&B account."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# Cached teachers of the bundled demo go to a per-session temp dir, never the user's ~/.cache.
os.environ["IKL_CACHE"] = tempfile.mkdtemp(prefix="ikl-test-cache-")


@pytest.fixture
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def teacher_file(tmp_path: Path) -> Path:
    """A random resnet8 teacher for 10 classes in mdistiller's checkpoint layout."""
    from tests.runutils import save_teacher

    path = tmp_path / "teacher" / "ckpt_epoch_240.pth"
    save_teacher(path)
    return path


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny models run faster with it, and on a shared small CPU an OpenMP region
    with more threads stalls while another process holds a core; these tests check results, not speed."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
