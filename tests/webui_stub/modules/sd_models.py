"""Stand-in for ``modules/sd_models.py`` (v1.10.1): ``apply_token_merging`` (real tomesd), model reload hook."""

import tomesd
from modules import script_callbacks, shared


def apply_token_merging(sd_model, token_merging_ratio):
    current_token_merging_ratio = getattr(sd_model, 'applied_token_merged_ratio', 0)
    if current_token_merging_ratio == token_merging_ratio:
        return
    if current_token_merging_ratio > 0:
        tomesd.remove_patch(sd_model)
    if token_merging_ratio > 0:
        tomesd.apply_patch(sd_model, ratio=token_merging_ratio, use_rand=False, merge_attn=True,
                           merge_crossattn=False, merge_mlp=False)
    sd_model.applied_token_merged_ratio = token_merging_ratio


def load_model(sd_model):
    """What ``reload_model_weights`` ends with for a new checkpoint: it becomes ``shared.sd_model``."""
    shared.sd_model = sd_model
    script_callbacks.model_loaded_callback(sd_model)
