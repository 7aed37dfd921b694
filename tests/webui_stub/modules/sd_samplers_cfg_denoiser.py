"""Stand-in for ``modules/sd_samplers_cfg_denoiser.py`` (v1.10.1): ``CFGDenoiser.forward`` as far as the UNet sees it.

Same order as the real ``forward``: interrupt check, cond + uncond batch
(cond first), ``cfg_denoiser_callback`` with ``denoiser=self``, one batched
UNet call (or cond and uncond separately when ``batch_cond_uncond`` is off),
``cfg_denoised_callback``, CFG combine, ``cfg_after_cfg_callback``, ``step += 1``.
"""

import torch
from modules import script_callbacks, sd_samplers_common, shared
from modules.script_callbacks import AfterCFGCallbackParams, CFGDenoisedParams, CFGDenoiserParams
from modules.shared import state


def catenate_conds(conds):
    """As the real one: tensors are concatenated, SDXL's dict conds key by key."""
    if not isinstance(conds[0], dict):
        return torch.cat(conds)
    return {key: torch.cat([c[key] for c in conds]) for key in conds[0]}


class CFGDenoiser(torch.nn.Module):
    def __init__(self, sampler):
        super().__init__()
        self.steps = None
        self.total_steps = None
        self.step = 0
        self.sampler = sampler
        self.p = None

    def forward(self, x, sigma, uncond, cond, cond_scale):
        if state.interrupted or state.skipped:
            raise sd_samplers_common.InterruptedException
        batch_size = x.shape[0]
        x_in = torch.cat([x, x])
        sigma_in = torch.cat([sigma, sigma])
        params = CFGDenoiserParams(x_in, None, sigma_in, state.sampling_step, state.sampling_steps, cond, uncond, self)
        script_callbacks.cfg_denoiser_callback(params)
        x_in, sigma_in, cond, uncond = params.x, params.sigma, params.text_cond, params.text_uncond
        model = shared.sd_model
        if shared.opts.batch_cond_uncond:
            x_out = model.apply_model(x_in, sigma_in, catenate_conds([cond, uncond]))
        else:
            x_out = torch.zeros_like(x_in)
            x_out[:batch_size] = model.apply_model(x_in[:batch_size], sigma_in[:batch_size], cond)
            x_out[batch_size:] = model.apply_model(x_in[batch_size:], sigma_in[batch_size:], uncond)
        script_callbacks.cfg_denoised_callback(CFGDenoisedParams(x_out, state.sampling_step, state.sampling_steps,
                                                                 model))
        denoised_cond, denoised_uncond = x_out[:batch_size], x_out[batch_size:]
        denoised = denoised_uncond + (denoised_cond - denoised_uncond) * cond_scale
        after = AfterCFGCallbackParams(denoised, state.sampling_step, state.sampling_steps)
        script_callbacks.cfg_after_cfg_callback(after)
        self.step += 1
        return after.x


class EulerSampler:
    """A k-diffusion-style Euler sampler: ``launch_sampling`` sets steps/total_steps and swallows interrupts."""

    second_order = False

    def __init__(self):
        self.model_wrap_cfg = CFGDenoiser(self)
        self.last_latent = None

    def initialize(self, p):
        self.model_wrap_cfg.p = p
        self.model_wrap_cfg.step = 0

    def launch_sampling(self, steps, func):
        """As the real one: ``total_steps`` is ``config.total_steps(steps)``, twice the steps when second order."""
        self.model_wrap_cfg.steps = steps
        self.model_wrap_cfg.total_steps = steps * 2 if self.second_order else steps
        state.sampling_steps = steps
        state.sampling_step = 0
        try:
            return func()
        except sd_samplers_common.InterruptedException:
            return self.last_latent

    @staticmethod
    def sigmas(steps):
        return torch.linspace(8.0, 0.0, steps + 1)

    def _step(self, x, sigmas, i, cond, uncond, cfg_scale):
        sigma = sigmas[i].expand(x.shape[0])
        denoised = self.model_wrap_cfg(x, sigma, uncond, cond, cfg_scale)
        return x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])

    def _loop(self, x, sigmas, cond, uncond, cfg_scale):
        for i in range(len(sigmas) - 1):
            x = self._step(x, sigmas, i, cond, uncond, cfg_scale)
            self.last_latent = x
            state.sampling_step = i + 1
        return x

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None):
        steps = steps or p.steps
        sigmas = self.sigmas(steps)
        self.initialize(p)
        self.last_latent = x * sigmas[0]
        return self.launch_sampling(steps, lambda: self._loop(x * sigmas[0], sigmas, conditioning,
                                                              unconditional_conditioning, p.cfg_scale))

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None):
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        sigma_sched = self.sigmas(steps)[steps - t_enc - 1:]
        xi = x + noise * sigma_sched[0]
        self.initialize(p)
        self.last_latent = x
        return self.launch_sampling(t_enc + 1, lambda: self._loop(xi, sigma_sched, conditioning,
                                                                  unconditional_conditioning, p.cfg_scale))


class HeunSampler(EulerSampler):
    """k-diffusion's ``sample_heun``: a second model call per step, except where the next sigma is 0."""

    second_order = True

    def _step(self, x, sigmas, i, cond, uncond, cfg_scale):
        sigma = sigmas[i].expand(x.shape[0])
        denoised = self.model_wrap_cfg(x, sigma, uncond, cond, cfg_scale)
        d = (x - denoised) / sigmas[i]
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            return x + d * dt
        x_2 = x + d * dt
        denoised_2 = self.model_wrap_cfg(x_2, sigmas[i + 1].expand(x.shape[0]), uncond, cond, cfg_scale)
        return x + (d + (x_2 - denoised_2) / sigmas[i + 1]) / 2 * dt


class TimestepsSampler(EulerSampler):
    """The WebUI's CompVis-style DDIM (``sd_samplers_timesteps``): timesteps ``range(0, 1000, 1000 // steps) + 1``,
    one model call per timestep but the first (``len(timesteps) - 1`` loop turns), whatever ``launch_sampling``
    is told; img2img runs on ``timesteps[:t_enc]``. The step here is a simple deterministic update."""

    @staticmethod
    def timesteps(steps):
        return torch.clip(torch.arange(0, 1000, max(1, 1000 // steps)) + 1, 0, 999)

    def _turns(self, x, timesteps, cond, uncond, cfg_scale):
        for i in range(len(timesteps) - 1):
            index = len(timesteps) - 1 - i
            t = timesteps[index].float().expand(x.shape[0])
            denoised = self.model_wrap_cfg(x, t, uncond, cond, cfg_scale)
            x = 0.9 * x + 0.1 * denoised
            self.last_latent = x
            state.sampling_step = i + 1
        return x

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None):
        steps = steps or p.steps
        self.initialize(p)
        self.last_latent = x
        return self.launch_sampling(steps, lambda: self._turns(x, self.timesteps(steps), conditioning,
                                                               unconditional_conditioning, p.cfg_scale))

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None):
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        timesteps = self.timesteps(max(steps, 1))[:t_enc]
        self.initialize(p)
        self.last_latent = x
        return self.launch_sampling(t_enc + 1, lambda: self._turns(x + noise, timesteps, conditioning,
                                                                   unconditional_conditioning, p.cfg_scale))
