"""The accordion, built by the real gradio 3.41.2 inside the stand-in WebUI: order, defaults, paste, preview."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import gradio as gr
import pytest
import webui_stub.harness as harness  # first: puts the stand-in `modules` on sys.path
from modules import errors, scripts, shared

import dato
from dato.core.arguments import ARG_NAMES, DatoArgs

pytest_plugins = ["webui_stub.harness"]  # the host and model fixtures


def dato_script(host, tab="txt2img"):
    return host.script(tab)


def values_after_paste(script, updates):
    """Apply paste updates to the script's controls' current values (as the browser would)."""
    values = []
    for control, update in zip(script.controls, updates[script.args_from - 1:script.args_to - 1], strict=True):
        values.append(update["value"] if "value" in update else control.value)
    return values


def test_gradio_is_the_webui_version():
    assert gr.__version__ == "3.41.2"


def test_controls_come_in_api_order_on_both_tabs(host):
    for tab in ("txt2img", "img2img"):
        script = dato_script(host, tab)
        ids = [c.elem_id for c in script.controls]
        assert ids[0] == f"script_{tab}_dato_enabled-checkbox"  # the InputAccordion's checkbox
        assert [i.removeprefix(f"script_{tab}_dato_") for i in ids[1:]] == list(ARG_NAMES[1:])
        assert script.args_to - script.args_from == len(ARG_NAMES)
        assert script.section == "accordions" and script.alwayson


def test_ui_values_are_the_defaults_and_the_api_defaults_match(host):
    script = dato_script(host)
    ui_values = [c.value for c in script.controls]
    assert DatoArgs.from_args(ui_values) == DatoArgs()
    api_defaults = host.default_args["txt2img"][script.args_from:script.args_to]
    assert api_defaults == ui_values


def test_settings_change_the_defaults_everywhere(model, tmp_path):
    saved = {"dato_default_method": "merge", "dato_default_ratio": 0.3, "dato_default_schedule": "fast"}
    h = harness.fresh_host(model, user_dir=tmp_path, settings=saved)
    script = dato_script(h)
    expected = DatoArgs(method="merge", ratio=0.3, schedule="fast", hr_method="merge", hr_ratio=0.3,
                        hr_schedule="fast")
    assert DatoArgs.from_args([c.value for c in script.controls]) == expected
    assert DatoArgs.from_args(h.default_args["txt2img"][script.args_from:script.args_to]) == expected


def test_a_broken_setting_falls_back_to_the_builtin_default(model, tmp_path):
    saved = {"dato_default_ratio": 7, "dato_default_schedule": "gone"}
    h = harness.fresh_host(model, user_dir=tmp_path, settings=saved)
    values = DatoArgs.from_args([c.value for c in dato_script(h).controls])
    assert values.ratio == 0.4 and values.schedule == "uniform"  # unknown schedule: the first choice


def test_api_positional_example_reaches_the_script_in_that_order(host, monkeypatch):
    seen = []
    script = dato_script(host)
    monkeypatch.setattr(type(script), "process", lambda self, p, *args: seen.append(args))
    host.generate(alwayson_scripts={"DaTo": {"args": [True, "merge", 0.3, "uniform", 2, 1]}}, steps=2)
    assert DatoArgs.from_args(list(seen[0])) == DatoArgs(enabled=True, method="merge", ratio=0.3,
                                                         schedule="uniform", interval=2, depth=1)


def test_calling_ui_again_for_api_defaults_has_no_side_effects(host):
    script = dato_script(host)
    dependencies = len(host.blocks["txt2img"].dependencies)
    with gr.Blocks() as throwaway:
        again = script.ui(False)
    assert [c.value for c in again] == [c.value for c in script.controls]
    assert len(host.blocks["txt2img"].dependencies) == dependencies
    assert throwaway.dependencies == [] or all(not d["inputs"] for d in throwaway.dependencies)


def test_schedule_dropdown_lists_rules_presets_and_user_schedules(model, tmp_path):
    import dato

    dato.Schedule.uniform(10, 2, 0, name="my-own").save(tmp_path / "my-own.json")
    h = harness.fresh_host(model, user_dir=tmp_path)
    choices = dato_script(h).controls[ARG_NAMES.index("schedule")].choices
    assert choices[:2] == ["uniform", "none"] and "balanced" in choices and choices[-1] == "my-own"


def test_hires_controls_exist_but_are_hidden_on_img2img(host):
    hr_mode = dato_script(host, "img2img").controls[ARG_NAMES.index("hr_mode")]
    group = hr_mode.parent
    while group is not None and not isinstance(group, gr.Group):
        group = group.parent
    assert group is not None and group.visible is False


def test_every_control_has_a_hint(host):
    for control in dato_script(host).controls[1:]:
        assert getattr(control, "info", None), control.elem_id


def test_infotext_round_trip_through_the_paste_fields(host):
    args = [True, "merge", 0.35, "uniform", 3, 1, 2, "own", "schedule", 0.4, "fast", 3, 0]
    result = host.generate(alwayson_scripts={"dato": {"args": args}}, steps=6, enable_hr=True,
                           hr_second_pass_steps=3)
    infotext = result.infotexts[0]
    assert "DaTo: True, DaTo method: merge, DaTo ratio: 0.35, DaTo schedule: uniform" in infotext
    script = dato_script(host)
    assert script.paste_field_names == [f for _, f in script.infotext_fields]
    restored = values_after_paste(script, host.paste(infotext))
    assert DatoArgs.from_args(restored) == DatoArgs.from_args(args)


def test_paste_of_an_image_without_dato_switches_it_off_and_leaves_the_rest(host):
    script = dato_script(host)
    updates = host.paste("a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512")
    mine = updates[script.args_from - 1:script.args_to - 1]
    assert mine[0]["value"] is False and all("value" not in u for u in mine[1:])


def test_paste_warns_when_a_schedule_changed(host, capsys):
    import dato

    infotext = ("x\nSteps: 20, Sampler: Euler, Seed: 1, DaTo: True, DaTo method: prune, DaTo ratio: 0.4, "
                "DaTo schedule: balanced, DaTo schedule hash: 0000000000")
    host.paste(infotext)
    assert "'balanced' has changed since this image was made" in capsys.readouterr().out
    assert dato.load_schedule("balanced").content_hash() != "0000000000"


def test_preview_follows_the_steps_the_page_forwards(host):
    from dato_webui import ui

    values = dict(zip(ARG_NAMES[1:], DatoArgs().to_args()[1:], strict=True))
    data = ui.preview_data(values, {"steps": 12}, is_img2img=False)
    assert [p["preview"] for p in data["passes"]] == ["F0000F0000F0"]
    data = ui.preview_data({**values, "hr_mode": "own", "hr_schedule": "none", "hr_method": "merge"},
                           {"steps": 12, "enable_hr": True, "hr_second_pass_steps": 4}, is_img2img=False)
    assert data["passes"][1]["preview"] == "FFFF" and data["passes"][1]["method"] == "merge"
    img2img = ui.preview_data(values, {"steps": 20, "denoising_strength": 0.5}, is_img2img=True)
    assert img2img["passes"][0]["steps"] == 11  # int(0.5 * 20) + 1, as setup_img2img_steps
    raw = json.dumps({"steps": 10, "n": 3})
    html = ui.preview_html(values, raw, False)
    assert 'class="dato-preview"' in html and "F0000F0000" in html
    payload = json.loads(__import__("html").unescape(html.split('data-dato="')[1].split('"')[0]))
    assert payload["context"] == raw  # echoed, so the page can tell a lost update from a stale one


def test_preview_shows_the_expected_speedup_at_the_current_step_count(host, monkeypatch):
    from dato_webui import ui

    from dato.core.clock import PassClock
    from dato.core.speed import expected_speedup
    from dato.evaluation.costs import unet_cost

    values = dict(zip(ARG_NAMES[1:], DatoArgs(schedule="fast", method="schedule").to_args()[1:], strict=True))
    loaded = unet_cost(shared.sd_model.model.diffusion_model)  # priced on the loaded (tiny) UNet, shapes only
    for steps in (10, 11):
        expected = expected_speedup(loaded, dato.load_schedule("fast"), 64, 64, clock=PassClock.counting_calls(steps))
        assert ui.preview_data(values, {"steps": steps}, is_img2img=False)["passes"][0]["speedup"] == \
            round(expected, 2)
    with monkeypatch.context() as no_model:  # before a model is loaded: the SD1.5 UNet's figures
        no_model.setattr(shared, "sd_model", None)
        assert ui.preview_data(values, {"steps": 10}, is_img2img=False)["passes"][0]["speedup"] == 8.42
        assert ui.preview_data(values, {"steps": 11}, is_img2img=False)["passes"][0]["speedup"] == 5.29
        assert "about 8.42x faster in MACs" in ui.preview_html(values, json.dumps({"steps": 10}), False)
    targeted = dict(zip(ARG_NAMES[1:], DatoArgs(speed_target=3).to_args()[1:], strict=True))
    for steps in (8, 10, 20, 30):
        first = ui.preview_data(targeted, {"steps": steps}, is_img2img=False)["passes"][0]
        assert first["name"] == "target-3x" and first["speedup"] >= 3 and first["steps"] == steps
    too_far = dict(zip(ARG_NAMES[1:], DatoArgs(speed_target=60).to_args()[1:], strict=True))
    html = ui.preview_html(too_far, json.dumps({"steps": 8}), False)
    assert "dato-preview-error" not in html and "off (speed target 60x unreachable at 8 steps; nearest " in html


def test_preview_of_adaptive_caching_prices_the_most_it_can_cache(host):
    from dato_webui import ui

    values = dict(zip(ARG_NAMES[1:], DatoArgs(method="none", adaptive=0.2, adaptive_cap=4).to_args()[1:], strict=True))
    first = ui.preview_data(values, {"steps": 20}, is_img2img=False)["passes"][0]
    assert first["adaptive"] == {"threshold": 0.2, "cap": 4}
    every5 = dict(zip(ARG_NAMES[1:], DatoArgs(method="none", schedule="uniform", interval=5).to_args()[1:],
                      strict=True))
    assert first["speedup"] == ui.preview_data(every5, {"steps": 20}, is_img2img=False)["passes"][0]["speedup"]
    html = ui.preview_html(values, json.dumps({"steps": 20}), False)
    assert "adaptive caching, threshold 0.2, at most 4 cached in a row: at most about" in html
    assert "decided during the run" in html


def test_preview_explains_invalid_combinations(host):
    from dato_webui import ui

    values = dict(zip(ARG_NAMES[1:], DatoArgs(ratio=0.75).to_args()[1:], strict=True))
    html = ui.preview_html(values, "{}", False)
    assert "dato-preview-error" in html and "too large for &#x27;prune&#x27;" in html


def test_preview_updates_are_wired_to_every_control(host):
    script = dato_script(host)
    blocks = host.blocks["txt2img"]
    preview = next(b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == "script_txt2img_dato_preview")
    triggers = {d["targets"][0][0] if isinstance(d["targets"][0], tuple) else d["targets"][0]
                for d in blocks.dependencies if preview._id in d["outputs"]}
    for control in script.controls[1:]:
        assert control._id in triggers, control.elem_id


def test_script_loads_as_the_webui_loads_it(host):
    data = next(d for d in scripts.scripts_data if d.script_class.__name__ == "DatoScript")
    assert data.module.__name__ == "dato_script.py"  # script_loading names the module after the file
    assert "dato_webui" not in data.module.__name__ and errors.reported == []
    glue = sys.modules["dato_webui"]
    assert Path(glue.__file__).parent == harness.ROOT / "scripts" / "dato_webui"
    assert str(harness.ROOT / "scripts") not in sys.path, "sys.path is as the WebUI left it"


def test_the_entry_script_loads_its_own_glue_over_another_checkouts(model, tmp_path):
    """A ``dato_webui`` of another copy of the extension, imported first, is replaced by this one's."""
    other = types.ModuleType("dato_webui")
    other.__file__ = str(tmp_path / "elsewhere" / "dato_webui" / "__init__.py")
    sys.modules["dato_webui"] = other
    harness.fresh_host(model, build_ui=False, user_dir=tmp_path / "user")
    assert sys.modules["dato_webui"] is not other and errors.reported == []
    assert Path(sys.modules["dato_webui"].__file__).parent == harness.ROOT / "scripts" / "dato_webui"
    assert sys.modules["dato_webui.runtime"].RUNTIME is harness.runtime()


