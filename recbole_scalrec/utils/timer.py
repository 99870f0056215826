"""Wall seconds per pipeline stage (``results.json``'s ``timings_s``)."""
from __future__ import annotations

import time
from contextlib import contextmanager


class Timer:
    """Wall seconds per pipeline stage (``results.json``'s ``timings_s``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)
