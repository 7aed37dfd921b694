"""A search with the ImageReward objective in a real AUTOMATIC1111 WebUI, through ``POST /dato/v1/search``.

Opt-in twice: a real WebUI (see conftest.py) and ``WEBUI_IMAGEREWARD=1``, set once ImageReward is
where the README says it goes, for the user the WebUI runs as:

* the package: ``install.py`` puts ``image-reward==1.5`` and ``fairscale`` into ``<extension>/deps``
  (under ``--skip-install`` run it by hand: ``cd WEBUI_DIR && PYTHONPATH=. venv/bin/python
  extensions/sd-webui-dato/install.py``);
* the files: ``~/.cache/ImageReward/{ImageReward.pt, med_config.json, bert-base-uncased/vocab.txt}``
  (without a download, ``tests/imagereward_env/release_files.py ~/.cache/ImageReward --deps
  <extension>/deps`` writes random weights in the release's format).

The checkpoint goes through the WebUI's own restricted ``torch.load`` (``modules/safe.py``), because
the search runs inside the WebUI process. ``imagereward_fallback: error`` makes a missing piece fail
the search with its message instead of falling back to fidelity.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import pytest

requests = pytest.importorskip("requests")

TIMEOUT = float(os.environ.get("WEBUI_TIMEOUT", "1800"))
PREFIX = "/dato/v1/search"

pytestmark = pytest.mark.skipif(os.environ.get("WEBUI_IMAGEREWARD") != "1",
                                reason="set WEBUI_IMAGEREWARD=1 once ImageReward is installed in the WebUI "
                                       "(see this module's docstring)")

REQUEST = {"steps": 4, "width": 64, "height": 64, "sampler_name": "Euler", "cfg_scale": 7.0, "samples": 1,
           "population": 4, "generations": 1, "max_depth": 1, "seed": 0,
           "prompts": ["a photograph of a red fox in the snow", "a lighthouse at dusk"],
           "quality": "imagereward", "imagereward_fallback": "error", "cost": "macs"}


def test_a_search_scores_with_the_real_imagereward_inside_the_webui(webui):
    run_id = f"test-imagereward-{int(time.time())}"
    start = time.perf_counter()
    answer = requests.post(webui + PREFIX, json={**REQUEST, "run_id": run_id}, timeout=120)
    assert answer.status_code == 202, answer.text
    deadline, seen = time.monotonic() + TIMEOUT, []
    while True:
        st = requests.get(f"{webui}{PREFIX}/{run_id}", timeout=60).json()
        line = f"{st['state']} | {st.get('message')}"
        if not seen or seen[-1] != line:
            seen.append(line)
        if not st["running"]:
            break
        assert time.monotonic() < deadline, "\n".join(seen)
        time.sleep(2)
    seconds = time.perf_counter() - start
    assert st["state"] == "done" and st["error"] is None, "\n".join(seen)
    results = requests.get(f"{webui}{PREFIX}/{run_id}/results", timeout=60).json()
    quality = results["objectives"]["quality"]
    assert quality["name"] == "imagereward" and not results["objectives"].get("quality_note"), quality
    rewards = [e["details"]["imagereward"] for e in results["evaluations"]]
    assert len(rewards) >= 4 and all(math.isfinite(r) for r in rewards)
    assert len({round(r, 6) for r in rewards}) > 1, "different schedules' images get different rewards"
    assert results["front"] and st["results_path"]
    front = [{k: p[k] for k in ("preview", "quality", "cost")} for p in results["front_points"]]
    print(f"\n[imagereward] POST {PREFIX} {json.dumps({**REQUEST, 'run_id': run_id})}\n"
          f"  done in {seconds:.0f} s ({len(rewards)} evaluations); front: {json.dumps(front)}")
    if Path(st["results_path"]).is_file():
        assert json.loads(Path(st["results_path"]).read_text())["front"] == results["front"]
        shutil.rmtree(Path(st["results_path"]).parent, ignore_errors=True)