def test_the_accordions_ui_config_keys_keep_the_entry_scripts_old_name(host):
    """The WebUI keys script controls in ui-config.json by file name (``customscript/<file>/...``); the accordion's
    saved defaults were keyed under ``dato.py`` before the entry script became ``dato_script.py``."""
    assert {c.custom_script_source for c in dato_script(host).controls} == {"dato_script.py"}  # as labelled
    from modules import script_callbacks

    tabs = script_callbacks.ui_tabs_callback()  # after txt2img/img2img, before the WebUI reads the keys
    assert [t[2] for t in tabs] == ["dato_search"]
    for tab in ("txt2img", "img2img"):
        assert {c.custom_script_source for c in dato_script(host, tab).controls} == {"dato.py"}


def test_script_reload_takes_the_patch_off(host, model):
    import dato

    dato.apply_patch(model, "balanced", clock="manual")
    rt = harness.runtime()
    rt._unet_ref = __import__("weakref").ref(dato.find_unet(model))
    rt._patch = dato.get_patch(model)
    from modules import script_callbacks

    script_callbacks.script_unloaded_callback()
    assert dato.get_patch(model) is None


@pytest.mark.parametrize("tab", ["txt2img", "img2img"])
def test_hidden_context_box_exists_for_the_page_script(host, tab):
    blocks = host.blocks[tab]
    ids = {getattr(b, "elem_id", None) for b in blocks.blocks.values()}
    assert f"script_{tab}_dato_context" in ids and f"script_{tab}_dato_preview" in ids
