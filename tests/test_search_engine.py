"""NSGA-II schedule search on a real (tiny, random-weight) ldm UNet with real pymoo.

The backend is the standalone one: noise per (prompt, seed), the engine's
sampler with the patch's manual clock, the patch removed after each
evaluation. Costs are analytic MACs so that fronts are reproducible.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch

import dato
from dato.core.schedule import FULL, Schedule
from dato.evaluation.backends import builtin_backend
from dato.generators.search import (
    ScheduleSearch,
    SearchCancelled,
    SearchJob,
    SearchSettings,
    SettingsError,
    fidelity,
    load_results,
    schedule_from_result,
)
from dato.generators.search.results import dominates


@pytest.fixture(scope="module")
def backend():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # toy-sized UNet: one thread is as fast, and never oversubscribes a shared CPU
    b = builtin_backend(latent_size=8, steps=5, cfg_scale=3.0, model="tiny", batch_size=4)
    yield b
    dato.remove_patch(b.unet)
    torch.set_num_threads(threads)


def _settings(tmp_path, **kw):
    base = dict(steps=5, mode="joint", max_depth=1, population=8, generations=3, samples=1, seed=3,
                prompts=("a red fox", "a lighthouse"), seed_presets=False, results_dir=str(tmp_path), run_id="run")
    base.update(kw)
    return SearchSettings(**base)


def _front(results):
    by_id = {e["id"]: e for e in results["evaluations"]}
    return [(by_id[i]["hash"], by_id[i]["quality"], by_id[i]["cost"]) for i in results["front"]]


def test_nsga2_front_dominates_or_equals_every_seeded_uniform_schedule(tmp_path, backend):
    results = ScheduleSearch(_settings(tmp_path, generations=4), backend).run()
    evals = results["evaluations"]
    by_id = {e["id"]: e for e in evals}
    front = [by_id[i] for i in results["front"]]
    seeded = [e for e in evals if e["origin"] == "uniform"]
    assert seeded, "the first population holds DeepCache uniform schedules"
    for s in seeded:
        pt = (-s["quality"], s["cost"])
        assert any(dominates((-f["quality"], f["cost"]), pt) or (-f["quality"], f["cost"]) == pt for f in front)
    # the front reaches the baseline's quality (the baseline is seeded) and the search found non-seeds
    assert max(f["quality"] for f in front) == results["baseline"]["quality"]
    assert any(e["origin"] == "search" for e in evals)
    assert min(f["cost"] for f in front) < 0.5
    # no file left half-written, and the results say what was searched, on what, with which prompts
    assert not list((tmp_path / "run").glob(".tmp-*"))
    on_disk = load_results(tmp_path / "run")
    assert on_disk["status"] == "done" and on_disk["front"] == results["front"]
    assert on_disk["model"]["model_hash"] == "builtin-tiny-seed0"
    assert on_disk["pairs"] == [["a red fox", 3]]
    assert on_disk["settings"]["population"] == 8 and on_disk["objectives"]["cost"]["name"] == "macs"


def test_front_records_reproduce_when_the_schedule_is_sampled_again(tmp_path, backend):
    settings = _settings(tmp_path, generations=2)
    results = ScheduleSearch(settings, backend).run()
    pick = min((e for e in results["evaluations"] if e["id"] in results["front"]), key=lambda e: e["cost"])
    schedule = schedule_from_result(results, pick["id"], "picked")
    assert schedule.provenance["run_id"] == "run" and schedule.provenance["prompts"] == ["a red fox", "a lighthouse"]
    reference = backend.generate(None, settings.pairs())
    again = backend.generate(schedule, settings.pairs())
    quality, _ = fidelity(again, reference, "snr")
    assert quality == pytest.approx(pick["quality"], abs=1e-6)
    assert dato.get_patch(backend.unet) is None, "the UNet is left unpatched between evaluations"


def test_the_searched_ratio_is_applied_and_cheaper_schedules_cost_less(backend):
    pairs = [("a red fox", 0)]
    cached = Schedule.uniform(5, 3, 0)
    plain = backend.generate(cached, pairs).latents
    pruned = backend.generate(cached.with_ratio([0.5, 0.5, 0.5, 0.0, 0.5]), pairs).latents
    assert not torch.equal(plain, pruned), "a per-step ratio schedule changes the samples (DaTo's search ignored it)"
    macs = [backend.macs(s) for s in (Schedule.full(5, method="none"), Schedule.uniform(5, 2, 0),
                                      Schedule.uniform(5, 3, 0), Schedule.uniform(5, 3, 0, ratio=0.5))]
    assert macs == sorted(macs, reverse=True), "cost falls as schedules get faster (DaTo minimised 2.24/time)"


def test_cancel_then_resume_ends_with_the_same_front_as_an_uninterrupted_run(tmp_path, backend, monkeypatch):
    settings = _settings(tmp_path, run_id="whole")
    whole = ScheduleSearch(settings, backend).run()

    interrupted = settings.with_(run_id="split")
    stop = threading.Event()

    def cancel_mid_generation_two(progress):
        if progress.evaluations >= 11:  # generation 2 of 3 is under way
            stop.set()

    first = ScheduleSearch(interrupted, backend, cancel_event=stop, on_progress=cancel_mid_generation_two)
    with pytest.raises(SearchCancelled):
        first.run()
    assert load_results(tmp_path / "split")["status"] == "cancelled"
    assert (tmp_path / "split" / "checkpoint.pkl").exists()

    # the WebUI replaces torch.load with a checker that refuses files newer torch writes: resuming needs none
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load used to resume a search"))
    resumed = ScheduleSearch(interrupted, backend).run()
    assert _front(resumed) == _front(whole)
    assert [e["hash"] for e in resumed["evaluations"]] == [e["hash"] for e in whole["evaluations"]]
    assert [e["quality"] for e in resumed["evaluations"]] == [e["quality"] for e in whole["evaluations"]]


def test_reference_samples_round_trip_exactly_without_pickle(tmp_path):
    from dato.generators.search.results import REFERENCE_FILE, load_reference, save_reference

    ref = {"pairs": [("a fox", 1), ("a cat", 2)], "identity": "abc", "times": [0.5],
           "latents": torch.randn(2, 4, 8, 8).to(torch.bfloat16), "images": torch.rand(2, 3, 64, 64).half()}
    save_reference(tmp_path / REFERENCE_FILE, ref)
    back = load_reference(tmp_path / REFERENCE_FILE)
    assert back["pairs"] == [["a fox", 1], ["a cat", 2]] and back["identity"] == "abc" and back["times"] == [0.5]
    for key in ("latents", "images"):
        assert back[key].dtype == ref[key].dtype and torch.equal(back[key], ref[key])
    save_reference(tmp_path / "none.npz", {**ref, "images": None})
    assert load_reference(tmp_path / "none.npz")["images"] is None
    (tmp_path / "junk.npz").write_bytes(b"not an archive")
    assert load_reference(tmp_path / "junk.npz") is None and load_reference(tmp_path / "missing.npz") is None


def test_search_job_runs_in_the_background_reports_progress_and_cancels(tmp_path, backend):
    settings = _settings(tmp_path, run_id="bg", generations=3)
    job = SearchJob(settings, backend).start()
    deadline = time.time() + 120
    while job.status()["generation"] < 1 and time.time() < deadline and job.running:
        time.sleep(0.05)
    status = job.status()
    assert status["state"] == "running" and status["generations"] == 3 and status["evaluations"] >= 8
    assert status["front"] and status["eta_seconds"] is not None and status["best_quality"]
    json.dumps(status)  # the API can send it as it is
    job.cancel()
    assert job.wait(120)
    assert job.status()["state"] == "cancelled" and not job.running
    # a new job with the same settings and run id picks up from the checkpoint and finishes
    again = SearchJob(settings, backend).start()
    assert again.wait(300)
    assert again.status()["state"] == "done", again.status()
    assert again.result["status"] == "done" and again.status()["generation"] == 3


def test_two_stage_searches_the_cache_then_the_ratios_of_the_chosen_cache(tmp_path, backend):
    results = ScheduleSearch(_settings(tmp_path, mode="two-stage", generations=2, population=6), backend).run()
    stages = {e["stage"] for e in results["evaluations"]}
    assert stages == {"cache", "ratio"}
    chosen = results["choices"]["cache_stage_choice"]["cache_actions"]
    cache_stage = [e for e in results["evaluations"] if e["stage"] == "cache"]
    assert all(e["ratio"] == [0.0] * 5 for e in cache_stage)
    for e in results["evaluations"]:
        if e["stage"] == "ratio":
            assert [a if isinstance(a, int) else {"full": FULL, "reuse": -2}[a] for a in e["cache"]] == chosen


def test_min_quality_constraint_keeps_infeasible_schedules_off_the_front(tmp_path, backend):
    free = ScheduleSearch(_settings(tmp_path, run_id="free", generations=2), backend).run()
    qualities = sorted(e["quality"] for e in free["evaluations"] if e["cost"] < 1)
    floor = qualities[len(qualities) // 2]
    results = ScheduleSearch(_settings(tmp_path, run_id="floor", generations=2, min_quality=floor), backend).run()
    by_id = {e["id"]: e for e in results["evaluations"]}
    assert any(not e["feasible"] for e in results["evaluations"])
    assert all(by_id[i]["feasible"] and by_id[i]["quality"] >= floor for i in results["front"])


def test_time_cost_is_the_median_of_repeats_relative_to_the_baseline(tmp_path, backend):
    results = ScheduleSearch(_settings(tmp_path, cost="time", time_repeats=2, generations=1, population=4),
                             backend).run()
    assert len(results["baseline"]["times_s"]) == 2
    for e in results["evaluations"]:
        assert len(e["times_s"]) == 2 and e["cost"] == pytest.approx(e["time_rel"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(steps=1), "steps = 1"),
        (dict(mode="random"), "mode = 'random'"),
        (dict(method="none"), "method = 'none'"),
        (dict(mode="ratio"), "base_schedule is required"),
        (dict(quality="clip"), "quality = 'clip'"),
        (dict(cost="flops"), "cost = 'flops'"),
        (dict(population=2), "population = 2"),
        (dict(generations=0), "generations = 0"),
        (dict(samples=0), "samples = 0"),
        (dict(prompts=()), "prompts = ()"),
        (dict(prompts=("ok", " ")), "non-empty prompt"),
        (dict(ratio_levels=(0.0, 0.9)), "ratio_levels"),
        (dict(min_quality=float("nan")), "min_quality"),
        (dict(run_id="../escape"), "run_id"),
        (dict(fidelity_metric="lpips"), "fidelity_metric"),
    ],
)
def test_bad_settings_name_the_field_and_value(kwargs, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SearchSettings(**kwargs)


def test_settings_from_json_refuse_unknown_fields_and_round_trip():
    s = SearchSettings(steps=10, population=6, prompts=("a", "b"))
    assert SearchSettings.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    with pytest.raises(SettingsError, match="unknown field.*'populaton'"):
        SearchSettings.from_dict({"populaton": 8})
    with pytest.raises(SettingsError, match="prompts = 'a cat': expected a list"):
        SearchSettings.from_dict({"prompts": "a cat"})


def test_mismatches_with_the_model_or_an_existing_run_are_refused(tmp_path, backend):
    with pytest.raises(SettingsError, match="steps = 8 but the backend samples 5"):
        ScheduleSearch(_settings(tmp_path, steps=8), backend).run()
    with pytest.raises(SettingsError, match="needs decoded images"):
        ScheduleSearch(_settings(tmp_path, fidelity_metric="psnr"), backend).run()
    with pytest.raises(SettingsError, match="needs decoded images"):
        ScheduleSearch(_settings(tmp_path, quality="imagereward"), backend, scorer=None).run()
    ScheduleSearch(_settings(tmp_path, run_id="taken", generations=1, population=4), backend).run()
    with pytest.raises(SettingsError, match="already exists with other settings"):
        ScheduleSearch(_settings(tmp_path, run_id="taken", generations=1, population=5), backend).run()


def test_a_cancel_before_the_first_generation_leaves_a_clean_cancelled_run(tmp_path, backend):
    stop = threading.Event()
    stop.set()
    with pytest.raises(SearchCancelled):
        ScheduleSearch(_settings(tmp_path, run_id="early"), backend, cancel_event=stop).run()
    results = load_results(tmp_path / "early")
    assert results["status"] == "cancelled" and results["evaluations"] == [] and results["front"] == []
    # and the same run id then starts from scratch and finishes
    done = ScheduleSearch(_settings(tmp_path, run_id="early", generations=1, population=4), backend).run()
    assert done["status"] == "done"


def test_search_on_the_trained_fixture_uses_pixel_psnr(tmp_path):
    from dato.evaluation.backends import fixture_backend, fixture_prompts

    try:
        fx_backend = fixture_backend(steps=6)
    except (FileNotFoundError, ImportError) as exc:
        pytest.skip(f"trained fixture not available here: {exc}")
    from dato.evaluation.fixture import DEFAULT_CFG_SCALE

    assert fx_backend.cfg_scale == DEFAULT_CFG_SCALE and fx_backend.describe()["cfg_scale"] == DEFAULT_CFG_SCALE
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        settings = SearchSettings(steps=6, max_depth=1, population=6, generations=2, samples=2, seed=0,
                                  prompts=tuple(fixture_prompts()[:2]), seed_presets=False,
                                  results_dir=str(tmp_path), run_id="fixture")
        results = ScheduleSearch(settings, fx_backend).run()
    finally:
        torch.set_num_threads(threads)
    assert results["objectives"]["quality"]["name"] == "fidelity-psnr"
    by_id = {e["id"]: e for e in results["evaluations"]}
    front = [by_id[i] for i in results["front"]]
    assert min(f["cost"] for f in front) < 0.7 and max(f["quality"] for f in front) == 100.0


def test_a_checkpoint_pickled_before_the_restructure_still_loads(tmp_path):
    """Checkpoints name classes by module path; those written by dato.search.* must resume after the move."""
    import pickle

    from dato.generators.search.problem import SeedSchedule
    from dato.generators.search.results import load_pickle

    seed = SeedSchedule(name="balanced", origin="preset", genome=(1, 2, 3))
    blob = pickle.dumps({"seed": seed}, protocol=0)  # protocol 0 names modules as plain text lines
    old = blob.replace(b"dato.generators.search.problem", b"dato.search.problem")
    assert old != blob
    (tmp_path / "checkpoint.pkl").write_bytes(old)
    assert load_pickle(tmp_path / "checkpoint.pkl")["seed"] == seed
    with pytest.raises(ModuleNotFoundError):
        pickle.loads(old)  # plain pickle cannot: the module moved
