"""Stand-in for ``modules/ui_common.py`` (v1.10.1): ``create_refresh_button``."""

import gradio as gr
from modules.ui_components import ToolButton

refresh_symbol = '\U0001f504'


def create_refresh_button(refresh_component, refresh_method, refreshed_args, elem_id):
    def refresh():
        refresh_method()
        args = refreshed_args() if callable(refreshed_args) else refreshed_args
        return gr.update(**(args or {}))

    button = ToolButton(value=refresh_symbol, elem_id=elem_id)
    button.click(fn=refresh, inputs=[], outputs=[refresh_component])
    return button
