"""What the commands share: model and sampling arguments, the backend they ask for, prompts, saving by name.

``search``, ``calibrate`` and ``gates`` load a model the same way and save
their schedule the same way; this module is that one way.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dato.core.schedule import Schedule, ScheduleError, builtin_schedule_dir

__all__ = ["add_model_arguments", "add_sampling_arguments", "backend_from_args", "model_slug", "prompts_from_args",
           "save_named"]


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Which model to load: shared by ``search``, ``calibrate`` and ``gates``."""
    model = parser.add_argument_group("model (default: built-in random SD1.5-shaped UNet, no weights needed)")
    src = model.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", metavar="PATH", help="SD1.x .safetensors/.ckpt (UNet, CLIP, VAE from it)")
    src.add_argument("--fixture", action="store_true", help="the trained tiny digits model (dato.evaluation.fixture)")
    model.add_argument("--builtin", choices=("sd15", "tiny"), default="sd15",
                       help="built-in model: SD1.5-shaped (default) or tiny SD1-topology (smoke tests)")
    model.add_argument("--latent-size", type=int, default=16,
                       help="built-in model: latent side (16 = 128 px; default 16)")
    model.add_argument("--size", type=int, default=512, help="checkpoint: image side in pixels (default 512)")
    model.add_argument("--device", default="cpu", help="checkpoint: torch device (default cpu)")
    model.add_argument("--half", action="store_true", help="checkpoint: float16 weights (GPU)")
    model.add_argument("--tokenizer", default="openai/clip-vit-large-patch14",
                       help="checkpoint: CLIP tokenizer name or local folder")


def add_sampling_arguments(parser: argparse.ArgumentParser, steps: int) -> None:
    """Sampler, steps, CFG and prompts: shared by ``calibrate`` and ``gates``."""
    samp = parser.add_argument_group("sampling")
    samp.add_argument("--steps", type=int, default=steps, help=f"sampling steps (default {steps})")
    samp.add_argument("--sampler", choices=("euler", "euler_a", "heun", "ddim"), default="euler")
    samp.add_argument("--cfg", type=float, default=None,
                      help="CFG scale (default 7.5; with --fixture the fixture's own, 2.0)")
    prompts = samp.add_mutually_exclusive_group()
    prompts.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
    prompts.add_argument("--prompts-file", metavar="FILE", help="one prompt per line")
    samp.add_argument("--seed", type=int, default=0, help="noise seed of the first prompt (+1 per prompt)")


def prompts_from_args(args: argparse.Namespace) -> list[str]:
    """``--prompts-file``, ``--prompt``s, or the model's default set (digit prompts for ``--fixture``)."""
    if args.prompts_file:
        lines = Path(args.prompts_file).read_text(encoding="utf-8").splitlines()
        return [ln.strip() for ln in lines if ln.strip()]
    if args.prompt:
        return list(args.prompt)
    if args.fixture:
        from dato.evaluation.backends import fixture_prompts

        return fixture_prompts()
    from dato.generators.search.settings import DEFAULT_PROMPTS

    return list(DEFAULT_PROMPTS)


def backend_from_args(args: argparse.Namespace, steps: int):
    """The :class:`~dato.evaluation.backends.StandaloneBackend` that the model arguments ask for."""
    from dato.evaluation import backends as standalone

    if args.checkpoint:
        import torch

        return standalone.checkpoint_backend(
            args.checkpoint, steps=steps, sampler=args.sampler,
            cfg_scale=7.5 if args.cfg is None else args.cfg, size=args.size, device=args.device,
            dtype=torch.float16 if args.half else torch.float32, tokenizer=args.tokenizer)
    if args.fixture:
        return standalone.fixture_backend(steps=steps, sampler=args.sampler, cfg_scale=args.cfg)
    return standalone.builtin_backend(latent_size=args.latent_size, steps=steps, sampler=args.sampler,
                                      cfg_scale=7.5 if args.cfg is None else args.cfg, model=args.builtin)


def model_slug(backend) -> str:
    """A file-name-safe name for the backend's model (hash, else name), for default output paths."""
    info = backend.describe()
    raw = str(info.get("model_hash") or info.get("model_name") or "model")
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in raw)[:64]


def save_named(schedule: Schedule, name: str, save_dir: str | None = None) -> Path | None:
    """Save ``schedule`` as ``name`` (default folder ``schedules/user``) for the CLIs' ``--save`` options.

    Returns the path, or ``None`` after printing the reason (bad name, file exists) to stderr.
    """
    folder = Path(save_dir) if save_dir else builtin_schedule_dir() / "user"
    try:
        named = Schedule.from_dict({**schedule.to_dict(), "name": name})
        return named.save(folder / f"{name}.json")
    except ScheduleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
