"""A test-only WebUI extension: counts the forward calls of the loaded UNet, so the opt-in suite can see that
planning a pass runs no forward of its own (``tests/webui_real/test_real_planner.py``).

Install it beside sd-webui-dato for the suite only (``ln -s <checkout>/tests/webui_real/probe_extension
<webui>/extensions/dato-test-probe``) and restart the WebUI; it adds two routes and nothing else:
``GET /dato-test-probe/v1/unet-calls`` and ``POST /dato-test-probe/v1/reset``.
"""

from modules import script_callbacks, shared

COUNT = {"calls": 0}
_HOOKED: list = []  # (unet, handle)


def _count(module, args, kwargs):
    COUNT["calls"] += 1


def _hook(sd_model=None) -> None:
    model = sd_model if sd_model is not None else shared.sd_model
    unet = getattr(getattr(model, "model", None), "diffusion_model", None)
    if unet is None or any(u is unet for u, _ in _HOOKED):
        return
    for _, handle in _HOOKED:
        handle.remove()
    _HOOKED[:] = [(unet, unet.register_forward_pre_hook(_count, with_kwargs=True))]


def _routes(demo, app):
    @app.get("/dato-test-probe/v1/unet-calls")
    def calls():
        _hook()
        return dict(COUNT)

    @app.post("/dato-test-probe/v1/reset")
    def reset():
        _hook()
        COUNT["calls"] = 0
        return dict(COUNT)


script_callbacks.on_model_loaded(_hook, name="dato_test_probe_hook")
script_callbacks.on_app_started(_routes, name="dato_test_probe_routes")
