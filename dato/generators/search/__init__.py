"""Schedule search: NSGA-II (pymoo) over per-step cache actions and token ratios.

WebUI-free. The pieces, each usable alone::

    spec = GenomeSpec(steps=20, max_depth=2)              # genome <-> Schedule
    settings = SearchSettings(steps=20, quality="fidelity", cost="macs", population=16, generations=10)
    backend = standalone.builtin_backend(steps=20)         # or the WebUI's processing in the Search tab
    job = SearchJob(settings, backend).start()             # background thread; job.status(), job.cancel()
    results = ScheduleSearch(settings, backend).run()      # or in the foreground

Results (every evaluated schedule, the Pareto front, settings, prompts, model)
are written atomically to ``schedules/searches/<run_id>/results.json``.

What differs from DaTo's reference search scripts (``sd1/scripts/search_*.py``):

* the searched per-step ratio is the one applied (the reference's patch used a fixed 0.4);
* cost is minimised as cost (MACs or time relative to the baseline); the reference minimised
  ``2.24 / time``, which rewards *slower* schedules;
* the (prompt, seed) pairs are fixed for the whole search and travel with their images, so every
  image is scored with its own prompt (the reference re-sampled prompts per evaluation and paired
  them with an unsorted glob of files);
* the step count is the user's (no 50-step grid, no 15/20/15 segments hard-coded), depths 0..D and
  whole-output reuse are all genes, and the ratio levels are a setting;
* the front is the non-dominated set of every evaluation, a seed fixes the run, duplicates are
  never evaluated twice, and a checkpoint after every generation makes an interrupted run resumable.
"""

from dato.generators.search.engine import ScheduleSearch, SearchCancelled, SearchProgress
from dato.generators.search.genome import DEFAULT_RATIO_LEVELS, GenomeError, GenomeSpec, dato_ratio_code
from dato.generators.search.imagereward import ScorerUnavailable, load_imagereward
from dato.generators.search.job import SearchJob
from dato.generators.search.objectives import Samples, fidelity, imagereward_quality
from dato.generators.search.problem import ScheduleProblem, build_nsga2
from dato.generators.search.results import load_results, pareto_front, schedule_from_result
from dato.generators.search.settings import DEFAULT_PROMPTS, SearchSettings, SettingsError, default_results_dir

__all__ = [
    "DEFAULT_PROMPTS",
    "DEFAULT_RATIO_LEVELS",
    "GenomeError",
    "GenomeSpec",
    "Samples",
    "ScheduleProblem",
    "ScheduleSearch",
    "ScorerUnavailable",
    "SearchCancelled",
    "SearchJob",
    "SearchProgress",
    "SearchSettings",
    "SettingsError",
    "build_nsga2",
    "dato_ratio_code",
    "default_results_dir",
    "fidelity",
    "imagereward_quality",
    "load_imagereward",
    "load_results",
    "pareto_front",
    "schedule_from_result",
]
