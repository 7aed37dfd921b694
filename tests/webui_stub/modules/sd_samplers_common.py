"""Stand-in for ``modules/sd_samplers_common.py`` (v1.10.1): the interrupt exception and img2img step count."""

from modules import shared


class InterruptedException(BaseException):
    pass


def setup_img2img_steps(p, steps=None):
    if shared.opts.img2img_fix_steps or steps is not None:
        requested_steps = (steps or p.steps)
        steps = int(requested_steps / min(p.denoising_strength, 0.999)) if p.denoising_strength > 0 else 0
        t_enc = requested_steps - 1
    else:
        steps = p.steps
        t_enc = int(min(p.denoising_strength, 0.999) * steps)
    return steps, t_enc
