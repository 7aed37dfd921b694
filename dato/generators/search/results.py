"""Results on disk: atomic writes, the Pareto front, and turning a result back into a Schedule."""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dato.core.fileio import atomic_write_bytes
from dato.core.schedule import Schedule, _action_from_json

__all__ = [
    "REFERENCE_FILE",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_pickle",
    "load_pickle",
    "load_reference",
    "save_reference",
    "pareto_front",
    "load_results",
    "schedule_from_result",
    "RESULTS_FORMAT",
]

RESULTS_FORMAT = 1
# The unaccelerated samples of a search, as a numpy archive: the WebUI replaces ``torch.load`` with a checker
# (``modules/safe.py``) that refuses files newer torch writes, and a tensor archive needs no unpickling anyway.
REFERENCE_FILE = "reference.npz"


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> Path:
    text = json.dumps(data, indent=1, allow_nan=False, sort_keys=False) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_pickle(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_bytes(path, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


#: module paths before the package was split into rooms -> where those modules live now
_MOVED_MODULES = {"dato.search.": "dato.generators.search.", "dato.schedule": "dato.core.schedule"}


class _Unpickler(pickle.Unpickler):
    """Reads checkpoints written before the restructure: old module paths are mapped to their new homes."""

    def find_class(self, module: str, name: str) -> Any:
        for old, new in _MOVED_MODULES.items():
            if module == old.rstrip(".") or module.startswith(old):
                module = new + module[len(old):] if old.endswith(".") else new
                break
        return super().find_class(module, name)


def load_pickle(path: str | os.PathLike[str]) -> Any:
    with open(path, "rb") as fh:
        return _Unpickler(fh).load()


def save_reference(path: str | os.PathLike[str], reference: Mapping[str, Any]) -> Path:
    """Write ``{"pairs", "identity", "times", "latents", "images" (tensor or None)}`` atomically (numpy, no pickle).

    Tensors are stored as float32 with their dtype, so :func:`load_reference` gives back the same values and
    dtype (float16 and bfloat16 widen to float32 exactly).
    """
    import io

    import numpy as np

    arrays, dtypes = {}, {}
    for key in ("latents", "images"):
        tensor = reference.get(key)
        if tensor is not None:
            arrays[key] = tensor.detach().float().cpu().numpy()
            dtypes[key] = str(tensor.dtype).removeprefix("torch.")
    meta = {"pairs": [list(p) for p in reference["pairs"]], "identity": reference["identity"],
            "times": [float(t) for t in reference["times"]], "dtypes": dtypes}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def load_reference(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What :func:`save_reference` wrote (tensors on the CPU), or ``None`` for a missing or unreadable file."""
    import numpy as np
    import torch

    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(bytes(archive["meta"]).decode("utf-8"))
            out: dict[str, Any] = {"pairs": meta["pairs"], "identity": meta["identity"], "times": meta["times"],
                                   "images": None}
            for key, dtype in meta["dtypes"].items():
                out[key] = torch.from_numpy(archive[key].copy()).to(getattr(torch, dtype))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        return None
    return out if "latents" in out else None


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` is no worse than ``b`` everywhere and better somewhere (minimisation)."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the non-dominated points (minimisation), in the given order."""
    return [i for i, p in enumerate(points) if not any(dominates(q, p) for j, q in enumerate(points) if j != i)]


def load_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, Mapping) or data.get("format") != RESULTS_FORMAT or "evaluations" not in data:
        raise ValueError(f"{path}: not a dato search results file (format {RESULTS_FORMAT})")
    return dict(data)


def schedule_from_result(results: Mapping[str, Any], eval_id: int, name: str, description: str = "") -> Schedule:
    """The schedule of evaluation ``eval_id`` with the search's provenance, ready to :meth:`Schedule.save`."""
    by_id = {int(e["id"]): e for e in results["evaluations"]}
    if eval_id not in by_id:
        raise KeyError(f"no evaluation with id {eval_id} in search {results.get('run_id')!r}")
    ev = by_id[eval_id]
    cache = tuple(_action_from_json(a, f"evaluation {eval_id}: cache[{i}]") for i, a in enumerate(ev["cache"]))
    objectives = results.get("objectives", {})
    provenance = {
        "generator": "dato-search (NSGA-II)",
        "run_id": results.get("run_id"),
        "objectives": {
            "quality": objectives.get("quality"), "cost": objectives.get("cost"),
            "quality_value": ev["quality"], "cost_value": ev["cost"],
            "macs_rel": ev.get("macs_rel"), "time_rel": ev.get("time_rel"),
        },
        "prompts": list(results.get("settings", {}).get("prompts", [])),
        "model_hash": results.get("model", {}).get("model_hash"),
        "searched_steps": len(cache),
    }
    schedule = Schedule(name, cache, tuple(ev["ratio"]), ev["method"],
                        description=description or f"searched: quality {ev['quality']:.3g}, "
                                                   f"cost {ev['cost']:.3g} of the baseline")
    return schedule.with_provenance(**provenance)
