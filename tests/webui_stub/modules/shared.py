"""Stand-in for ``modules/shared.py`` (v1.10.1): ``opts``, ``state``, ``sd_model`` and the option helpers."""

from types import SimpleNamespace

from modules import options, shared_state

OptionInfo = options.OptionInfo
OptionHTML = options.OptionHTML
options_section = options.options_section

cmd_opts = SimpleNamespace(api=True, no_prompt_history=True, hide_ui_dir_config=False, freeze_settings=False)
demo = None
sd_model = None
state = shared_state.State()


def default_options() -> options.Options:
    """The few built-in settings the processing stand-in reads (names as in ``shared_options.py``)."""
    return options.Options({
        "token_merging_ratio": OptionInfo(0.0, "Token merging ratio"),
        "token_merging_ratio_img2img": OptionInfo(0.0, "Token merging ratio for img2img"),
        "token_merging_ratio_hr": OptionInfo(0.0, "Token merging ratio for high-res pass"),
        "batch_cond_uncond": OptionInfo(True, "Batch cond/uncond"),
        "img2img_fix_steps": OptionInfo(False, "With img2img, do exactly the amount of steps the slider specifies"),
        "infotext_skip_pasting": OptionInfo([], "Disregard fields from pasted infotext"),
    })


opts = default_options()
