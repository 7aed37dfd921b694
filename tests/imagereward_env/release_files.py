"""ImageReward's download, made here: ``ImageReward.pt`` in the release's format with random weights,
``med_config.json`` and a ``bert-base-uncased`` tokenizer folder (small synthetic vocabulary, real layout).

Test tooling: ``tests/test_imagereward_real.py`` builds its files with :func:`write_release`, and the
opt-in real-WebUI suite (``tests/webui_real/test_real_imagereward.py``) needs them where the README
tells users to put them::

    PYTHON tests/imagereward_env/release_files.py ~/.cache/ImageReward --deps <extension>/deps

``PYTHON`` must have torch, torchvision, transformers and timm (the WebUI's venv does); ``--deps`` is the
folder ``install.py`` put ``image-reward`` into. The weights are random: rewards mean nothing, but every
key, shape and zip entry is the release's. About 1.8 GB of disk, 4 GB of memory, a minute on 2 CPUs.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import zipfile
from pathlib import Path

# BLIP's med_config.json as THUDM/ImageReward publishes it (BERT-base; encoder_width is replaced by the ViT's).
MED_CONFIG = {
    "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
    "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": 12,
    "num_hidden_layers": 12, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": 30524,
    "encoder_width": 768, "add_cross_attention": True,
}
WORDS = ["a", "photo", "photograph", "of", "red", "fox", "in", "the", "snow", "lighthouse", "at", "dusk", "cat",
         "blue", "sky"]
SPECIAL_TOKENS = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_tokenizer(folder: Path) -> Path:
    """``vocab.txt`` and ``tokenizer_config.json`` as ``bert-base-uncased`` has them (the vocabulary made up)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(SPECIAL_TOKENS + WORDS) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 512}))
    (folder / "config.json").write_text(json.dumps({"model_type": "bert",
                                                    "vocab_size": len(SPECIAL_TOKENS) + len(WORDS)}))
    return folder


def save_release_format(state: dict, path: Path) -> None:
    """``torch.save`` the state dict, keeping only the zip entries the release's torch wrote.

    torch 2.4+ adds ``.format_version`` and ``.storage_alignment``, which the WebUI's restricted loader
    (``modules/safe.py``) refuses; the released ``ImageReward.pt`` has ``<name>/data.pkl``,
    ``<name>/data/<n>`` and ``<name>/version`` only.
    """
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    keep = re.compile(r"^[^/]+/(data\.pkl|data/\d+|version)$")
    with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for name in src.namelist():
            if keep.match(name):
                out.writestr("ImageReward/" + name.split("/", 1)[1], src.read(name))


def randomise(state: dict, seed: int = 0) -> None:
    """Random weights in place, not the package's init (zero biases would hide key mix-ups)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            continue
        if tensor.dim() == 1 and "norm" in name.lower() and name.endswith("weight"):
            values = 1 + 0.02 * torch.randn(tensor.shape, generator=generator)  # gains near 1
        elif tensor.dim() >= 2:  # variance-preserving: different images get different rewards
            values = torch.randn(tensor.shape, generator=generator) * tensor[0].numel() ** -0.5
        else:
            values = 0.02 * torch.randn(tensor.shape, generator=generator)
        tensor.copy_(values)


def write_release(root: Path, model_module, seed: int = 0) -> dict:
    """``root/ImageReward.pt`` + ``root/med_config.json``; returns the state dict written.

    ``model_module`` is the real package's ``ImageReward.ImageReward`` module (its ``ImageReward`` class
    builds BLIP from ``med_config.json`` as the package's loader does).
    """
    import torch

    root.mkdir(parents=True, exist_ok=True)
    (root / "med_config.json").write_text(json.dumps(MED_CONFIG, indent=2))
    torch.manual_seed(seed)
    model = model_module.ImageReward(med_config=str(root / "med_config.json"), device="cpu")
    state = model.state_dict()
    del model
    randomise(state, seed)
    save_release_format(state, root / "ImageReward.pt")
    return state


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="the download folder, e.g. ~/.cache/ImageReward")
    parser.add_argument("--deps", type=Path, required=True, help="the folder install.py put image-reward into")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sys.path.append(str(args.deps.resolve()))
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from dato.generators.search.imagereward import _import_model_module, _tokenizer_from

    module = _import_model_module()  # the package's model module, as the search loads it
    root = args.root.expanduser()
    tokenizer = write_tokenizer(root / "bert-base-uncased")
    with _tokenizer_from(tokenizer):  # BLIP builds its tokenizer: from this folder, as the search does offline
        state = write_release(root, module, args.seed)
    print(f"wrote {root}/ImageReward.pt ({len(state)} tensors), med_config.json, bert-base-uncased/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
