"""The one scheduling loop of every executor: each trained model's producer first, the runs reusing it after."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from benchmarks.config import RunConfig
from benchmarks.run.pipeline import RunResult, training_group

Handle = TypeVar("Handle")
# Exit code of a sweep (or its tuning) that left work to another process: nothing failed, it is not complete yet.
EXIT_INCOMPLETE = 3


def groups(pending: list[RunConfig]) -> list[list[RunConfig]]:
    """Pending runs by the trained model they share, each group's first run the one that trains it."""
    found: dict[str, list[RunConfig]] = {}
    for cfg in pending:
        found.setdefault(training_group(cfg), []).append(cfg)
    return list(found.values())


def producers_first(pending: list[RunConfig], submit: Callable[[RunConfig], Handle],
                    wait_any: Callable[[list[Handle]], Iterable[Handle]],
                    result: Callable[[Handle, RunConfig], RunResult], done: Callable[[RunResult], None],
                    waiting: dict | None = None) -> None:
    """Submit each group's producer, and a group's other runs once its producer ended, until all have ended.

    Producers each train a different model; the runs that reuse one are submitted once it is cached, so no worker
    sits waiting on another's trained-model lock. `submit` starts a run and returns its handle (a future, a Ray
    object ref); `wait_any` returns the handles that ended among those given; `result` reads one's RunResult;
    `done` receives each result. `waiting` (handle -> run) is filled as runs go, for the caller to cancel them.
    """
    queued: dict = {} if waiting is None else waiting
    rest: dict = {}
    for group in groups(pending):
        handle = submit(group[0])
        queued[handle], rest[handle] = group[0], group[1:]
    while queued:
        for handle in wait_any(list(queued)):
            cfg = queued.pop(handle)
            done(result(handle, cfg))
            for other in rest.pop(handle, []):
                queued[submit(other)] = other
