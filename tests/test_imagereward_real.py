"""The real ``image-reward`` 1.5 package, installed by ``install.py``, loading a checkpoint in the release's format.

Runs in the separate venv that ``tests/imagereward_env/make_venv.sh`` builds (the WebUI's pins:
transformers 4.30.2, timm, torchvision beside torch 2.14.1); there ``install.py`` itself put
``image-reward==1.5`` and ``fairscale`` into a ``deps/`` folder (``--no-deps --target``), named by
``DATO_IMAGEREWARD_DEPS`` (default ``.ci/ir-deps``). Elsewhere every test here is skipped, saying so.

What is real: the package's ``ImageReward`` class and BLIP (ViT-L/16 + BERT-base with cross
attention, built from the release's ``med_config.json`` values), its own
``BertTokenizer.from_pretrained('bert-base-uncased')`` call (answered offline from a Hugging Face
cache entry made here: a small synthetic vocabulary in the ``bert-base-uncased`` layout), and a
checkpoint with exactly the model's state-dict keys written by ``torch.save``. Its zip entries are
the ones the release's torch wrote (``<name>/data.pkl``, ``data/<n>``, ``version``): torch 2.4+ adds
``.format_version`` and ``.storage_alignment``, which the WebUI's restricted loader refuses. The
weights are random, so the rewards mean nothing; that they are the checkpoint's is checked.

The WebUI's restricted ``torch.load`` (``modules/safe.py`` in v1.10.1) is reproduced by
:func:`webui_restricted_load`, written from its rules (allowed zip entry names; an unpickler that
admits only OrderedDict, torch's tensor rebuilders and storage types, a few numpy names; a refused
file is reported and ``None`` returned), not copied from it. With ``WEBUI_DIR`` set to a WebUI
checkout, the WebUI's own ``modules/safe.py`` is loaded too and reads the checkpoint.

Memory: about 4 GB at the peak (the 1.8 GB model and its state dict). Time: a few minutes on 2 CPUs.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "imagereward_env"))
import release_files  # noqa: E402  (test tooling beside make_venv.sh)

DEPS = Path(os.environ.get("DATO_IMAGEREWARD_DEPS", ROOT / ".ci" / "ir-deps")).resolve()
_NEEDS = ("torch", "torchvision", "transformers", "timm", "pymoo")
_MISSING = [m for m in _NEEDS if importlib.util.find_spec(m) is None]
if not (DEPS / "ImageReward" / "ImageReward.py").is_file():
    _MISSING.append(f"image-reward in {DEPS}")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(_MISSING), reason=(
        f"the real image-reward 1.5 is not set up here (missing: {', '.join(_MISSING)}); build its venv with "
        "tests/imagereward_env/make_venv.sh and run this file with .ci/ir-venv/bin/python")),
]

def _hf_home() -> Path:
    """An offline Hugging Face cache holding ``bert-base-uncased``'s tokenizer (vocab made up, layout real).

    Set before transformers is imported (it reads the cache location and offline flag at import).
    """
    home = Path(tempfile.mkdtemp(prefix="dato-ir-hf-"))
    repo = home / "hub" / "models--bert-base-uncased"
    rev = "0" * 40
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    (home / "hub" / "version.txt").write_text("1")
    release_files.write_tokenizer(snap)
    return home


if not _MISSING:
    HF_HOME = _hf_home()
    os.environ.update(HF_HOME=str(HF_HOME), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    os.environ.pop("TRANSFORMERS_CACHE", None)
    if str(DEPS) not in sys.path:
        sys.path.append(str(DEPS))  # what scripts/dato_webui/deps.py does in the WebUI

if not _MISSING:
    import torch
    from PIL import Image

    from dato.generators.search import ScorerUnavailable
    from dato.generators.search import imagereward as ir


# ------------------------------------------------------------------ the WebUI's restricted torch.load
_ALLOWED_ZIP_NAME = re.compile(r"^([^/]+)/((data/\d+)|version|byteorder|.data/serialization_id|(data\.pkl))$")


class _Refused(Exception):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    def persistent_load(self, saved_id):
        assert saved_id[0] == "storage"
        return torch.storage.TypedStorage(_internal=True)

    def find_class(self, module, name):
        allowed = {
            ("collections", "OrderedDict"): lambda: collections.OrderedDict,
            **{("torch._utils", n): (lambda n=n: getattr(torch._utils, n))
               for n in ("_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_device_tensor_from_numpy")},
            **{("torch", n): (lambda n=n: getattr(torch, n))
               for n in ("FloatStorage", "HalfStorage", "IntStorage", "LongStorage", "DoubleStorage",
                         "ByteStorage", "float32", "BFloat16Storage")},
            ("__builtin__", "set"): lambda: set,
        }
        if (module, name) in allowed:
            return allowed[(module, name)]()
        raise _Refused(f"global '{module}/{name}' is forbidden")


def webui_restricted_load(original_load, messages: list[str]):
    """``torch.load`` as the WebUI installs it: check the file, report and return ``None`` if refused."""

    def load(filename, *args, **kwargs):
        try:
            with zipfile.ZipFile(filename) as z:
                for n in z.namelist():
                    if not _ALLOWED_ZIP_NAME.match(n):
                        raise _Refused(f"bad file inside {filename}: {n}")
                pkl = [n for n in z.namelist() if re.match(r"^([^/]+)/data\.pkl$", n)]
                if len(pkl) != 1:
                    raise _Refused(f"{len(pkl)} data.pkl in {filename}")
                with z.open(pkl[0]) as fh:
                    _RestrictedUnpickler(fh).load()
        except Exception as exc:  # noqa: BLE001 - safe.py reports every refusal the same way
            messages.append(f"Error verifying pickled file from {filename}: {exc}")
            return None
        return original_load(filename, *args, **kwargs)

    return load


# ------------------------------------------------------------------ release-format files
@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """``<root>/ImageReward.pt`` + ``med_config.json`` as a download leaves them, and a few reference tensors."""
    ir.clear_cache()
    root = tmp_path_factory.mktemp("ImageReward")
    state = release_files.write_release(root, ir._import_model_module())
    reference = {k: state[k].clone() for k in ("mlp.layers.0.weight", "blip.visual_encoder.pos_embed",
                                               "blip.text_encoder.embeddings.word_embeddings.weight")}
    keys = list(state)
    del state
    yield root, reference, keys
    ir.clear_cache()


def _images():
    return [Image.new("RGB", (96, 64), c) for c in ("red", "navy")] + [Image.radial_gradient("L").convert("RGB")]


def test_the_real_package_is_the_one_install_py_put_into_deps():
    module = ir._import_model_module()
    assert Path(module.__file__).resolve().is_relative_to(DEPS)
    assert (DEPS / "image_reward-1.5.dist-info").is_dir() and (DEPS / "fairscale").is_dir()
    blip = sys.modules["ImageReward.models.BLIP.blip"]
    import transformers

    assert blip.BertTokenizer is transformers.BertTokenizer  # the real tokenizer class, not a stand-in


def test_release_checkpoint_scores_prompts_single_and_batched(release):
    root, reference, keys = release
    model = ir.load_imagereward(download_root=str(root), offline=True)
    assert model is ir.load_imagereward(download_root=str(root), offline=True)  # built once per process
    assert list(model.state_dict()) == keys
    for name, tensor in reference.items():
        assert torch.equal(model.state_dict()[name], tensor), name
    # the tokenizer is the package's BertTokenizer.from_pretrained('bert-base-uncased'), from the offline cache
    ids = model.blip.tokenizer("a red fox")["input_ids"]
    assert ids[0] == 101 and ids[-1] == 102 and len(ids) == 5
    images = _images()
    batch = model.score("a photo of a red fox", images)
    single = [model.score("a photo of a red fox", im) for im in images]
    assert isinstance(batch, list) and len(batch) == 3 and all(isinstance(r, float) for r in single)
    assert batch == pytest.approx(single, abs=1e-4)
    assert len(set(round(r, 4) for r in single)) == 3  # the images are told apart
    assert model.score("a lighthouse at dusk", images[0]) != pytest.approx(single[0], abs=1e-6)


def test_the_webui_restricted_torch_load_accepts_the_release_format(release, monkeypatch):
    root, reference, _ = release
    messages: list[str] = []
    original = torch.load
    # the rule is real: a file written by today's torch.save as is has entries the WebUI refuses
    plain = root.parent / "plain-torch-save.pt"
    torch.save({"x": torch.zeros(1)}, plain)
    assert webui_restricted_load(original, messages)(str(plain)) is None and ".format_version" in messages[-1]
    messages.clear()
    monkeypatch.setattr(torch, "load", webui_restricted_load(original, messages))
    ir.clear_cache()
    model = ir.load_imagereward(download_root=str(root), offline=True)
    assert messages == []
    assert torch.equal(model.state_dict()["mlp.layers.0.weight"], reference["mlp.layers.0.weight"])
    ir.clear_cache()


def _real_safe_py():
    """The WebUI's own ``modules/safe.py`` when ``WEBUI_DIR`` names a v1.10.x checkout, else ``None``."""
    path = Path(os.environ.get("WEBUI_DIR", "/nonexistent")) / "modules" / "safe.py"
    return path if path.is_file() else None


