"""The ImageReward objective: scoring pairs, the lazy once-per-process loader, and falling back without weights.

Nothing here touches the network. Two levels, both fast; the real ``image-reward`` 1.5 package
(installed by ``install.py``, real BLIP, release-format checkpoint, the WebUI's restricted
``torch.load``) is tested in ``tests/test_imagereward_real.py``, in a venv of its own:

* a locally built scorer (a small torch model with random weights behind
  ImageReward's ``score(prompt, [PIL images])`` interface) drives a real search;
* the loader runs against a stand-in ``ImageReward`` package written to a temp
  folder with the real package's layout (a package ``__init__`` that needs a
  missing module, ``ImageReward/ImageReward.py`` with the model class taking
  ``med_config``, BLIP's ``init_tokenizer`` reading ``bert-base-uncased``), local
  ``med_config.json``, tokenizer folder and weights file: kept for speed, so the
  normal suite covers every message a user can meet.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import dato
from dato.evaluation.backends import builtin_backend
from dato.generators.search import ScheduleSearch, ScorerUnavailable, SearchSettings, imagereward_quality
from dato.generators.search import imagereward as ir
from dato.generators.search.objectives import Samples

ROOT = Path(__file__).resolve().parents[1]


class LocalScorer(torch.nn.Module):
    """ImageReward's interface with random weights: a conv net on the image, a hashed bag of prompt words."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.SiLU(),
                                        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.words = torch.nn.EmbeddingBag(97, 8)
        self.calls: list[tuple[str, int]] = []

    def score(self, prompt: str, images: list):
        import numpy as np

        self.calls.append((prompt, len(images)))
        x = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB").resize((32, 32)), dtype=np.float32) / 255)
                         .permute(2, 0, 1) for im in images])
        ids = torch.tensor([int(hashlib.md5(w.encode()).hexdigest(), 16) % 97 for w in prompt.split()])
        text = self.words(ids.unsqueeze(0))
        rewards = (self.conv(x) * text).sum(-1)
        return rewards.tolist() if len(images) > 1 else float(rewards[0])


