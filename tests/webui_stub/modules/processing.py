"""Stand-in for ``modules/processing.py`` (v1.10.1): the processing objects and ``process_images``' call order.

Kept from the real module: which script hook runs when (``before_process``,
Token Merging, ``process``, per batch ``process_batch`` -> ``sample`` ->
``process_before_every_sampling`` -> sampler; hires fix: Token Merging for hr,
``before_hr``, ``process_before_every_sampling``, ``is_hr_pass``), that an
exception propagates out of ``process_images`` without ``postprocess``, the
``override_settings`` restore rule (only keys already in ``opts.data``), and
the infotext format. The image is the final latent (no VAE).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch
from modules import infotext_utils, scripts, sd_models, sd_samplers, shared
from modules.shared import opts, state


@dataclass(repr=False)
class StableDiffusionProcessing:
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    steps: int = 6
    cfg_scale: float = 7.0
    width: int = 64
    height: int = 64
    batch_size: int = 1
    n_iter: int = 1
    sampler_name: str = "Euler"
    denoising_strength: float = None
    extra_generation_params: dict[str, Any] = None
    override_settings: dict[str, Any] = None
    override_settings_restore_afterwards: bool = True
    token_merging_ratio = 0
    token_merging_ratio_hr = 0
    scripts_value: Any = field(default=None, init=False)
    script_args_value: list = field(default=None, init=False)
    is_hr_pass: bool = field(default=False, init=False)
    comments: dict = None

    def __post_init__(self):
        self.extra_generation_params = self.extra_generation_params or {}
        self.override_settings = self.override_settings or {}
        self.comments = {}
        self.seeds = []
        self.all_seeds = []

    @property
    def sd_model(self):
        return shared.sd_model

    @sd_model.setter
    def sd_model(self, value):
        pass

    @property
    def scripts(self):
        return self.scripts_value

    @scripts.setter
    def scripts(self, value):
        self.scripts_value = value

    @property
    def script_args(self):
        return self.script_args_value

    @script_args.setter
    def script_args(self, value):
        self.script_args_value = value

    def comment(self, text):
        self.comments[text] = 1

    def get_token_merging_ratio(self, for_hr=False):
        if for_hr:
            return self.token_merging_ratio_hr or opts.token_merging_ratio_hr or self.token_merging_ratio \
                or opts.token_merging_ratio
        return self.token_merging_ratio or opts.token_merging_ratio

    def conds(self):
        gen = torch.Generator().manual_seed(1234)
        context_dim = shared.sd_model.context_dim
        cond = torch.randn(self.batch_size, 7, context_dim, generator=gen)
        uncond = torch.randn(self.batch_size, 7, context_dim, generator=gen)
        if getattr(shared.sd_model, "is_sdxl", False):  # sgm conditioner output: cross-attention + size vector
            width = shared.sd_model.adm_in_channels
            vector = torch.randn(self.batch_size, width, generator=gen)
            return {"crossattn": cond, "vector": vector}, {"crossattn": uncond, "vector": vector.clone()}
        return cond, uncond

    def noise(self, shape):
        return torch.randn((len(self.seeds), *shape), generator=torch.Generator().manual_seed(int(self.seeds[0])))

    def close(self):
        pass


@dataclass(repr=False)
class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    enable_hr: bool = False
    denoising_strength: float = 0.75
    hr_scale: float = 2.0
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_sampler_name: str = None
    hr_upscale_to_x: int = field(default=0, init=False)
    hr_upscale_to_y: int = field(default=0, init=False)
    truncate_x: int = field(default=0, init=False)
    truncate_y: int = field(default=0, init=False)

    def __post_init__(self):
        super().__post_init__()
        if self.enable_hr:
            self.extra_generation_params["Denoising strength"] = self.denoising_strength
            self.extra_generation_params["Hires upscale"] = self.hr_scale
            if self.hr_second_pass_steps:
                self.extra_generation_params["Hires steps"] = self.hr_second_pass_steps

    def calculate_target_resolution(self):
        """As the real one (called from ``init``, after the scripts' ``process``)."""
        w, h = self.width, self.height
        if self.hr_resize_x == 0 and self.hr_resize_y == 0:
            self.hr_upscale_to_x, self.hr_upscale_to_y = int(w * self.hr_scale), int(h * self.hr_scale)
        elif self.hr_resize_y == 0:
            self.hr_upscale_to_x, self.hr_upscale_to_y = self.hr_resize_x, self.hr_resize_x * h // w
        elif self.hr_resize_x == 0:
            self.hr_upscale_to_x, self.hr_upscale_to_y = self.hr_resize_y * w // h, self.hr_resize_y
        else:
            if self.width / self.height < self.hr_resize_x / self.hr_resize_y:
                self.hr_upscale_to_x = self.hr_resize_x
                self.hr_upscale_to_y = self.hr_resize_x * self.height // self.width
            else:
                self.hr_upscale_to_x = self.hr_resize_y * self.width // self.height
                self.hr_upscale_to_y = self.hr_resize_y
            self.truncate_x = (self.hr_upscale_to_x - self.hr_resize_x) // 8
            self.truncate_y = (self.hr_upscale_to_y - self.hr_resize_y) // 8

    def sample(self, conditioning, unconditional_conditioning):
        if self.enable_hr:
            self.calculate_target_resolution()
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        x = self.noise((4, self.height // 8, self.width // 8))
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(p=self, x=x, noise=x, c=conditioning,
                                                       uc=unconditional_conditioning)
        samples = self.sampler.sample(self, x, conditioning, unconditional_conditioning)
        if not self.enable_hr:
            return samples
        return self.sample_hr_pass(samples, conditioning, unconditional_conditioning)

    def sample_hr_pass(self, samples, conditioning, unconditional_conditioning):
        if shared.state.interrupted:
            return samples
        self.is_hr_pass = True
        self.sampler = sd_samplers.create_sampler(self.hr_sampler_name or self.sampler_name, self.sd_model)
        size = (self.hr_upscale_to_y // 8, self.hr_upscale_to_x // 8)  # latent upscale, then the real truncation
        samples = torch.nn.functional.interpolate(samples, size=size, mode="bilinear")
        samples = samples[:, :, self.truncate_y // 2:samples.shape[2] - (self.truncate_y + 1) // 2,
                          self.truncate_x // 2:samples.shape[3] - (self.truncate_x + 1) // 2]
        noise = self.noise(samples.shape[1:])
        sd_models.apply_token_merging(self.sd_model, self.get_token_merging_ratio(for_hr=True))
        if self.scripts is not None:
            self.scripts.before_hr(self)
            self.scripts.process_before_every_sampling(p=self, x=samples, noise=noise, c=conditioning,
                                                       uc=unconditional_conditioning)
        samples = self.sampler.sample_img2img(self, samples, noise, conditioning, unconditional_conditioning,
                                              steps=self.hr_second_pass_steps or self.steps)
        sd_models.apply_token_merging(self.sd_model, self.get_token_merging_ratio())
        self.is_hr_pass = False
        return samples


@dataclass(repr=False)
class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    init_latent: Any = None
    denoising_strength: float = 0.75

    def __post_init__(self):
        super().__post_init__()
        self.extra_generation_params["Denoising strength"] = self.denoising_strength

    def sample(self, conditioning, unconditional_conditioning):
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        x = self.noise(self.init_latent.shape[1:])
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(p=self, x=self.init_latent, noise=x, c=conditioning,
                                                       uc=unconditional_conditioning)
        return self.sampler.sample_img2img(self, self.init_latent, x, conditioning, unconditional_conditioning)

    def get_token_merging_ratio(self, for_hr=False):
        return self.token_merging_ratio or ("token_merging_ratio" in self.override_settings
                                            and opts.token_merging_ratio) \
            or opts.token_merging_ratio_img2img or opts.token_merging_ratio


class Processed:
    def __init__(self, p: StableDiffusionProcessing, images_list, infotexts=None):
        self.images = images_list
        self.seed = p.all_seeds[0] if p.all_seeds else p.seed
        self.infotexts = infotexts or []
        self.info = self.infotexts[0] if self.infotexts else ""
        self.comments = "".join(f"{comment}\n" for comment in p.comments)
        self.extra_generation_params = p.extra_generation_params

    def js(self):
        return json.dumps({"seed": self.seed, "infotexts": self.infotexts, "comments": self.comments,
                           "extra_generation_params": self.extra_generation_params})


def create_infotext(p, iteration=0, position_in_batch=0):
    generation_params = {
        "Steps": p.steps,
        "Sampler": p.sampler_name,
        "CFG scale": p.cfg_scale,
        "Seed": p.all_seeds[position_in_batch + iteration * p.batch_size] if p.all_seeds else p.seed,
        "Size": f"{p.width}x{p.height}",
        "Token merging ratio": None if p.get_token_merging_ratio() == 0 else p.get_token_merging_ratio(),
        **p.extra_generation_params,
    }
    text = ", ".join([k if k == v else f'{k}: {infotext_utils.quote(v)}'
                      for k, v in generation_params.items() if v is not None])
    negative = f"\nNegative prompt: {p.negative_prompt}" if p.negative_prompt else ""
    return f"{p.prompt}{negative}\n{text}".strip()


def process_images(p: StableDiffusionProcessing) -> Processed:
    if p.scripts is not None:
        p.scripts.before_process(p)
    stored_opts = {k: opts.data[k] for k in p.override_settings.keys() if k in opts.data}
    try:
        for k, v in p.override_settings.items():
            opts.set(k, v, is_api=True, run_callbacks=False)
        sd_models.apply_token_merging(p.sd_model, p.get_token_merging_ratio())
        res = process_images_inner(p)
    finally:
        sd_models.apply_token_merging(p.sd_model, 0)
        if p.override_settings_restore_afterwards:
            for k, v in stored_opts.items():
                setattr(opts, k, v)
    return res


def process_images_inner(p: StableDiffusionProcessing) -> Processed:
    seed = p.seed if p.seed != -1 else 1
    p.all_seeds = [int(seed) + x for x in range(p.n_iter * p.batch_size)]
    if p.scripts is not None:
        p.scripts.process(p)
    output_images, infotexts = [], []
    with torch.no_grad():
        if state.job_count == -1:
            state.job_count = p.n_iter
        for n in range(p.n_iter):
            p.iteration = n
            if state.interrupted or state.stopping_generation:
                break
            p.seeds = p.all_seeds[n * p.batch_size:(n + 1) * p.batch_size]
            if p.scripts is not None:
                p.scripts.process_batch(p, batch_number=n, prompts=[p.prompt], seeds=p.seeds, subseeds=p.seeds)
            c, uc = p.conds()
            samples = p.sample(conditioning=c, unconditional_conditioning=uc)
            if p.scripts is not None:
                ps = scripts.PostSampleArgs(samples)
                p.scripts.post_sample(p, ps)
                samples = ps.samples
            for i, sample in enumerate(samples):
                output_images.append(sample.clone())
                infotexts.append(create_infotext(p, n, i))
    res = Processed(p, output_images, infotexts)
    if p.scripts is not None:
        p.scripts.postprocess(p, res)
    return res
