"""Undo steps for multi-step changes.

    with Undo() as undo:
        make_subvolume(); undo.add(delete_subvolume)
        mount();          undo.add(unmount)
        undo.commit()      # success: forget the steps

Leaving the block without `commit()` (an exception, a cancel) runs the registered
steps newest first. A failing undo step is logged and the rest still run, so one
stuck step never strands the others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType

__all__ = ["Undo"]

log = logging.getLogger(__name__)


class Undo:
    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []

    def add(self, step: Callable[[], object], what: str = "") -> None:
        self._steps.append((what or getattr(step, "__name__", "step"), step))

    def commit(self) -> None:
        self._steps.clear()

    def rollback(self) -> None:
        while self._steps:
            what, step = self._steps.pop()
            try:
                step()
            except Exception:
                log.exception("undo step %r failed; continuing with the rest", what)

    def __enter__(self) -> Undo:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.rollback()