def _decoder(seed: int = 0):
    """A fixed random 'VAE decoder' (4 latent channels -> RGB, x8 upsampling) so the tiny model makes images."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(3, 4, 1, 1, generator=gen) * 0.5

    def decode(latents: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.conv2d(latents.float(), weight.to(latents.device))
        return torch.sigmoid(torch.nn.functional.interpolate(x, scale_factor=8, mode="nearest"))

    return decode


@pytest.fixture(scope="module")
def backend():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    b = builtin_backend(latent_size=8, steps=5, cfg_scale=3.0, model="tiny")
    b.decode = _decoder()
    yield b
    dato.remove_patch(b.unet)
    torch.set_num_threads(threads)


def _settings(tmp_path, **kw):
    base = dict(steps=5, max_depth=1, population=6, generations=2, samples=3, seed=1, quality="imagereward",
                prompts=("a red fox", "a lighthouse at dusk"), seed_presets=False, results_dir=str(tmp_path),
                run_id="ir")
    base.update(kw)
    return SearchSettings(**base)


def test_each_image_is_scored_with_the_prompt_it_was_made_from():
    images = torch.rand(4, 3, 16, 16)
    pairs = [("a", 0), ("b", 1), ("a", 2), ("c", 3)]
    seen = []

    class Recorder:
        def score(self, prompt, pil_images):
            seen.append((prompt, len(pil_images)))
            return [float(ord(prompt))] * len(pil_images) if len(pil_images) > 1 else float(ord(prompt))

    value, details = imagereward_quality(Samples(pairs, torch.zeros(4, 4, 2, 2), images), Recorder())
    assert sorted(seen) == [("a", 2), ("b", 1), ("c", 1)]
    assert details["rewards"] == [97.0, 98.0, 97.0, 99.0]
    assert value == pytest.approx((97 + 98 + 97 + 99) / 4)
    with pytest.raises(ValueError, match="needs decoded images"):
        imagereward_quality(Samples(pairs, torch.zeros(4, 4, 2, 2)), Recorder())


def test_search_with_a_local_random_weight_scorer_maximises_reward(tmp_path, backend):
    scorer = LocalScorer()
    results = ScheduleSearch(_settings(tmp_path, min_quality=-0.05), backend, scorer=scorer).run()
    assert results["objectives"]["quality"]["name"] == "imagereward"
    assert results["objectives"]["min_quality"] == pytest.approx(results["baseline"]["quality"] - 0.05)
    # every evaluation scored the three (prompt, seed) pairs: "a red fox" twice, the other prompt once
    assert ("a red fox", 2) in scorer.calls and ("a lighthouse at dusk", 1) in scorer.calls
    by_id = {e["id"]: e for e in results["evaluations"]}
    for e in results["evaluations"]:
        assert "latent_snr_db" in e["details"]  # fidelity is recorded beside the reward
    for i in results["front"]:
        assert by_id[i]["feasible"] and by_id[i]["quality"] >= results["baseline"]["quality"] - 0.05
    # the quality of a front point is the scorer's mean reward over its images
    pick = by_id[results["front"][0]]
    from dato.generators.search import schedule_from_result

    samples = backend.generate(schedule_from_result(results, pick["id"], "p"), _settings(tmp_path).pairs())
    assert imagereward_quality(samples, scorer)[0] == pytest.approx(pick["quality"], abs=1e-5)


def test_without_the_package_the_search_falls_back_to_fidelity_or_stops(tmp_path, backend, monkeypatch):
    def unavailable():
        return ir.load_imagereward(weights=None, offline=True, download_root=str(tmp_path / "none"))

    # hermetic: not this checkout's deps/ (install.py may have filled it; the WebUI glue puts it on sys.path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p).resolve() != ir.EXTENSION_DEPS.resolve()])
    monkeypatch.setattr(ir, "EXTENSION_DEPS", tmp_path / "no-deps")
    for name in [n for n in sys.modules if n == "ImageReward" or n.startswith("ImageReward.")]:
        monkeypatch.delitem(sys.modules, name)
    if importlib.util.find_spec("ImageReward") is None:
        with pytest.raises(ScorerUnavailable, match="image-reward package is not installed.*fidelity objective"):
            unavailable()
    else:  # installed: then the weights are what is missing (offline, empty folder)
        with pytest.raises(ScorerUnavailable, match="needs ImageReward.pt and med_config.json in .*downloads are off"
                                                    ".*fidelity objective"):
            unavailable()
    results = ScheduleSearch(_settings(tmp_path, run_id="fb", generations=1, population=4), backend,
                             scorer_loader=unavailable).run()
    assert results["objectives"]["quality"]["name"] == "fidelity-psnr"
    assert "fell back to fidelity" in results["objectives"]["quality_note"]
    with pytest.raises(ScorerUnavailable):
        ScheduleSearch(_settings(tmp_path, run_id="strict", imagereward_fallback="error"), backend,
                       scorer_loader=unavailable).run()


# ------------------------------------------------------------ stand-in package
_STANDIN = {
    "ImageReward/__init__.py": """
        from .utils import *   # the real package's __init__ pulls in its training script and CLIP scorers
    """,
    "ImageReward/utils.py": """
        import clip_package_that_pypi_does_not_ship  # noqa: F401  (the real one imports `clip`)
    """,
    "ImageReward/models/__init__.py": """
        from .AestheticScore import *
    """,
    "ImageReward/models/AestheticScore.py": """
        import clip_package_that_pypi_does_not_ship  # noqa: F401
    """,
    "ImageReward/models/BLIP/__init__.py": """
        from .blip_pretrain import *
    """,
    "ImageReward/models/BLIP/blip.py": """
        import os

        class BertTokenizer:
            def __init__(self, vocab):
                self.vocab = vocab

            @classmethod
            def from_pretrained(cls, name, **kwargs):
                path = os.path.join(str(name), "vocab.txt")
                if not os.path.isfile(path):
                    raise OSError(f"We couldn't connect to the hub to load {name!r}")
                with open(path) as fh:
                    return cls([line.strip() for line in fh])

        def init_tokenizer():
            return BertTokenizer.from_pretrained("bert-base-uncased")
    """,
    "ImageReward/models/BLIP/blip_pretrain.py": """
        import json
        from torch import nn
        from .blip import init_tokenizer

        class BLIP_Pretrain(nn.Module):
            def __init__(self, med_config="med_config.json", image_size=224, vit="large"):
                super().__init__()
                self.tokenizer = init_tokenizer()
                with open(med_config) as fh:
                    width = json.load(fh)["hidden_size"]
                self.visual_encoder = nn.Sequential(nn.Conv2d(3, width, 8, stride=8), nn.AdaptiveAvgPool2d(1),
                                                    nn.Flatten())
                self.text_embed = nn.Embedding(len(self.tokenizer.vocab), width)
    """,
    "ImageReward/ImageReward.py": """
        import torch
        from torch import nn
        from .models.BLIP.blip_pretrain import BLIP_Pretrain

        class ImageReward(nn.Module):
            def __init__(self, med_config, device="cpu"):
                super().__init__()
                self.device = device
                self.blip = BLIP_Pretrain(image_size=224, vit="large", med_config=med_config)
                self.mlp = nn.Linear(self.blip.text_embed.embedding_dim, 1)

            def score(self, prompt, images):
                vocab = self.blip.tokenizer.vocab
                ids = torch.tensor([vocab.index(w) if w in vocab else 0 for w in prompt.split()] or [0])
                text = self.blip.text_embed(ids).mean(0)
                out = []
                for im in images:
                    x = torch.tensor(list(im.convert("RGB").resize((16, 16)).getdata()), dtype=torch.float32)
                    x = x.reshape(16, 16, 3).permute(2, 0, 1)[None] / 255
                    out.append(float(self.mlp(self.blip.visual_encoder(x) * text)[0, 0]))
                return out if len(out) > 1 else out[0]
    """,
}


@pytest.fixture()
def standin(tmp_path, monkeypatch):
    root = tmp_path / "site"
    for rel, text in _STANDIN.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(root))
    for name in [n for n in sys.modules if n == "ImageReward" or n.startswith("ImageReward.")]:
        monkeypatch.delitem(sys.modules, name)
    ir.clear_cache()
    files = tmp_path / "files"
    files.mkdir()
    (files / "med_config.json").write_text(json.dumps({"hidden_size": 12}))
    tok = tmp_path / "tokenizer"
    tok.mkdir()
    (tok / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "a", "red", "fox", "lighthouse"]))
    yield files, tok
    ir.clear_cache()
    for name in [n for n in sys.modules if n == "ImageReward" or n.startswith("ImageReward.")]:
        sys.modules.pop(name, None)


def test_loader_builds_the_package_model_from_local_files_once_per_process(standin, tmp_path):
    files, tok = standin
    with pytest.raises(ScorerUnavailable, match="needs ImageReward.pt in .* downloads are off"):
        ir.load_imagereward(download_root=str(files), offline=True, tokenizer=str(tok))
    # random weights through the package's own class, saved where a download would have put them
    module = sys.modules["ImageReward.ImageReward"]
    torch.manual_seed(0)
    with ir._tokenizer_from(tok):
        model = module.ImageReward(med_config=str(files / "med_config.json"), device="cpu")
    torch.save(model.state_dict(), files / "ImageReward.pt")
    first = ir.load_imagereward(download_root=str(files), offline=True, tokenizer=str(tok))
    assert first is ir.load_imagereward(download_root=str(files), offline=True, tokenizer=str(tok))
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), model.state_dict().values(),
                                                  strict=True))
    from PIL import Image

    rewards = first.score("a red fox", [Image.new("RGB", (64, 64), c) for c in ("red", "blue")])
    assert len(rewards) == 2 and rewards[0] != rewards[1]
    # the package's __init__ (which needed a missing module) never ran and is not left half-imported
    assert "ImageReward" not in sys.modules or getattr(sys.modules["ImageReward"], "__file__", None)


def test_loader_explains_a_missing_tokenizer_and_bad_weights(standin, tmp_path):
    files, tok = standin
    with pytest.raises(ScorerUnavailable, match="tokenizer .*could not be loaded.*fidelity objective"):
        ir.load_imagereward(download_root=str(files), offline=True, random_weights=True)
    bad = tmp_path / "bad.pt"
    torch.save({"something": torch.zeros(1)}, bad)
    with pytest.raises(ScorerUnavailable, match="does not look like ImageReward weights"):
        ir.load_imagereward(weights=str(bad), med_config=str(files / "med_config.json"), tokenizer=str(tok))
    with pytest.raises(ScorerUnavailable, match="does not exist"):
        ir.load_imagereward(weights=str(tmp_path / "missing.pt"), med_config=str(files / "med_config.json"),
                            tokenizer=str(tok), offline=True)


# ------------------------------------------------------------ what a user meets when something is missing or broken
def test_without_the_package_the_message_is_the_hand_install_line_of_the_docs(monkeypatch):
    """Under --skip-install, install.py never ran: the message gives the command docs/webui.md gives."""
    for name in [n for n in sys.modules if n == "ImageReward" or n.startswith("ImageReward.")]:
        monkeypatch.delitem(sys.modules, name)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.split(".")[0] == "ImageReward" else real_find_spec(name, *a))
    monkeypatch.setattr(importlib, "import_module", _no_image_reward(importlib.import_module))
    with pytest.raises(ScorerUnavailable) as info:
        ir.load_imagereward(offline=True)
    line = f'-m pip install --no-deps --target "{ROOT / "deps"}" image-reward==1.5 fairscale==0.4.13'
    assert line in str(info.value) and "--skip-install" in str(info.value)
    docs = (ROOT / "docs" / "webui.md").read_text()
    assert "-m pip install --no-deps --target extensions/sd-webui-dato/deps image-reward==1.5 fairscale==0.4.13" in docs


def _no_image_reward(import_module):
    def fake(name, *a):
        if name.split(".")[0] == "ImageReward":
            raise ModuleNotFoundError(f"No module named {name.split('.')[0]!r}", name="ImageReward")
        return import_module(name, *a)

    return fake


def test_without_weights_or_network_one_message_names_both_files_and_the_folder(standin, tmp_path, monkeypatch):
    _, tok = standin
    import huggingface_hub

    def no_network(**kwargs):
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    empty = tmp_path / "empty"
    with pytest.raises(ScorerUnavailable) as info:
        ir.load_imagereward(download_root=str(empty), tokenizer=str(tok))
    message = str(info.value)
    assert message.count("\n") == 0 and "ImageReward.pt and med_config.json" in message
    assert repr(str(empty)) in message and "download from THUDM/ImageReward failed (ConnectionError" in message
    assert "fidelity objective" in message and ir._CACHE == {}
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the environment's offline switch is honoured: no download tried
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda **kw: pytest.fail("downloaded while offline"))
    with pytest.raises(ScorerUnavailable, match="downloads are off"):
        ir.load_imagereward(download_root=str(empty), tokenizer=str(tok))


def _counting_builds(monkeypatch) -> list:
    module = sys.modules["ImageReward.ImageReward"]
    built: list = []
    original = module.ImageReward

    class Counting(original):
        def __init__(self, *a, **k):
            built.append(1)
            super().__init__(*a, **k)

    monkeypatch.setattr(module, "ImageReward", Counting)
    return built


@pytest.mark.parametrize("damage", ["truncated", "html page", "a list", "refused by the WebUI"])
def test_a_damaged_weights_file_is_one_clear_error_before_any_model_is_built(standin, tmp_path, monkeypatch,
                                                                             damage):
    files, tok = standin
    ir.load_imagereward(download_root=str(files), offline=True, tokenizer=str(tok), random_weights=True)
    ir.clear_cache()  # (the package module is imported now)
    good = tmp_path / "good.pt"
    torch.save({"mlp.weight": torch.zeros(1, 12)}, good)
    target = files / "ImageReward.pt"
    expected = "truncated or not a torch checkpoint"
    if damage == "truncated":
        target.write_bytes(good.read_bytes()[:200])
    elif damage == "html page":
        target.write_bytes(b"<html>Too Many Requests</html>")
    elif damage == "a list":
        torch.save([torch.zeros(1)], target)
        expected = "hold a list, not a state dict"
    else:
        target.write_bytes(good.read_bytes())
        monkeypatch.setattr(torch, "load", lambda *a, **k: None)  # modules/safe.py returns None when it refuses
        expected = "the WebUI refused to read"
    built = _counting_builds(monkeypatch)
    with pytest.raises(ScorerUnavailable, match=f"{expected}.*download ImageReward.pt again.*fidelity objective"):
        ir.load_imagereward(download_root=str(files), offline=True, tokenizer=str(tok))
    assert built == [] and ir._CACHE == {}


def test_a_tokenizer_folder_beside_the_weights_is_used(standin, tmp_path):
    files, tok = standin
    (files / "bert-base-uncased").mkdir()
    (files / "bert-base-uncased" / "vocab.txt").write_text((tok / "vocab.txt").read_text())
    model = ir.load_imagereward(download_root=str(files), offline=True, random_weights=True)
    assert model.blip.tokenizer.vocab[-1] == "lighthouse"