@pytest.mark.skipif(_real_safe_py() is None, reason="set WEBUI_DIR to a WebUI checkout to read the release format "
                    "through its own modules/safe.py (webui_restricted_load above reproduces its rules)")
def test_the_webuis_own_safe_py_reads_the_release_format(release, monkeypatch):
    """Its ``modules.errors``/``modules.shared`` imports are answered by two small modules made here."""
    import types

    root, reference, _ = release
    reports: list[str] = []
    errors = types.ModuleType("modules.errors")
    errors.report = lambda message, exc_info=False: reports.append(f"{message} {sys.exc_info()[1]}")
    shared = types.ModuleType("modules.shared")
    shared.cmd_opts = types.SimpleNamespace(disable_safe_unpickle=False)
    package = types.ModuleType("modules")
    package.__path__ = []
    package.errors, package.shared = errors, shared
    for name, module in (("modules", package), ("modules.errors", errors), ("modules.shared", shared)):
        monkeypatch.setitem(sys.modules, name, module)
    original = torch.load
    spec = importlib.util.spec_from_file_location("modules.safe", _real_safe_py())
    safe = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(safe)  # replaces torch.load, as in the WebUI
        assert torch.load is safe.load
        state = ir._read_weights(root / "ImageReward.pt")
        plain = root.parent / "plain-for-safe.pt"
        torch.save({"x": torch.zeros(1)}, plain)
        assert torch.load(str(plain)) is None and ".format_version" in str(reports)  # the rule is live
    finally:
        torch.load = original
    assert torch.equal(state["mlp.layers.0.weight"], reference["mlp.layers.0.weight"])


