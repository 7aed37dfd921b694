"""The search loop: reference once, NSGA-II generation by generation, a checkpoint after each.

:class:`ScheduleSearch` runs one search to the end (or until cancelled)
against any backend (:class:`~dato.generators.search.objectives.SampleBackend`). Its
files live in ``<results_dir>/<run_id>/``:

* ``checkpoint.pkl`` — the pickled NSGA-II state (population, random state,
  generation), the evaluation archive and the stage choices, rewritten
  atomically after every generation. Starting the same settings with the same
  run id resumes from it; because the algorithm's random state is in it and
  every evaluation is archived, the resumed run ends with the same front as an
  uninterrupted one.
* ``reference.npz`` — the unaccelerated samples (made once per search; numpy, no pickle).
* ``results.json`` — every evaluated schedule with its objectives, the Pareto
  front, settings, prompts and model; rewritten atomically after every
  generation (``status`` running / cancelled / done / failed).

Length: one class, the search loop and the state it checkpoints (archive,
stage choices, algorithm state, progress); its methods read in the order a run
takes. Its parts that stand alone live beside it: genome, problem, objectives,
results, settings, job.
"""

from __future__ import annotations

import datetime as _dt
import math
import pickle
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dato import __version__
from dato.core.schedule import Schedule, ScheduleError, _action_to_json, find_schedules, load_schedule
from dato.generators.search.genome import GenomeSpec, dato_ratio_code
from dato.generators.search.imagereward import ScorerUnavailable
from dato.generators.search.objectives import PSNR_CAP, Samples, fidelity, imagereward_quality
from dato.generators.search.problem import ScheduleProblem, SeedSchedule, build_nsga2, uniform_seeds
from dato.generators.search.results import (
    REFERENCE_FILE,
    RESULTS_FORMAT,
    atomic_pickle,
    atomic_write_json,
    load_pickle,
    load_reference,
    pareto_front,
    save_reference,
)
from dato.generators.search.settings import SearchSettings, SettingsError, default_results_dir

