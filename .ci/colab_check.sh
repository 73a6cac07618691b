#!/usr/bin/env bash
# The Colab path, checked. A fresh virtual environment gets what Colab brings (a CPU
# torch, Jupyter's kernel and executor), then the package exactly as a notebook's first
# cell installs it: `pip install "llm-sft-book @ <release>"`, with this clone in place of
# the tagged URL and no constraints file, so pip picks the newest versions pyproject.toml
# allows. Then the assets step, and the notebooks on the fastest-moving libraries
# (transformers' Trainer, TRL, PEFT, lm-eval) in the ci profile, with an empty cache.
# When an upstream release breaks this, fix the code or cap the range in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
work=$(mktemp -d /tmp/colab-check.XXXX)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
bin="$work/venv/bin"
"$bin/pip" install -q --upgrade pip
torch=$(sed -n 's/^torch==//p' constraints.txt)
"$bin/pip" install -q "torch==$torch" ipykernel nbclient
"$bin/pip" install -q "llm-sft-book @ file://$PWD"
"$bin/python" -m book_utils.assets install
"$bin/python" - <<'PY'
from importlib.metadata import version

names = ["torch", "transformers", "trl", "peft", "datasets", "accelerate", "lm-eval"]
print("Colab check, newest allowed:", ", ".join(f"{n} {version(n)}" for n in names))
PY
export HF_HUB_OFFLINE=1 HF_HOME="$work/huggingface" BOOK_CACHE="$work/cache"
export MPLCONFIGDIR="$work/matplotlib" BOOK_PROFILE=ci
for notebook in \
  book/04_sft/01_classification.ipynb \
  book/04_sft/04_instruction_tuning.ipynb \
  book/04_sft/06_lora_smollm2.ipynb \
  book/04_sft/07_evaluation.ipynb; do
  began=$(date +%s)
  "$bin/jupyter-execute" --timeout=600 "$notebook" >"$work/run.log" 2>&1 \
    || { tail -40 "$work/run.log"; echo "Colab check FAILED: $notebook"; exit 1; }
  echo "Colab check: $notebook ran in $(( $(date +%s) - began )) s"
done
echo "Colab check passed in $(( $(date +%s) - start )) s"
