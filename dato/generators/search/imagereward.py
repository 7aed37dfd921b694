"""ImageReward (``image-reward`` package, ``ImageReward-v1.0``) as a search objective: loaded lazily, once.

Nothing here is imported until a search asks for ImageReward. Loading:

1. Import the package's model class. ``import ImageReward`` also imports its
   training script (diffusers, datasets, accelerate) and CLIP scorers (the
   ``clip`` package PyPI does not ship); when one of those is missing, only the
   model module (``ImageReward/ImageReward.py`` + ``models/BLIP``, which need
   ``transformers`` < 4.56, ``timm``, ``fairscale`` and ``torchvision``) is
   imported, without running the package's ``__init__``.
2. Find ``ImageReward.pt`` and ``med_config.json``: given paths, or the download
   folder (default ``~/.cache/ImageReward``), or the Hugging Face hub
   (``THUDM/ImageReward``; not with ``offline=True`` or ``HF_HUB_OFFLINE=1``).
   What is still missing is named in one message with the folder it goes in.
   The BLIP text tokenizer is ``bert-base-uncased``: a local folder
   (``tokenizer=``), else ``<download folder>/bert-base-uncased/`` when it
   exists, else the package's own ``BertTokenizer.from_pretrained`` (hub cache).
3. Read the weights (a truncated or refused file fails here, before any model
   is built; the WebUI's restricted ``torch.load`` accepts the release's plain
   state dict), build the model, load the weights, move it to the device,
   cache it per process (a second search reuses it; a failure caches nothing).

Any failure raises :class:`ScorerUnavailable` whose message says what is
missing, where to put it, and that the fidelity objective needs no weights;
the search then falls back to fidelity or stops (setting
``imagereward_fallback``).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import threading
import types
import zipfile
from pathlib import Path
from typing import Any

__all__ = ["ScorerUnavailable", "load_imagereward", "clear_cache", "HUB_REPO", "WEIGHTS_FILE", "MED_CONFIG_FILE",
           "TOKENIZER_FOLDER", "EXTENSION_DEPS"]

HUB_REPO = "THUDM/ImageReward"
WEIGHTS_FILE = "ImageReward.pt"
MED_CONFIG_FILE = "med_config.json"
TOKENIZER_FOLDER = "bert-base-uncased"  # optional, in the download folder: BLIP's tokenizer files
EXTENSION_DEPS = Path(__file__).resolve().parents[3] / "deps"  # where install.py puts image-reward
_INSTALL_HINT = (
    "install.py installs it at the WebUI's start-up (not under --skip-install); by hand, with the WebUI's Python: "
    f'`python -m pip install --no-deps --target "{EXTENSION_DEPS}" image-reward==1.5 fairscale==0.4.13`'
)
_FALLBACK_HINT = "or choose the fidelity objective, which needs no extra weights"

_CACHE: dict[tuple, Any] = {}
_LOCK = threading.Lock()


class ScorerUnavailable(RuntimeError):
    """ImageReward cannot be used here; the message says why and what to do."""


def default_download_root() -> Path:
    return Path(os.path.expanduser("~/.cache/ImageReward"))


def clear_cache() -> None:
    """Forget the loaded scorers (tests; freeing memory)."""
    with _LOCK:
        _CACHE.clear()


def load_imagereward(
    device: Any = "cpu",
    *,
    weights: str | os.PathLike[str] | None = None,
    med_config: str | os.PathLike[str] | None = None,
    tokenizer: str | os.PathLike[str] | None = None,
    download_root: str | os.PathLike[str] | None = None,
    offline: bool = False,
    random_weights: bool = False,
) -> Any:
    """The ImageReward model (``.score(prompt, [PIL images])``), built once per process per configuration.

    ``offline=True`` never touches the network (only given or already downloaded files).
    ``random_weights=True`` skips the weights file entirely: for tests of the plumbing, never for a search.
    """
    key = (str(device), str(weights), str(med_config), str(tokenizer), str(download_root), bool(random_weights))
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        model = _load(device, weights, med_config, tokenizer, download_root, offline, random_weights)
        _CACHE[key] = model
        return model


def _load(device, weights, med_config, tokenizer, download_root, offline, random_weights) -> Any:
    module = _import_model_module()
    root = Path(download_root) if download_root else default_download_root()
    offline = offline or _env_offline()
    wanted = {MED_CONFIG_FILE: med_config} if random_weights else {WEIGHTS_FILE: weights, MED_CONFIG_FILE: med_config}
    paths = _resolve_all(wanted, root, offline)
    if tokenizer is None and (root / TOKENIZER_FOLDER).is_dir():
        tokenizer = root / TOKENIZER_FOLDER
    # The weights are read (and checked) before the model is built: a bad file costs no model.
    state = None if random_weights else _read_weights(paths[WEIGHTS_FILE])
    try:
        with _tokenizer_from(tokenizer):
            model = module.ImageReward(device=device, med_config=str(paths[MED_CONFIG_FILE]))
    except ScorerUnavailable:
        raise
    except (OSError, ValueError) as exc:  # tokenizer files missing / not downloadable
        raise ScorerUnavailable(
            f"ImageReward's text tokenizer (bert-base-uncased) could not be loaded: {exc}. Put its vocab.txt into "
            f"{str(root / TOKENIZER_FOLDER)!r}, or download bert-base-uncased once into the Hugging Face cache, "
            f"{_FALLBACK_HINT}."
        ) from exc
    if state is not None:
        result = model.load_state_dict(state, strict=False)
        expected = len(model.state_dict())
        if len(result.missing_keys) > expected // 2:
            raise ScorerUnavailable(
                f"{str(paths[WEIGHTS_FILE])!r} does not look like ImageReward weights ({len(result.missing_keys)} "
                f"of {expected} tensors missing); delete it and download {WEIGHTS_FILE} again, {_FALLBACK_HINT}."
            )
    return model.to(device).eval().requires_grad_(False)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _env_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _read_weights(path: Path) -> dict:
    """The checkpoint's state dict, through whatever ``torch.load`` is installed (the WebUI's is restricted).

    ``ImageReward.pt`` is a plain state dict of tensors, so ``weights_only=True`` reads it, and the WebUI's
    restricted unpickler (``modules/safe.py``) accepts it. A file that is not a complete zip archive (a
    download cut short) is refused before ``torch.load`` sees it, so the WebUI prints no traceback for it.
    """
    import torch

    advice = f"delete it and download {WEIGHTS_FILE} again (about 1.7 GB), {_FALLBACK_HINT}."
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ScorerUnavailable(f"ImageReward weights {str(path)!r} are truncated or not a torch checkpoint "
                                f"({exc}); {advice}") from None
    if not any(n.endswith("/data.pkl") for n in names):
        raise ScorerUnavailable(f"ImageReward weights {str(path)!r} are not a torch checkpoint (no data.pkl); {advice}")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ScorerUnavailable(f"cannot read ImageReward weights {str(path)!r} ({_first_line(exc)}); "
                                f"{advice}") from None
    if state is None:  # the WebUI's safe.load reports a refused file on the console and returns None
        raise ScorerUnavailable(f"the WebUI refused to read ImageReward weights {str(path)!r} (its console says "
                                f"why); {advice}")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ScorerUnavailable(f"ImageReward weights {str(path)!r} hold a {type(state).__name__}, not a state "
                                f"dict; {advice}")
    return state


@contextlib.contextmanager
def _tokenizer_from(tokenizer: str | os.PathLike[str] | None):
    """Make BLIP's ``init_tokenizer`` read ``tokenizer`` (a local folder) instead of the hub's bert-base-uncased."""
    if tokenizer is None:
        yield
        return
    folder = Path(tokenizer)
    if not folder.is_dir():
        raise ScorerUnavailable(f"tokenizer folder {str(folder)!r} does not exist")
    blip = sys.modules["ImageReward.models.BLIP.blip"]
    original = blip.BertTokenizer

    class LocalBertTokenizer(original):  # type: ignore[misc, valid-type]
        @classmethod
        def from_pretrained(cls, *_args, **kwargs):
            return original.from_pretrained(str(folder), **kwargs)

    blip.BertTokenizer = LocalBertTokenizer
    try:
        yield
    finally:
        blip.BertTokenizer = original


def _resolve_all(wanted: dict[str, Any], root: Path, offline: bool) -> dict[str, Path]:
    """Each file: the given path, else ``root/<name>``, else (online) a download into ``root``.

    Everything still missing is named in one message, with the folder to put it in.
    """
    found: dict[str, Path] = {}
    missing: list[str] = []
    for filename, given in wanted.items():
        if given is not None:
            path = Path(given)
            if not path.is_file():
                raise ScorerUnavailable(f"ImageReward file {str(path)!r} does not exist")
            found[filename] = path
        elif (root / filename).is_file():
            found[filename] = root / filename
        else:
            missing.append(filename)
    why = "downloads are off"
    if missing and not offline:
        try:
            from huggingface_hub import hf_hub_download

            for filename in list(missing):
                found[filename] = Path(hf_hub_download(repo_id=HUB_REPO, filename=filename, local_dir=str(root)))
                missing.remove(filename)
        except Exception as exc:  # noqa: BLE001 - network, auth, disk: all mean "not available"
            why = f"the download from {HUB_REPO} failed ({_first_line(exc)})"
    if missing:
        files = " and ".join(missing)
        raise ScorerUnavailable(
            f"ImageReward needs {files} in {str(root)!r} and {why}; put {files} from the Hugging Face model "
            f"repository {HUB_REPO} there (https://huggingface.co/{HUB_REPO}), {_FALLBACK_HINT}."
        )
    return found


def _import_model_module() -> types.ModuleType:
    """``ImageReward.ImageReward`` (the module holding the model class), as lightly as possible."""
    if "ImageReward.ImageReward" in sys.modules:
        return sys.modules["ImageReward.ImageReward"]
    if importlib.util.find_spec("ImageReward") is None and EXTENSION_DEPS.is_dir():
        sys.path.append(str(EXTENSION_DEPS))  # as the WebUI glue does (scripts/dato_webui/deps.py); for the CLI
    try:
        return importlib.import_module("ImageReward.ImageReward")
    except ModuleNotFoundError as exc:
        if exc.name == "ImageReward":
            raise ScorerUnavailable(f"the image-reward package is not installed; {_INSTALL_HINT}, "
                                    f"{_FALLBACK_HINT}.") from exc
        first_missing = exc.name
    except ImportError as exc:
        raise ScorerUnavailable(f"the image-reward package does not import here ({exc}); {_INSTALL_HINT}, "
                                f"{_FALLBACK_HINT}.") from exc
    return _import_without_package_init(first_missing)


def _import_without_package_init(first_missing: str | None) -> types.ModuleType:
    spec = importlib.util.find_spec("ImageReward")
    if spec is None or not spec.submodule_search_locations:
        raise ScorerUnavailable(f"the image-reward package is not installed; {_INSTALL_HINT}, {_FALLBACK_HINT}.")
    pkg_dir = Path(list(spec.submodule_search_locations)[0])
    stubs = {"ImageReward": pkg_dir, "ImageReward.models": pkg_dir / "models"}
    for name in [n for n in list(sys.modules) if n == "ImageReward" or n.startswith("ImageReward.")]:
        del sys.modules[name]  # leftovers of the failed import
    for name, folder in stubs.items():
        stub = types.ModuleType(name)
        stub.__path__ = [str(folder)]  # a package without its __init__ side effects
        sys.modules[name] = stub
    try:
        return importlib.import_module("ImageReward.ImageReward")
    except ImportError as exc:
        for name in [n for n in list(sys.modules) if n == "ImageReward" or n.startswith("ImageReward.")]:
            del sys.modules[name]
        missing = getattr(exc, "name", None) or str(exc)
        raise ScorerUnavailable(
            f"image-reward is installed but its model needs {missing!r} (the package itself also wanted "
            f"{first_missing!r}); the model needs torchvision, timm and transformers < 4.56 (the WebUI has them) "
            f"and fairscale ({_INSTALL_HINT}), {_FALLBACK_HINT}."
        ) from exc
    finally:
        for name in stubs:
            if getattr(sys.modules.get(name), "__file__", None) is None and name in sys.modules:
                del sys.modules[name]
