"""WebUI glue of sd-webui-dato: everything that imports ``modules.*`` lives in this package.

It is loaded by ``scripts/dato.py`` (the one file the WebUI executes) under
the name ``dato_webui``; the WebUI does not scan sub-folders of ``scripts/``.

Modules:

* ``runtime``  - patch lifecycle (process / process_before_every_sampling /
  on_cfg_denoiser / postprocess), stale-patch guard, Token Merging composition;
* ``ui``       - the accordion, preview, paste fields;
* ``api``      - ``/dato/v1`` routes and the txt2img/img2img argument check;
* ``store``    - where schedules live (presets, search results, user uploads);
* ``settings`` - Settings > DaTo acceleration (defaults only);
* ``xyz``      - X/Y/Z plot axes;
* ``search_tab`` (optional, added by the search work) - exposes ``on_ui_tabs()``
  and ``register(app)``; the entry script calls them when the module exists.
"""
