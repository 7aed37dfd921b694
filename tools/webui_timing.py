"""Time sd-webui-dato against the baseline and the DeepCache extension in a running WebUI.

Usage (a WebUI started with ``--api``, this extension installed; the DeepCache
extension, aria1th/sd-webui-deepcache-standalone, installed too for its rows)::

    python tools/webui_timing.py --url http://127.0.0.1:7861 --cases 256x20,512x10 --repeats 3 \
        --out docs/bench/webui-timing.json

Every request goes through ``POST /sdapi/v1/txt2img`` with the same prompt,
seed, sampler and CFG. The rows are interleaved (each repeat runs every row of
every case, in a rotated order) so that a change in the machine's load falls on
all rows alike; the table gives medians and the ratio to the baseline's median
of the same case, measured in the same run. Every request carries the
DeepCache extension's settings in ``override_settings`` (``disable`` for the
rows that are not DeepCache's), because a setting sent once would stay on for
later requests. The MACs column is the analytic speed-up of the UNet calls
(``dato.core.speed.expected_speedup`` on the SD1.x UNet, or SDXL's with ``--arch sdxl``), where this checkout's
``dato`` and the ldm package can be imported; wall time also holds text
encoding, the VAE decode and the WebUI's own work, which no row speeds up.

This is a tool for people with a WebUI, not a test: it asserts nothing about
speed. Only the standard library is needed to run it.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a photograph of a red fox in the snow"
DEEPCACHE_OFF = {"deepcache_enable_pass": "disable"}
_COSTS: dict = {}  # the UNet cost model per architecture, traced once


def deepcache_every(interval: int) -> dict:
    """The DeepCache extension's settings for "refresh every ``interval``" from the first step, level 0."""
    return {"deepcache_enable_pass": "both passes", "deepcache_cache_resnet_level": 0,
            "deepcache_cache_enable_step_percentage": 0.0, "deepcache_full_run_step_rate": interval}


@dataclass
class Row:
    """One configuration to time: our script's named arguments and the DeepCache settings it runs with."""

    label: str
    dato: dict | None = None
    deepcache: dict = field(default_factory=lambda: dict(DEEPCACHE_OFF))

    def payload(self, width: int, height: int, steps: int) -> dict:
        body = {"prompt": PROMPT, "negative_prompt": "", "seed": 1234, "sampler_name": "Euler", "cfg_scale": 7,
                "steps": steps, "width": width, "height": height, "batch_size": 1, "n_iter": 1,
                "override_settings": dict(self.deepcache), "override_settings_restore_afterwards": True,
                "send_images": True, "save_images": False}
        body["alwayson_scripts"] = {"dato": {"args": [self.dato if self.dato else {"enabled": False}]}}
        return body


def default_rows(targets: list[float]) -> list[Row]:
    """Baseline, DeepCache every 5, each preset with the accordion's default token settings, and speed targets."""
    rows = [Row("baseline"), Row("DeepCache extension, every 5", deepcache=deepcache_every(5))]
    for preset in ("quality", "balanced", "fast"):
        rows.append(Row(f"dato `{preset}`", {"enabled": True, "schedule": preset}))
    for target in targets:
        rows.append(Row(f"dato speed target {target:g}x", {"enabled": True, "speed_target": target}))
    return rows


def post(url: str, route: str, body: dict, timeout: float) -> dict:
    request = urllib.request.Request(url + route, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"error: {route} answered HTTP {exc.code}: {exc.read()[:500]!r}") from None


def expected_macs(row: Row, width: int, height: int, steps: int, arch: str = "sd15") -> float | None:
    """Analytic MACs speed-up of our rows (None for the baseline's peers or when dato/ldm cannot be imported)."""
    if row.dato is None:
        return 1.0 if row.label == "baseline" else None
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # this checkout's dato, without installing it
    try:
        from dato.core.arguments import DatoArgs
        from dato.core.plan import Geometry, HostFacts, plan_run
        from dato.core.schedule import load_schedule
        from dato.evaluation.costs import architecture_cost
    except ImportError:
        return None
    cost = _COSTS.get(arch) or _COSTS.setdefault(arch, architecture_cost(arch))
    # the run's planner with this request's geometry (Euler, txt2img) and the WebUI's call-counting clock
    plan = plan_run(DatoArgs.from_args([row.dato]), Geometry(steps=steps, width=width, height=height),
                    HostFacts(cost, clock="webui"), load_schedule)
    return plan.first.speedup if plan.first is not None and plan.first.off is None else None


