"""Stand-in for the WebUI's ``modules`` package (v1.10.1); see ``tests/webui_stub/__init__.py``."""
