"""Stand-in for ``modules/sd_samplers.py`` (v1.10.1): sampler configs by name (their ``second_order`` option)
and ``create_sampler``. Three call patterns of the real samplers: one model call a step (Euler, DPM++ 2M SDE,
LCM), two a step with one on the last (Heun), and DDIM's timestep loop."""

from modules.sd_samplers_cfg_denoiser import EulerSampler, HeunSampler, TimestepsSampler
from modules.sd_samplers_common import SamplerData

all_samplers = [
    SamplerData("Euler", lambda model: EulerSampler(), ["k_euler"], {}),
    SamplerData("Euler a", lambda model: EulerSampler(), ["k_euler_a"], {"uses_ensd": True}),
    SamplerData("Heun", lambda model: HeunSampler(), ["k_heun"], {"second_order": True}),
    SamplerData("DPM++ 2M SDE", lambda model: EulerSampler(), ["k_dpmpp_2m_sde"], {"brownian_noise": True}),
    SamplerData("LCM", lambda model: EulerSampler(), ["k_lcm"], {}),
    SamplerData("DDIM", lambda model: TimestepsSampler(), ["ddim"], {}),
]
all_samplers_map = {x.name: x for x in all_samplers}


def find_sampler_config(name):
    if name is not None:
        return all_samplers_map.get(name)
    return all_samplers[0]


def create_sampler(name, model):
    config = find_sampler_config(name)
    if config is None:
        raise ValueError(f"bad sampler name: {name}")
    sampler = config.constructor(model)
    sampler.config = config
    return sampler
