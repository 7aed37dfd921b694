"""javascript/dato.js draws the preview Python computed; run its pure functions under node when available."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")

HARNESS = r"""
const fs = require("fs");
const vm = require("vm");
const sent = [];
const context = {console: console, JSON: JSON, Math: Math, String: String, parseFloat: parseFloat, Object: Object,
                 Date: Date, updateInput: (el) => sent.push(el.value)};
vm.createContext(context);
vm.runInContext(fs.readFileSync(process.argv[2], "utf8"), context);
const data = JSON.parse(process.argv[3]);
const fields = {
  "#txt2img_steps input[type=number]": {type: "number", value: "25"},
  "#txt2img_hr-checkbox input[type=checkbox]": {type: "checkbox", checked: true},
  "#txt2img_hires_steps input[type=number]": {type: "number", value: "0"},
  "#txt2img_sampling input": {type: "text", value: "Heun"},
};
const box = {value: ""};
const preview = {getAttribute: () => JSON.stringify({passes: [], context: "stale"})};
fields["#script_txt2img_dato_context textarea"] = box;
fields["#script_txt2img_dato_preview [data-dato]"] = preview;
const root = {querySelector: (s) => fields[s] || null};
context.datoForwardContext(root, "txt2img");
context.datoForwardContext(root, "txt2img");  // unchanged: not sent again
const afterForward = sent.slice();
context.datoResendLostContext(root);  // the preview shows another context: send again, as a new value
console.log(JSON.stringify({
  forwarded: afterForward, resent: sent.slice(afterForward.length),
  html: context.datoPreviewHtml(data),
  summary: context.datoSummaryText(data),
  context: context.datoReadContext(root, "txt2img"),
  img2img: context.datoReadContext(root, "img2img"),
}));
"""


#: what the harness page holds, as the context the script forwards (named as the API's request fields)
PAGE = {"steps": 25, "hr_second_pass_steps": 0, "enable_hr": True, "sampler_name": "Heun"}


def run(data, tmp_path):
    script = tmp_path / "dato_js_harness.js"
    script.write_text(HARNESS)
    out = subprocess.run([NODE, str(script), str(ROOT / "javascript" / "dato.js"), json.dumps(data)],
                         capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def test_cells_follow_the_python_preview(tmp_path):
    import dato
    from dato.core.plan import pass_summary

    summary = pass_summary(dato.load_schedule("balanced"), 10)
    summary.update(label="steps", name="balanced")
    result = run({"passes": [summary, {"label": "hires pass", "steps": 4, "off": True}]}, tmp_path)
    html = result["html"].split('class="dato-legend"')[0]
    assert html.count('class="dato-cell dato-full"') == 2
    assert html.count('class="dato-cell dato-cached dato-depth-0"') == 8
    assert html.count('class="dato-ratio"') == 10 and "height:53%" in html  # 0.4 / 0.75
    assert "hires pass · 4 steps · <span class=\"dato-off\">off</span>" in html
    assert result["summary"] == "balanced · 2/10 full · prune 0.40"


def test_reuse_and_caching_only_passes(tmp_path):
    result = run({"passes": [{"label": "steps", "name": "x", "steps": 3, "method": "none", "cache": [-1, -2, 3],
                              "ratio": [0, 0, 0], "full": 1, "cached": 2}]}, tmp_path)
    cells = result["html"].split('class="dato-legend"')[0]
    assert "dato-reuse" in cells and "dato-depth-3" in cells
    assert "dato-ratio\"" not in cells and result["summary"] == "x · 1/3 full"


def test_context_read_from_the_page_and_forwarded_once(tmp_path):
    result = run({"passes": []}, tmp_path)
    assert result["context"] == {"steps": 25, "hr_second_pass_steps": 0, "enable_hr": True, "sampler_name": "Heun"}
    assert result["img2img"] == {}
    (sent,) = result["forwarded"]
    assert json.loads(sent) == {**PAGE, "n": 1}


def test_a_lost_update_is_sent_again_as_a_new_value(tmp_path):
    result = run({"passes": []}, tmp_path)
    (resent,) = result["resent"]
    assert json.loads(resent) == {**PAGE, "n": 2}
