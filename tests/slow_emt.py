"""A real EMT teacher that also sleeps per structure, so a run lasts long enough for a
test to kill a process in the middle of it (``ase:slow_emt:SlowEMT``)."""

from __future__ import annotations

import time

from ase.calculators.emt import EMT


class SlowEMT(EMT):
    """EMT plus ``seconds`` of sleep per calculation."""

    def __init__(self, seconds: float = 0.01, **kwargs):
        super().__init__(**kwargs)
        self.seconds = float(seconds)

    def calculate(self, *args, **kwargs):
        time.sleep(self.seconds)
        super().calculate(*args, **kwargs)
