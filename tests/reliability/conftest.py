"""The reliability suite's scheduling and report.

Most faults need whole runs of the real entry points, and a subprocess costs ~8 s of interpreter
start-up before it trains. So the long subprocess work (uninterrupted reference runs, kill-and-resume
chains, the AutoAttack and NaN runs) is declared as *jobs* (``@job``), started in two background
threads as soon as the session begins, and awaited by the tests that need them
(``@pytest.mark.jobs(...)``); tests without jobs run first, in-process, while the jobs work.

Jobs only start subprocesses and read files: anything that touches process-global state (the
global RNG, ``os.environ``, monkeypatches) stays in the main thread, and ``helpers.Proc`` builds a
child's environment from a snapshot taken at import.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.helpers import JOBS
from tests.reliability.report import REPORT

TIMES: dict[str, float] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "jobs(*names): background jobs (tests/reliability/conftest.py) the test awaits")


def _job_names(item: pytest.Item) -> list[str]:
    return [name for marker in item.iter_markers("jobs") for name in marker.args]


@pytest.hookimpl(trylast=True)  # after -m/-k deselection: start only the jobs of selected tests
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In-process tests first (they overlap the background jobs), then the tests that await jobs."""
    here = Path(__file__).parent
    ours = [i for i in items if here in Path(str(i.path)).parents]
    if not ours:
        return
    rank = {id(i): (1 if _job_names(i) else 0) for i in ours}
    start = items.index(ours[0])
    items[start : start + len(ours)] = sorted(ours, key=lambda i: rank[id(i)])
    config._ikl_jobs = [name for i in ours for name in _job_names(i)]  # type: ignore[attr-defined]


class Jobs:
    def __init__(self, tmp_factory: pytest.TempPathFactory, shared: dict[str, Any]) -> None:
        self.tmp_factory = tmp_factory
        self.shared = shared
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="reliability-job")
        self.futures: dict[str, Future] = {}

    def start(self, name: str) -> None:
        if name not in self.futures:
            self.futures[name] = self.pool.submit(self._timed, name, self.tmp_factory.mktemp(name))

    def _timed(self, name: str, tmp: Path) -> Any:
        started = time.monotonic()
        try:
            return JOBS[name].fn(tmp, self.shared)
        finally:
            TIMES[name] = time.monotonic() - started

    def get(self, name: str) -> Any:
        self.start(name)
        return self.futures[name].result()


@pytest.fixture(scope="session")
def shared_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Files several jobs read, made here in the main thread (they seed the global RNG)."""
    from tests.runutils import save_teacher

    base = tmp_path_factory.mktemp("shared")
    save_teacher(base / "teacher.pth")
    return {"teacher": base / "teacher.pth", "base": base}


@pytest.fixture(scope="session", autouse=True)
def jobs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Jobs:
    REPORT.hide(tmp_path_factory.getbasetemp())
    wanted = sorted(dict.fromkeys(getattr(request.config, "_ikl_jobs", [])), key=lambda n: JOBS[n].priority)
    shared = request.getfixturevalue("shared_files") if wanted else {}
    runner = Jobs(tmp_path_factory, shared)
    for name in wanted:  # first the jobs that need no set-up ...
        if JOBS[name].prepare is None:
            runner.start(name)
    for name in wanted:  # ... then, while they run, the main-thread set-up of the others
        if JOBS[name].prepare is not None:
            started = time.monotonic()
            JOBS[name].prepare(shared)
            TIMES[f"{name} (set-up, main thread)"] = time.monotonic() - started
            runner.start(name)
    yield runner
    runner.pool.shutdown(wait=True, cancel_futures=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    REPORT.write()


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if TIMES:
        terminalreporter.write_sep("-", "reliability jobs (wall seconds, two at a time in the background)")
        for name, seconds in sorted(TIMES.items(), key=lambda item: -item[1]):
            terminalreporter.write_line(f"{seconds:7.1f}  {name}")