def test_a_checkpoint_the_webui_refuses_is_one_clear_error(release, tmp_path, monkeypatch):
    root, _, _ = release
    (tmp_path / "med_config.json").write_bytes((root / "med_config.json").read_bytes())
    # a training checkpoint with its arguments, in the release's zip layout: argparse.Namespace is a forbidden global
    release_files.save_release_format({"w": torch.zeros(2), "args": argparse_namespace()}, tmp_path / "ImageReward.pt")
    ir.clear_cache()
    messages: list[str] = []
    monkeypatch.setattr(torch, "load", webui_restricted_load(torch.load, messages))
    built = _count_builds(monkeypatch)
    with pytest.raises(ScorerUnavailable, match="the WebUI refused to read ImageReward weights .*download "
                                                "ImageReward.pt again.*fidelity objective"):
        ir.load_imagereward(download_root=str(tmp_path), offline=True)
    assert "argparse/Namespace" in messages[-1] and built == [] and ir._CACHE == {}


def argparse_namespace():
    import argparse

    return argparse.Namespace(lr=1e-5)


def _count_builds(monkeypatch) -> list:
    module = ir._import_model_module()
    built: list = []
    original = module.ImageReward

    class Counting(original):
        def __init__(self, *a, **k):
            built.append(1)
            super().__init__(*a, **k)

    monkeypatch.setattr(module, "ImageReward", Counting)
    return built


@pytest.mark.parametrize("damage", ["truncated", "garbage", "not-a-state-dict"])
def test_a_damaged_checkpoint_is_one_clear_error_and_nothing_is_cached(release, tmp_path, monkeypatch, damage):
    root, _, _ = release
    shutil.copy(root / "med_config.json", tmp_path / "med_config.json")
    target = tmp_path / "ImageReward.pt"
    if damage == "truncated":  # a download cut short
        with open(root / "ImageReward.pt", "rb") as src:
            target.write_bytes(src.read(50_000_000))
        expected = "truncated or not a torch checkpoint"
    elif damage == "garbage":
        target.write_bytes(b"<html>rate limited</html>")
        expected = "truncated or not a torch checkpoint"
    else:
        torch.save([torch.zeros(1)], target)
        expected = "cannot read|not a state dict"
    ir.clear_cache()
    built = _count_builds(monkeypatch)
    with pytest.raises(ScorerUnavailable, match=f"({expected}).*download ImageReward.pt again"):
        ir.load_imagereward(download_root=str(tmp_path), offline=True)
    assert built == [] and ir._CACHE == {}


def test_offline_without_weights_names_the_files_and_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline=False is not passed: the environment says offline
    ir.clear_cache()
    with pytest.raises(ScorerUnavailable) as info:
        ir.load_imagereward(download_root=str(tmp_path / "empty"))
    message = str(info.value)
    assert "ImageReward.pt and med_config.json" in message and str(tmp_path / "empty") in message
    assert "THUDM/ImageReward" in message and "fidelity objective" in message and ir._CACHE == {}