def time_one(url: str, row: Row, case: tuple[int, int, int], timeout: float) -> tuple[float, str]:
    width, height, steps = case
    start = time.perf_counter()
    answer = post(url, "/sdapi/v1/txt2img", row.payload(width, height, steps), timeout)
    seconds = time.perf_counter() - start
    info = json.loads(answer.get("info") or "{}")
    infotext = (info.get("infotexts") or [""])[0]
    return seconds, infotext


def applied(row: Row, infotext: str) -> bool:
    """Whether our row ran accelerated (a speed target the step count cannot reach runs unaccelerated)."""
    return row.dato is None or ("DaTo: True" in infotext and "DaTo off" not in infotext)


def parse_cases(text: str) -> list[tuple[int, int, int]]:
    cases = []
    for item in text.split(","):
        try:
            size, steps = item.lower().split("x")
            cases.append((int(size), int(size), int(steps)))
        except ValueError:
            raise SystemExit(f"error: --cases: {item!r} is not SIZExSTEPS (e.g. 256x20)") from None
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:7861")
    parser.add_argument("--cases", default="256x20,512x10", help="SIZExSTEPS, comma-separated (square images)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--targets", default="4,8", help="speed targets to time, comma-separated")
    parser.add_argument("--arch", choices=("sd15", "sdxl"), default="sd15",
                        help="the loaded checkpoint's architecture, for the MACs column")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--out", type=Path, default=None, help="write the raw times and the table as JSON")
    args = parser.parse_args(argv)
    cases = parse_cases(args.cases)
    rows = default_rows([float(t) for t in args.targets.split(",") if t])
    url = args.url.rstrip("/")

    post(url, "/sdapi/v1/options", {"cross_attention_optimization": "sdp - scaled dot product"}, args.timeout)
    print(f"warm-up: one 64 px, 10-step request per row; then {args.repeats} x {len(cases)} cases x {len(rows)} rows",
          flush=True)
    for row in rows:
        time_one(url, row, (64, 64, 10), args.timeout)

    times: dict[tuple[int, str], list[float]] = {}
    infotexts: dict[tuple[int, str], str] = {}
    for repeat in range(args.repeats):
        for c, case in enumerate(cases):
            shift = (repeat + c) % len(rows)
            for row in rows[shift:] + rows[:shift]:
                seconds, infotext = time_one(url, row, case, args.timeout)
                times.setdefault((c, row.label), []).append(seconds)
                infotexts[(c, row.label)] = infotext
                note = "" if applied(row, infotext) else "  (not applied: unaccelerated, see the WebUI console)"
                print(f"  repeat {repeat + 1} {case[0]}px/{case[2]} steps  {row.label:32s} {seconds:7.1f} s{note}",
                      flush=True)

    table, records = ["| case | row | median s | speed-up (wall) | MACs |", "|---|---|---|---|---|"], []
    for c, (width, height, steps) in enumerate(cases):
        base = statistics.median(times[(c, "baseline")])
        for row in rows:
            median = statistics.median(times[(c, row.label)])
            ran = applied(row, infotexts[(c, row.label)])
            macs = expected_macs(row, width, height, steps, args.arch) if ran else None
            label = row.label if ran else f"{row.label} (not applied: unreachable or refused, ran unaccelerated)"
            table.append(f"| {width} px / {steps} steps | {label} | {median:.1f} | {base / median:.2f}x | "
                         f"{f'{macs:.2f}x' if macs else '—'} |")
            records.append({"width": width, "height": height, "steps": steps, "row": row.label, "dato": row.dato,
                            "deepcache": row.deepcache, "seconds": times[(c, row.label)], "median_s": median,
                            "speedup_wall": base / median, "speedup_macs": macs, "applied": ran,
                            "infotext": infotexts[(c, row.label)]})
    print("\n".join(table))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        command = " ".join(["python", "tools/webui_timing.py", *(argv if argv is not None else sys.argv[1:])])
        report = {"command": command, "machine": f"{platform.machine()} {platform.processor()}", "prompt": PROMPT,
                  "rows": records, "table": table}
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