__all__ = ["ScheduleSearch", "SearchCancelled", "SearchProgress", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = 1


class SearchCancelled(Exception):
    """Raised inside the loop when the search was asked to stop; the last checkpoint stays valid."""


@dataclass
class SearchProgress:
    """What a UI shows while a search runs (JSON-able via :meth:`to_dict`)."""

    run_id: str = ""
    state: str = "pending"  # pending | running | cancelling | cancelled | done | failed
    stage: str = ""
    stage_index: int = 0
    stages: int = 1
    generation: int = 0
    generations: int = 0
    evaluations: int = 0
    reused_evaluations: int = 0
    planned_evaluations: int = 0
    elapsed_seconds: float = 0.0
    eta_seconds: float | None = None
    best_quality: dict[str, Any] | None = None
    cheapest_feasible: dict[str, Any] | None = None
    front: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""
    results_path: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Stage:
    name: str
    spec: GenomeSpec


class ScheduleSearch:
    """One search. ``run()`` returns the results dict (also written to ``results.json``).

    * ``backend``: makes samples (``generate``), prices schedules (``macs``), describes the model.
    * ``scorer``: an ImageReward-like scorer; if ``None`` and the quality is ImageReward,
      ``scorer_loader()`` is called (default: :func:`dato.generators.search.imagereward.load_imagereward`).
    * ``cancel_event``: set it to stop after the evaluation in flight.
    * ``on_progress(progress)``: called after every evaluation and generation.
    """

    def __init__(
        self,
        settings: SearchSettings,
        backend: Any,
        *,
        scorer: Any = None,
        scorer_loader: Callable[[], Any] | None = None,
        log: Callable[[str], None] | None = None,
        cancel_event: threading.Event | None = None,
        on_progress: Callable[[SearchProgress], None] | None = None,
    ) -> None:
        if not isinstance(settings, SearchSettings):
            raise SettingsError(f"settings must be a SearchSettings, got {type(settings).__name__}")
        self.settings = settings
        self.backend = backend
        self.scorer = scorer
        self.scorer_loader = scorer_loader
        self.log = log or (lambda msg: None)
        self.cancel_event = cancel_event or threading.Event()
        self.on_progress = on_progress
        self.run_id = settings.run_id or self._default_run_id()
        self.run_dir = Path(settings.results_dir or default_results_dir()) / self.run_id
        self.progress = SearchProgress(run_id=self.run_id, results_path=str(self.run_dir / "results.json"))
        self.archive: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._eval_seconds: list[float] = []
        self._started = 0.0
        self._elapsed_before = 0.0
        self.model_info: dict[str, Any] = {}
        self.quality_used = settings.quality
        self.quality_note = ""
        self.metric = settings.fidelity_metric
        self.reference: Samples | None = None
        self.baseline: dict[str, Any] = {}
        self.choices: dict[str, Any] = {}
        self._macs_full = 1.0
        self._baseline_time = 1.0
        self._quality_floor: float | None = None
        self._reference_times: list[float] = []
        self._stage_name = ""
        self._generation = 0
        self._seed_names: dict[tuple[int, ...], tuple[str, str]] = {}
        self._algo_blob: bytes | None = None
        self._ckpt_stage: int | None = None

    # ------------------------------------------------------------------ paths
    def _default_run_id(self) -> str:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        return f"{stamp}-{self.settings.identity_hash()[:6]}"

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pkl"

    @property
    def results_path(self) -> Path:
        return self.run_dir / "results.json"

    @property
    def reference_path(self) -> Path:
        return self.run_dir / REFERENCE_FILE

    # ------------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        self._started = time.perf_counter()
        self._set(state="running", message="preparing")
        try:
            results = self._run()
        except SearchCancelled:
            if self._ckpt_stage is not None:
                self._checkpoint(self._ckpt_stage, None)  # same algorithm state, newer archive
            self._set(state="cancelled", message="cancelled; start again with the same run id to resume")
            self._write_results("cancelled")
            raise
        except BaseException as exc:
            self._set(state="failed", message=f"{type(exc).__name__}: {exc}")
            if self.archive:
                self._write_results("failed")
            raise
        self._set(state="done", message=f"done: {len(results['front'])} schedules on the front", eta_seconds=0.0)
        return results

    def cancel(self) -> None:
        self.cancel_event.set()
        if self.progress.state == "running":
            self._set(state="cancelling", message="cancelling after the evaluation in flight")

    def _run(self) -> dict[str, Any]:
        s = self.settings
        self.model_info = dict(self.backend.describe())
        backend_steps = self.model_info.get("steps")
        if backend_steps is not None and int(backend_steps) != s.steps:
            raise SettingsError(f"search setting steps = {s.steps} but the backend samples {backend_steps} steps")
        if self.model_info.get("decodes") is False:  # known up front: fail before making any sample
            if s.fidelity_metric in ("psnr", "ssim"):
                raise SettingsError(f"search setting fidelity_metric = {s.fidelity_metric!r} needs decoded images; "
                                    "this model makes latents only (use 'snr' or 'auto')")
            if s.quality == "imagereward" and self.scorer is None:
                raise SettingsError("quality 'imagereward' needs decoded images; this model makes latents only "
                                    "(use quality 'fidelity')")
        state = self._load_checkpoint()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_reference()
        self._prepare_objectives(state)
        self._prepare_baseline()
        stages = self._stages()
        self.progress.stages = len(stages)
        start_stage = state["stage_index"] if state else 0
        for index in range(start_stage, len(stages)):
            stage = stages[index] if stages[index].spec is not None else self._ratio_stage_after_cache()
            blob = state.get("algorithm_blob") if state and state["stage_index"] == index else None
            self._run_stage(index, stage, pickle.loads(blob) if blob else None)
            state = None
        return self._write_results("done")

    # -------------------------------------------------------------- objectives
    def _prepare_objectives(self, state: Mapping[str, Any] | None) -> None:
        s = self.settings
        decodes = self.reference is not None and self.reference.images is not None
        if state:
            self.quality_used, self.quality_note, self.metric = state["quality_used"], state["quality_note"], \
                state["metric"]
        else:
            self.metric = ("psnr" if decodes else "snr") if s.fidelity_metric == "auto" else s.fidelity_metric
            if self.metric in ("psnr", "ssim") and not decodes:
                raise SettingsError(f"search setting fidelity_metric = {s.fidelity_metric!r} needs decoded images; "
                                    "this model makes latents only (use 'snr' or 'auto')")
            self.quality_used = s.quality
        if self.quality_used == "imagereward" and self.scorer is None:
            if not decodes:
                raise SettingsError("quality 'imagereward' needs decoded images; this model makes latents only "
                                    "(use quality 'fidelity')")
            try:
                if self.scorer_loader is not None:
                    self.scorer = self.scorer_loader()
                else:
                    from dato.generators.search.imagereward import load_imagereward

                    self.scorer = load_imagereward(device=self.model_info.get("device", "cpu"))
            except ScorerUnavailable as exc:
                if s.imagereward_fallback != "fidelity":
                    raise
                self.quality_used = "fidelity"
                self.quality_note = f"ImageReward unavailable, fell back to fidelity ({self.metric}): {exc}"
                self.log("warning: " + self.quality_note)
        if self.quality_used == "fidelity" and self.metric in ("psnr", "ssim") and not decodes:
            self.metric = "snr"

    def _quality(self, samples: Samples) -> tuple[float, dict[str, Any]]:
        if self.quality_used == "imagereward":
            value, details = imagereward_quality(samples, self.scorer)
            if self.reference is not None:
                fid, fid_details = fidelity(samples, self.reference, "snr")
                details.update(fid_details)
            return value, details
        assert self.reference is not None
        return fidelity(samples, self.reference, self.metric)

    def _quality_label(self) -> dict[str, Any]:
        if self.quality_used == "imagereward":
            return {"name": "imagereward", "unit": "reward", "higher_is_better": True}
        unit = {"psnr": "dB (pixels)", "ssim": "SSIM", "snr": "dB (latents, -20 log10 relative L2)"}.get(
            self.metric, "not decided yet")
        return {"name": f"fidelity-{self.metric}", "unit": unit, "higher_is_better": True,
                "note": f"identical to the unaccelerated sample = {PSNR_CAP:g}" if self.metric != "ssim" else ""}

    def _cost_label(self) -> dict[str, Any]:
        if self.settings.cost == "time":
            return {"name": "time", "unit": "fraction of the baseline's median wall time",
                    "repeats": self.settings.time_repeats}
        return {"name": "macs", "unit": "fraction of the baseline's analytic UNet MACs"}

    # --------------------------------------------------------------- reference
    def _generate(self, schedule: Schedule | None) -> tuple[Samples, list[float]]:
        self._check_cancel()
        pairs = self.settings.pairs()
        samples = self.backend.generate(schedule, pairs)
        if samples.pairs != pairs:
            raise RuntimeError("backend returned samples for other (prompt, seed) pairs than it was given")
        times = [samples.seconds]
        if self.settings.cost == "time":
            for _ in range(self.settings.time_repeats - 1):
                self._check_cancel()
                times.append(self.backend.generate(schedule, pairs).seconds)
        return samples, times

    def _prepare_reference(self) -> None:
        pairs = self.settings.pairs()
        ref = None
        if self.reference_path.exists():
            data = load_reference(self.reference_path)
            if data is not None and data["pairs"] == [list(p) for p in pairs] \
                    and data["identity"] == self.settings.identity_hash():
                ref = data
        if ref is None:
            self._set(message="making the unaccelerated reference samples")
            samples, times = self._generate(None)
            ref = {"pairs": [list(p) for p in pairs], "identity": self.settings.identity_hash(),
                   "latents": samples.latents, "images": samples.images, "times": times}
            save_reference(self.reference_path, ref)
        self.reference = Samples(pairs, ref["latents"], ref["images"], statistics.median(ref["times"]))
        self._baseline_time = max(statistics.median(ref["times"]), 1e-9)
        self._reference_times = list(ref["times"])

    def _prepare_baseline(self) -> None:
        self._macs_full = float(self.backend.macs(Schedule.full(self.settings.steps, method="none")))
        quality, details = self._quality(self.reference)
        self.baseline = {"quality": quality, "details": details, "time_s": self._baseline_time,
                         "times_s": self._reference_times, "macs": self._macs_full, "cost": 1.0}
        mq = self.settings.min_quality
        if mq is not None:
            self._quality_floor = quality + mq if self.quality_used == "imagereward" else mq

    # ------------------------------------------------------------------ stages
    def _base_spec(self, **kw: Any) -> GenomeSpec:
        s = self.settings
        args: dict[str, Any] = dict(steps=s.steps, max_depth=s.max_depth, allow_reuse=s.allow_reuse,
                                    ratio_levels=s.ratio_levels, method=s.method)
        args.update(kw)
        return GenomeSpec(**args)

    def _stages(self) -> list[_Stage]:
        s = self.settings
        fixed_ratio = (float(s.stage1_ratio),) * s.steps
        if s.mode == "joint":
            return [_Stage("joint", self._base_spec())]
        if s.mode == "cache":
            return [_Stage("cache", self._base_spec(search_ratio=False, fixed_ratio=fixed_ratio))]
        if s.mode == "ratio":
            base = load_schedule(s.base_schedule, s.preset_dirs)
            cache = self._base_spec(search_ratio=False).fit(base.with_method(s.method).with_ratio(0.0)).cache
            return [_Stage("ratio", self._base_spec(search_cache=False, fixed_cache=cache))]
        return [_Stage("cache", self._base_spec(search_ratio=False, fixed_ratio=fixed_ratio)),
                _Stage("ratio", None)]  # type: ignore[arg-type]  # spec known after the cache stage

    def _ratio_stage_after_cache(self) -> _Stage:
        if "cache_stage_choice" not in self.choices:
            raise RuntimeError("two-stage search: the ratio stage needs the cache stage's choice")
        cache = tuple(self.choices["cache_stage_choice"]["cache_actions"])
        return _Stage("ratio", self._base_spec(search_cache=False, fixed_cache=cache))

    def _choose_cache(self) -> None:
        """Pick the cache-stage schedule the ratio stage builds on: the front point nearest the ideal
        (best quality, lowest cost) in normalised objectives, among feasible ones if any."""
        records = [r for r in self.archive.values() if r["stage"] == "cache"]
        feasible = [r for r in records if r["feasible"]] or records
        pts = [(-r["quality"], r["cost"]) for r in feasible]
        front = [feasible[i] for i in pareto_front(pts)]
        q = np.array([r["quality"] for r in front])
        c = np.array([r["cost"] for r in front])
        qn = (q - q.min()) / (np.ptp(q) or 1.0)
        cn = (c - c.min()) / (np.ptp(c) or 1.0)
        best = front[int(np.argmin((1 - qn) ** 2 + cn**2))]
        actions = [a if isinstance(a, int) else {"full": -1, "reuse": -2}[a] for a in best["cache"]]
        self.choices["cache_stage_choice"] = {"id": best["id"], "cache_actions": actions,
                                              "quality": best["quality"], "cost": best["cost"]}
        self.log(f"cache stage chose #{best['id']} {best['preview']} (quality {best['quality']:.4g}, "
                 f"cost {best['cost']:.3f}); searching its ratios")

    def _seeds(self, spec: GenomeSpec) -> list[SeedSchedule]:
        s = self.settings
        out: list[SeedSchedule] = []

        def add(schedule: Schedule, origin: str) -> None:
            try:
                out.append(SeedSchedule(schedule.name, origin, tuple(int(v) for v in spec.encode(schedule,
                                                                                                  snap=True))))
            except ScheduleError as exc:
                self.log(f"note: seed {schedule.name!r} skipped: {exc}")

        add(Schedule("baseline", (-1,) * s.steps, (0.0,) * s.steps, s.method), "baseline")
        for ref in s.seed_schedules:
            add(load_schedule(ref, s.preset_dirs), "user")
        uniform: list[Schedule] = []
        if s.seed_uniform and spec.search_cache:
            uniform = uniform_seeds(spec, ratios=(spec.ratio_template()[0],) if not spec.search_ratio else (0.0,))
        if spec.search_ratio:  # token reduction alone, one per level
            for level in spec.ratio_levels[1:]:
                uniform.append(Schedule(f"tokens-{dato_ratio_code(level)}", spec.cache_template(),
                                        (level,) * s.steps, s.method))
        presets: list[Schedule] = []
        if s.seed_presets:
            for name, path in find_schedules(s.preset_dirs).items():
                try:
                    presets.append(Schedule.load(path))
                except ScheduleError as exc:
                    self.log(f"note: preset {name!r} skipped: {exc}")
        for i in range(max(len(uniform), len(presets))):  # interleave so a small population gets both kinds
            if i < len(uniform):
                add(uniform[i], "uniform")
            if i < len(presets):
                add(presets[i], "preset")
        return out

    # ------------------------------------------------------------------- loop
    def _run_stage(self, index: int, stage: _Stage, algo_state: Any) -> None:
        s = self.settings
        self._stage_name = stage.name
        n_constr = 1 if self._quality_floor is not None else 0
        seeds = self._seeds(stage.spec)
        self._seed_names = {sd.genome: (sd.name, sd.origin) for sd in seeds}
        if algo_state is not None:
            algorithm = algo_state
            self._algo_blob = pickle.dumps(algorithm, protocol=pickle.HIGHEST_PROTOCOL)
            self._ckpt_stage = index
            algorithm.problem.attach(self._evaluate)
            generation = max(0, (algorithm.n_iter or 1) - 1)  # pymoo counts the next generation
            self.log(f"resuming stage {stage.name!r} after generation {generation}")
        else:
            problem = ScheduleProblem(stage.spec, self._evaluate, n_obj=2, n_constr=n_constr)
            algorithm = build_nsga2(s.population, seeds)
            algorithm.setup(problem, termination=("n_gen", s.generations), seed=s.seed + index, verbose=False)
            generation = 0
            self._algo_blob, self._ckpt_stage = None, index
        self.progress.stage, self.progress.stage_index = stage.name, index
        self.progress.generations = s.generations
        self._update_plan(index)
        while algorithm.has_next():
            self._generation = generation + 1
            self._set(generation=generation, message=f"{stage.name}: generation {generation + 1} of "
                                                       f"{s.generations}")
            infills = algorithm.ask()
            if infills is None or len(infills) == 0:
                self.log(f"{stage.name}: no new schedules left to try; stopping this stage early")
                break
            algorithm.evaluator.eval(algorithm.problem, infills, algorithm=algorithm)
            algorithm.tell(infills=infills)
            algorithm.eliminate_duplicates.remember(infills.get("X"))
            generation += 1
            self._checkpoint(index, algorithm)
            self._write_results("running")
            front = self.progress.front
            self.log(f"[{stage.name}] generation {generation}/{s.generations}: {self.progress.evaluations} "
                     f"evaluations, front {len(front)}: "
                     + ", ".join(f"{p['quality']:.3g}@{p['cost']:.3f}" for p in front[:6])
                     + (" ..." if len(front) > 6 else "")
                     + (f", ETA {self.progress.eta_seconds:.0f}s" if self.progress.eta_seconds else ""))
            self._set(generation=generation)
        if self.settings.mode == "two-stage" and stage.name == "cache":
            self._choose_cache()
        self._algo_blob = None
        self._checkpoint(index + 1, None)

    def _evaluate(self, schedule: Schedule, genome: np.ndarray) -> tuple[list[float], list[float]]:
        key = schedule.content_hash()
        record = self.archive.get(key)
        if record is None:
            t0 = time.perf_counter()
            samples, times = self._generate(schedule)
            quality, details = self._quality(samples)
            macs_rel = float(self.backend.macs(schedule)) / self._macs_full
            time_rel = statistics.median(times) / self._baseline_time
            cost = time_rel if self.settings.cost == "time" else macs_rel
            seed = self._seed_names.get(tuple(int(v) for v in genome))
            record = {
                "id": len(self.archive), "stage": self._stage_name, "generation": self._generation,
                "origin": seed[1] if seed else "search", "seed_name": seed[0] if seed else None,
                "genome": [int(v) for v in genome],
                "method": schedule.method, "cache": [_action_to_json(a) for a in schedule.cache],
                "ratio": list(schedule.ratio), "ratio_codes": [dato_ratio_code(r) for r in schedule.ratio],
                "preview": schedule.preview(), "hash": key,
                "quality": _finite(quality), "cost": _finite(cost), "macs_rel": macs_rel, "time_rel": time_rel,
                "times_s": [round(t, 6) for t in times],
                "details": {k: v for k, v in details.items() if k != "rewards"},
                "feasible": self._quality_floor is None or quality >= self._quality_floor,
            }
            with self._lock:
                self.archive[key] = record
            self._eval_seconds.append(time.perf_counter() - t0)
            self.progress.evaluations += 1
        else:
            self.progress.reused_evaluations += 1
        self._update_best()
        self._set(eta_seconds=self._eta())
        f = [-record["quality"], record["cost"]]
        g = [self._quality_floor - record["quality"]] if self._quality_floor is not None else []
        return f, g

    # ------------------------------------------------------------- bookkeeping
    def _check_cancel(self) -> None:
        if self.cancel_event.is_set():
            raise SearchCancelled(self.run_id)

    def _update_plan(self, stage_index: int) -> None:
        s = self.settings
        stages_left = self.progress.stages - stage_index
        planned_rest = stages_left * s.generations * s.population
        done = self.progress.evaluations + self.progress.reused_evaluations
        self.progress.planned_evaluations = done + planned_rest

    def _eta(self) -> float | None:
        if not self._eval_seconds:
            return None
        done = self.progress.evaluations + self.progress.reused_evaluations
        remaining = max(0, self.progress.planned_evaluations - done)
        return float(np.mean(self._eval_seconds[-20:]) * remaining)

    def _update_best(self) -> None:
        records = list(self.archive.values())
        if not records:
            return
        best = max(records, key=lambda r: (r["quality"], -r["cost"]))
        feasible = [r for r in records if r["feasible"] and r["cost"] < 1.0 - 1e-9]
        cheap = min(feasible, key=lambda r: (r["cost"], -r["quality"])) if feasible else None
        brief = lambda r: {"id": r["id"], "quality": r["quality"], "cost": r["cost"], "preview": r["preview"]}
        self.progress.best_quality = brief(best)
        self.progress.cheapest_feasible = brief(cheap) if cheap else None
        self.progress.front = [brief(r) for r in self._front_records()]

    def _front_records(self) -> list[dict[str, Any]]:
        records = list(self.archive.values())
        feasible = [r for r in records if r["feasible"]] or records
        idx = pareto_front([(-r["quality"], r["cost"]) for r in feasible])
        return sorted((feasible[i] for i in idx), key=lambda r: (r["cost"], -r["quality"]))

    def _set(self, **changes: Any) -> None:
        for k, v in changes.items():
            setattr(self.progress, k, v)
        self.progress.elapsed_seconds = self._elapsed_before + (time.perf_counter() - self._started)
        if self.on_progress is not None:
            self.on_progress(self.progress)

    # ------------------------------------------------------------ checkpoint
    def _checkpoint(self, stage_index: int, algorithm: Any) -> None:
        """Save the algorithm as it is after ``tell`` (pickled once, kept as bytes so that a cancel in the
        middle of the next generation can save the newer archive beside the same algorithm state)."""
        if algorithm is not None:
            self._algo_blob = pickle.dumps(algorithm, protocol=pickle.HIGHEST_PROTOCOL)
        self._ckpt_stage = stage_index
        state = {
            "format": CHECKPOINT_FORMAT, "identity": self.settings.identity_hash(), "run_id": self.run_id,
            "stage_index": stage_index, "algorithm_blob": self._algo_blob, "archive": list(self.archive.values()),
            "choices": self.choices, "quality_used": self.quality_used, "quality_note": self.quality_note,
            "metric": self.metric, "elapsed": self._elapsed_before + (time.perf_counter() - self._started),
            "evaluations": self.progress.evaluations, "reused": self.progress.reused_evaluations,
            "model": _jsonable(self.model_info),
        }
        atomic_pickle(self.checkpoint_path, state)

    def _load_checkpoint(self) -> dict[str, Any] | None:
        if not self.checkpoint_path.exists():
            return None
        state = load_pickle(self.checkpoint_path)
        if state.get("format") != CHECKPOINT_FORMAT or state.get("identity") != self.settings.identity_hash():
            raise SettingsError(
                f"run {self.run_id!r} already exists with other settings; choose another run id or delete "
                f"{self.run_dir}"
            )
        saved_model = state.get("model", {})
        for key in ("model_hash", "steps", "sampler", "cfg_scale", "latent_shape", "width", "height"):
            if key in saved_model and saved_model.get(key) != self.model_info.get(key):
                raise SettingsError(
                    f"run {self.run_id!r} was searched with {key} = {saved_model.get(key)!r}, now "
                    f"{self.model_info.get(key)!r}; resume it with the same model and sampling, or start a new run"
                )
        self.archive = {r["hash"]: r for r in state["archive"]}
        self.choices = dict(state["choices"])
        self._elapsed_before = float(state.get("elapsed", 0.0))
        self.progress.evaluations = int(state.get("evaluations", len(self.archive)))
        self.progress.reused_evaluations = int(state.get("reused", 0))
        self._update_best()
        self.log(f"resuming run {self.run_id!r}: {len(self.archive)} schedules already evaluated")
        return state

    # ---------------------------------------------------------------- results
    def _write_results(self, status: str) -> dict[str, Any]:
        records = sorted(self.archive.values(), key=lambda r: r["id"])
        front = self._front_records() if records else []
        results = {
            "format": RESULTS_FORMAT,
            "generator": f"dato {__version__} search (pymoo NSGA-II)",
            "run_id": self.run_id,
            "status": status,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "wall_seconds": round(self._elapsed_before + (time.perf_counter() - self._started), 3),
            "settings": self.settings.to_dict(),
            "prompts": list(self.settings.prompts),
            "pairs": [list(p) for p in self.settings.pairs()],
            "model": self.model_info,
            "objectives": {"quality": self._quality_label(), "cost": self._cost_label(),
                           "min_quality": self._quality_floor, "quality_note": self.quality_note},
            "baseline": {k: v for k, v in self.baseline.items() if k != "details"}
                        | {"details": {k: v for k, v in self.baseline.get("details", {}).items() if k != "rewards"}},
            "choices": self.choices,
            "evaluations": records,
            "front": [r["id"] for r in front],
            "front_points": [{"id": r["id"], "quality": r["quality"], "cost": r["cost"], "preview": r["preview"],
                              "ratio_codes": r["ratio_codes"]} for r in front],
        }
        atomic_write_json(self.results_path, _jsonable(results))
        return results


def _finite(x: float) -> float:
    if math.isnan(x):
        return -PSNR_CAP
    return max(-1e12, min(1e12, float(x)))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return _finite(float(obj))
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Sequence) and not isinstance(obj, str):
        return [_jsonable(v) for v in obj]
    return obj