def test_a_tokenizer_folder_in_the_download_folder_is_used(release, tmp_path):
    root, _, _ = release
    for name in ("ImageReward.pt", "med_config.json"):
        (tmp_path / name).symlink_to(root / name)
    (tmp_path / "bert-base-uncased").mkdir()  # no vocab.txt: the message says where it goes
    ir.clear_cache()
    with pytest.raises(ScorerUnavailable, match=r"vocab.txt into .*bert-base-uncased.*fidelity objective"):
        ir.load_imagereward(download_root=str(tmp_path), offline=True)
    assert ir._CACHE == {}


def test_install_py_leaves_pip_check_as_it_was_and_deps_py_makes_it_importable(tmp_path):
    """install.py's own main(), with a ``launch`` like the WebUI's, into an empty deps/ folder."""
    script = f"""
import importlib.util, json, subprocess, sys
sys.path.insert(0, {str(ROOT / 'tests' / 'imagereward_env')!r})
import install_deps
check = lambda: subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True).stdout
before = check()
install = install_deps.load_install_module({str(tmp_path / 'deps')!r})
launch = install_deps.PipLaunch()
install.main(launch_module=launch)
after = check()
spec = importlib.util.spec_from_file_location("deps", {str(ROOT / 'scripts' / 'dato_webui' / 'deps.py')!r})
deps = importlib.util.module_from_spec(spec); spec.loader.exec_module(deps)
same_folder = deps.DEPS == install_deps.load_install_module(None).DEPS  # both are <extension>/deps
deps.DEPS = install.DEPS
assert deps.add_to_path()
sys.path.insert(0, {str(ROOT)!r})
from dato.generators.search import imagereward as ir
module = ir._import_model_module()
print(json.dumps(dict(calls=launch.calls, before=before, after=after, file=module.__file__, same=same_folder)))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["calls"] == [f'install --no-deps --upgrade --target "{tmp_path / "deps"}" "image-reward==1.5" '
                            '"fairscale==0.4.13"']
    assert set(out["after"].splitlines()) <= set(out["before"].splitlines())
    assert out["file"].startswith(str(tmp_path / "deps")) and out["same"]


@pytest.mark.skipif(importlib.util.find_spec("ldm") is None, reason="the tiny fixture model needs ldm "
                    "(stable-diffusion-sdkit, installed with --no-deps by make_venv.sh)")
def test_a_search_optimises_the_real_imagereward_loaded_from_the_default_folder(release, tmp_path, monkeypatch):
    """The engine's own loader call (no scorer passed in), the files where a download leaves them."""
    from dato.evaluation.backends import builtin_backend
    from dato.generators.search import ScheduleSearch, SearchSettings

    root, _, _ = release
    monkeypatch.setattr(ir, "default_download_root", lambda: root)  # ~/.cache/ImageReward
    ir.clear_cache()
    backend = builtin_backend(latent_size=8, steps=5, cfg_scale=3.0, model="tiny")
    weight = torch.randn(3, 4, 1, 1, generator=torch.Generator().manual_seed(0)) * 0.5

    def decode(latents):  # a fixed random 'VAE decoder' so the latent-only fixture model makes images
        x = torch.nn.functional.conv2d(latents.float(), weight)
        return torch.sigmoid(torch.nn.functional.interpolate(x, scale_factor=8, mode="nearest"))

    backend.decode = decode
    settings = SearchSettings(steps=5, max_depth=1, population=4, generations=1, samples=1, seed=1,
                              quality="imagereward", prompts=("a photo of a red fox",), seed_presets=False,
                              results_dir=str(tmp_path), run_id="real-ir")
    results = ScheduleSearch(settings, backend).run()
    assert results["objectives"]["quality"]["name"] == "imagereward"
    assert not results["objectives"].get("quality_note")  # no fallback to fidelity
    qualities = [e["quality"] for e in results["evaluations"]]
    assert len(qualities) >= 4 and all(isinstance(q, float) and q == q for q in qualities)
    assert len(set(qualities)) > 1  # the schedules' images get different rewards
    for e in results["evaluations"]:
        assert e["details"]["imagereward"] == pytest.approx(e["quality"]) and "latent_snr_db" in e["details"]
    assert results["front"] and (tmp_path / "real-ir" / "results.json").is_file()
    on_disk = json.loads((tmp_path / "real-ir" / "results.json").read_text())
    assert on_disk["front"] == results["front"]
    ir.clear_cache()
