"""tools/webui_timing.py: what it sends to a WebUI and how it prices its rows (no WebUI needed)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from dato.core.arguments import DatoArgs

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("webui_timing", ROOT / "tools" / "webui_timing.py")
timing = importlib.util.module_from_spec(spec)
sys.modules["webui_timing"] = timing  # its dataclasses look their module up
spec.loader.exec_module(timing)


def test_every_request_carries_the_deepcache_setting_so_nothing_leaks_into_the_next():
    rows = timing.default_rows([4, 8])
    assert [r.label for r in rows] == ["baseline", "DeepCache extension, every 5", "dato `quality`",
                                       "dato `balanced`", "dato `fast`", "dato speed target 4x",
                                       "dato speed target 8x"]
    for row in rows:
        body = row.payload(256, 256, 20)
        assert body["override_settings"]["deepcache_enable_pass"] == ("both passes" if "DeepCache" in row.label
                                                                      else "disable")
        assert body["override_settings_restore_afterwards"] is True
        args = DatoArgs.from_args(body["alwayson_scripts"]["dato"]["args"])  # what the extension will read
        assert args.enabled == (row.dato is not None)
        assert (body["seed"], body["sampler_name"], body["cfg_scale"], body["steps"]) == (1234, "Euler", 7, 20)


def test_the_macs_column_is_the_accordions_expected_speedup():
    rows = {r.label: r for r in timing.default_rows([4])}
    assert timing.expected_macs(rows["baseline"], 512, 512, 20) == 1.0
    assert timing.expected_macs(rows["DeepCache extension, every 5"], 512, 512, 20) is None
    fast = timing.expected_macs(rows["dato `fast`"], 512, 512, 10)
    assert fast == pytest.approx(8.19, abs=0.01)  # `fast` with the accordion's default prune 0.4
    assert timing.expected_macs(rows["dato speed target 4x"], 512, 512, 20) >= 4
    assert timing.expected_macs(rows["dato `fast`"], 1024, 1024, 10, "sdxl") != fast


@pytest.mark.parametrize("text", ["256", "256x", "x20", "256x20,abc"])
def test_bad_cases_are_one_line(text):
    with pytest.raises(SystemExit, match=r"error: --cases: .* is not SIZExSTEPS"):
        timing.parse_cases(text)
    assert timing.parse_cases("256x20,512x10") == [(256, 256, 20), (512, 512, 10)]


def test_a_row_the_extension_did_not_apply_is_marked_not_dropped():
    rows = {r.label: r for r in timing.default_rows([8])}
    target, baseline = rows["dato speed target 8x"], rows["baseline"]
    assert timing.applied(target, "Steps: 8, DaTo: True, DaTo speed target: 8.0")
    assert not timing.applied(target, "Steps: 8, Sampler: Euler")  # unreachable at this step count: unaccelerated
    assert not timing.applied(target, "DaTo: True, DaTo off: the DeepCache extension")
    assert timing.applied(baseline, "Steps: 8, Sampler: Euler")
