"""WebUI glue of sd-webui-dato: everything that imports ``modules.*`` lives in this package.

It is loaded by ``scripts/dato_script.py`` (the one file the WebUI executes)
under the name ``dato_webui``; the WebUI does not scan sub-folders of ``scripts/``.

The accordion (txt2img and img2img):

* ``runtime``  - patch lifecycle (process / process_before_every_sampling /
  on_cfg_denoiser / postprocess), stale-patch guard, Token Merging composition;
* ``ui``       - the accordion, its step preview, paste fields;
* ``api``      - ``/dato/v1/args`` and ``/dato/v1/schedules`` routes, the txt2img/img2img argument check;
* ``store``    - where schedules live (presets, search results, user uploads) and the generators' files;
* ``settings`` - Settings > DaTo acceleration (defaults only);
* ``xyz``      - X/Y/Z plot axes;
* ``deps``     - the optional ``deps/`` folder (ImageReward) on ``sys.path``.

The Search tab and its three generators, each split by surface (``*_jobs``: requests, jobs and
results; ``*_routes``: the HTTP routes; ``*_ui``: the tab or its section):

* ``search_jobs``, ``search_routes``, ``search_ui`` - NSGA-II schedule search (``search_ui`` is the tab);
* ``calibration_jobs``, ``calibration_routes``, ``calibration_ui`` - SmoothCache-style calibration;
* ``gates_jobs``, ``gates_routes``, ``gates_ui`` - DiP-GO-style gradient gates;
* ``backend``  - the live model: images through the WebUI's processing, the step clock, the gate
  training's backend and queue turn, host checks, MACs;
* ``requests`` - the one request validation and JSON answering of every route;
* ``jobs``     - the registry of a kind of background job (one at a time);
* ``widgets``  - Gradio pieces the tab's sections share.
"""
