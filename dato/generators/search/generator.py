"""The NSGA-II search as a :class:`~dato.generators.base.ScheduleGenerator`: run once, answer from the front."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from dato.core.schedule import Schedule
from dato.generators.base import closest_to_target, speedup_of
from dato.generators.search.engine import ScheduleSearch
from dato.generators.search.results import schedule_from_result
from dato.generators.search.settings import SearchSettings

__all__ = ["SearchGenerator"]


class SearchGenerator:
    """One search with ``settings`` (results in a temporary folder unless ``settings.results_dir`` is set);
    each target gets the front's schedule nearest it."""

    name = "nsga2"

    def __init__(self, settings: SearchSettings) -> None:
        self.settings = settings

    def schedules(self, backend: Any, targets: Sequence[float], log: Callable[[str], None] = print
                  ) -> dict[float, Schedule]:
        if self.settings.results_dir:
            results = ScheduleSearch(self.settings, backend, log=lambda m: None).run()
        else:
            with tempfile.TemporaryDirectory() as folder:
                settings = replace(self.settings, results_dir=folder)
                results = ScheduleSearch(settings, backend, log=lambda m: None).run()
        front = [schedule_from_result(results, i, f"nsga2-{i}") for i in results["front"]]
        log(f"nsga2: {len(results['evaluations'])} evaluations, front of {len(front)}")
        speedup = speedup_of(backend)
        return {t: closest_to_target(front, t, speedup) for t in targets}
