#!/usr/bin/env bash
# Executes notebooks with nbval on the GPU device machine, as `make test` does on a CPU
# (pytest with pyproject's addopts: --nbval-lax --nbval-current-env --nbval-sanitize-with ...),
# in the profile BOOK_PROFILE (default ci). Made for the device tool's `run`; the whole
# procedure, with the calls to make, is in scripts/gpu/README.md.
#
#   [BOOK_PROFILE=ci|full] [OUT_TAG=name] bash scripts/gpu/run_nbval.sh \
#       [--budget SECONDS] [--stage-only] (all | NOTEBOOK.ipynb ...)
#
# Every call first stages what scripts/gpu/prepare.sh made and `carry` brought:
#   .gpu-carry/part*/  pieces of the asset archives: kept in /tmp/book-gpu/stash across the
#                      calls of one warm machine; an archive whose pieces are all there is
#                      checked (sha256) and unpacked into /tmp/book-gpu/assets, a PYTHONPATH
#                      entry where book_utils.assets finds each asset's module folder;
#   .whl/              wheels of the packages the image lacks: pip install --no-index --no-deps
#                      --target /tmp/book-gpu/site, once per machine, then an import check.
# Then it runs each notebook in its own pytest (so that the time budget can stop between
# notebooks) and, under $OUT: nbval[-OUT_TAG].log (everything printed), junit[-OUT_TAG].xml
# (one testsuite per notebook; those skipped for time are <skipped>), times[-OUT_TAG].md (rows
# for README's "Runs on a GPU" table) and env.txt (GPU, driver, Python, torch, packages).
# --budget (default 540 s, from this script's start; GPU_DEADLINE, epoch seconds, can cut it
# shorter) stops starting notebooks when under MIN_START_S (default 30) seconds are left, and a
# running notebook is stopped at the deadline. Exit status: 0 all ran and passed, 1 a notebook
# failed or timed out, 2 usage, 3 all passed but some were skipped for time.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
REPO=$PWD
T0=$(date +%s)

budget=540
stage_only=0
notebooks=()
while [ $# -gt 0 ]; do
  case "$1" in
    --budget) budget=$2; shift 2 ;;
    --budget=*) budget=${1#--budget=}; shift ;;
    --stage-only) stage_only=1; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    all) mapfile -t toc < <(sed -n 's/.*file: //p' _toc.yml)
         for f in "${toc[@]}"; do [ -f "$f.ipynb" ] && notebooks+=("$f.ipynb"); done
         shift ;;
    *) notebooks+=("$1"); shift ;;
  esac
done
if [ "$stage_only" = 0 ] && [ ${#notebooks[@]} = 0 ]; then
  echo "usage: bash $0 [--budget S] [--stage-only] (all | NOTEBOOK.ipynb ...)" >&2
  exit 2
fi
deadline=$((T0 + budget))
if [ -n "${GPU_DEADLINE:-}" ] && [ "$GPU_DEADLINE" -lt "$deadline" ]; then
  deadline=$GPU_DEADLINE
fi
MIN_START_S=${MIN_START_S:-30}

export BOOK_PROFILE=${BOOK_PROFILE:-ci}
TAG=${OUT_TAG:-}
SUFFIX=${TAG:+-$TAG}
export OUT=${OUT:-/tmp/book-gpu/out}
BASE=/tmp/book-gpu  # outlives a call while the machine stays warm; the working tree's copy may not
mkdir -p "$OUT" "$BASE"/{stash,assets,site,cache,hf,mpl,jupyter,ipython,junit}
LOG=$OUT/nbval$SUFFIX.log

# the Makefile's environment, with every cache under /tmp: nothing is fetched from a hub
export HF_HUB_OFFLINE=1 HF_HOME=$BASE/hf BOOK_CACHE=$BASE/cache MPLCONFIGDIR=$BASE/mpl
export JUPYTER_RUNTIME_DIR=$BASE/jupyter JUPYTER_PLATFORM_DIRS=1 IPYTHONDIR=$BASE/ipython
export PYTHONUNBUFFERED=1
export PYTHONPATH=$REPO:$BASE/site:$BASE/assets${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python3}  # on nvidia-h200, the image's Python 3.12 with torch (CUDA)

installed_now=0
left() { echo $((deadline - $(date +%s))); }

stage_assets() {
  local part f name sha size pieces p missing n
  for part in .gpu-carry/part*/; do
    [ -d "$part" ] || continue
    n=0
    for f in "$part"*; do
      case "$(basename "$f")" in
        MANIFEST) cp "$f" "$BASE/MANIFEST" ;;
        PLAN.txt) ;;
        *) n=$((n + 1))
           # a piece that differs is from an older prepare.sh run: the carried one wins
           cmp -s "$f" "$BASE/stash/$(basename "$f")" || cp "$f" "$BASE/stash/" ;;
      esac
    done
    echo "staged $part: $n piece(s)"
  done
  if [ ! -f "$BASE/MANIFEST" ]; then
    echo "ASSETS: no MANIFEST yet (carry .gpu-carry/partN; see scripts/gpu/README.md)"
    return
  fi
  while read -r name sha size pieces; do
    [ -n "$name" ] || continue
    if [ "$(cat "$BASE/assets/.ok-$name" 2>/dev/null)" = "$sha" ]; then
      echo "ASSET $name: ready"
      continue
    fi
    missing=()
    for p in $pieces; do
      [ -f "$BASE/stash/${p%@*}" ] || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
      echo "ASSET $name: INCOMPLETE, still missing ${missing[*]}"
      continue
    fi
    for p in $pieces; do cat "$BASE/stash/${p%@*}"; done >"$BASE/$name"
    if [ "$(sha256sum "$BASE/$name" | cut -d' ' -f1)" != "$sha" ]; then
      echo "ASSET $name: BAD CHECKSUM, pieces removed (carry its parts again)"
      for p in $pieces; do rm -f "$BASE/stash/${p%@*}"; done
    elif tar -xzf "$BASE/$name" -C "$BASE/assets"; then
      echo "$sha" >"$BASE/assets/.ok-$name"
      echo "ASSET $name: unpacked ($size bytes)"
    else
      echo "ASSET $name: could not be unpacked"
    fi
    rm -f "$BASE/$name"
  done <"$BASE/MANIFEST"
}

install_wheels() {
  local stamp
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    [ -f "$BASE/site/.stamp" ] && echo "WHEELS: installed by an earlier call" \
      || echo "WHEELS: NOT INSTALLED (carry .whl; see scripts/gpu/README.md)"
    return
  fi
  stamp=$(ls .whl | sort | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$BASE/site/.stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "WHEELS: already installed"
    return
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$BASE/site" .whl/*.whl || { echo "WHEELS: pip install FAILED"; return 1; }
  echo "$stamp" >"$BASE/site/.stamp"
  installed_now=1
  echo "WHEELS: installed $(ls .whl/*.whl | wc -l) into $BASE/site"
  echo "-- pip check (conflicts between the carried wheels and the image's packages):"
  "$PY" -m pip check 2>&1 | head -40
  echo "-- imports the notebooks need:"
  "$PY" - <<'PY' 2>&1
import importlib, importlib.metadata as md
names = ["torch", "transformers", "tokenizers", "accelerate", "peft", "datasets", "evaluate",
         "trl", "lm_eval", "gguf", "onnx", "onnxruntime", "onnxscript", "fastapi", "uvicorn",
         "openai", "pydantic", "myst_nb.ext.glue", "nbval", "ipykernel", "nbformat", "pandas",
         "numpy", "matplotlib", "seaborn", "sklearn", "scipy", "huggingface_hub"]
for n in names:
    try:
        importlib.import_module(n)
        status = "ok"
    except Exception as e:  # report every failure, not the first
        status = f"IMPORT FAILED: {type(e).__name__}: {e}"
    dist = {"sklearn": "scikit-learn", "myst_nb.ext.glue": "myst-nb"}.get(n, n)
    try:
        version = md.version(dist)
    except md.PackageNotFoundError:
        version = "?"
    print(f"  {n:18} {version:14} {status}")
PY
}

env_report() {
  {
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "kernel: $(uname -r)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 \
      | sed 's/^/gpu: /'
    "$PY" - <<'PY' 2>&1
import platform, importlib.metadata as md
import torch
print(f"python: {platform.python_version()} ({__import__('sys').executable})")
print(f"torch: {torch.__version__}, CUDA {torch.version.cuda}, "
      f"available={torch.cuda.is_available()}, "
      f"device={torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-'}, "
      f"bf16={torch.cuda.is_available() and torch.cuda.is_bf16_supported()}")
for n in ["transformers", "tokenizers", "accelerate", "peft", "trl", "datasets", "lm_eval",
          "huggingface_hub", "numpy", "pandas", "onnxruntime", "nbval", "ipykernel", "pytest"]:
    try:
        print(f"{n}: {md.version(n)}")
    except md.PackageNotFoundError:
        print(f"{n}: MISSING")
PY
    echo "assets (python -m book_utils.assets list):"
    "$PY" -m book_utils.assets list 2>&1 | sed 's/^/  /'
  } | tee "$OUT/env.txt"
}

run_notebooks() {
  local i=0 nb start rc wall result t
  : >"$BASE/rows$SUFFIX.tsv"
  rm -f "$BASE"/junit/"${TAG:-run}"-*.xml
  for nb in "${notebooks[@]}"; do
    i=$((i + 1))
    t=$(left)
    if [ ! -f "$nb" ]; then
      echo "== [$i/${#notebooks[@]}] $nb: NO SUCH NOTEBOOK"
      printf '%s\t%s\t%s\n' "$nb" "-" "missing" >>"$BASE/rows$SUFFIX.tsv"
      continue
    fi
    if [ "$t" -lt "$MIN_START_S" ]; then
      echo "== [$i/${#notebooks[@]}] $nb: SKIPPED, time budget spent (${t} s left)"
      printf '%s\t%s\t%s\n' "$nb" "-" "skipped" >>"$BASE/rows$SUFFIX.tsv"
      continue
    fi
    echo "== [$i/${#notebooks[@]}] $nb (BOOK_PROFILE=$BOOK_PROFILE, ${t} s left)"
    start=$(date +%s.%N)
    timeout -k 20 "$t" "$PY" -m pytest "$nb" --nbval-cell-timeout="$t" \
      --junitxml="$BASE/junit/${TAG:-run}-$(printf %02d $i).xml" -o junit_suite_name="$nb"
    rc=$?
    wall=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {print b - a}')
    case $rc in
      0) result=passed ;;
      1) result=failed ;;
      124|137) result="stopped at the time budget" ;;
      *) result="error (pytest exit $rc)" ;;
    esac
    printf '== %s: %s in %.0f s\n' "$nb" "$result" "$wall"
    printf '%s\t%.0f\t%s\n' "$nb" "$wall" "$result" >>"$BASE/rows$SUFFIX.tsv"
  done
}

report() {
  "$PY" - "$BASE" "$TAG" "$SUFFIX" "$OUT" "$BOOK_PROFILE" <<'PY'
import glob, os, subprocess, sys, xml.etree.ElementTree as ET
from datetime import date
base, tag, suffix, out, profile = sys.argv[1:6]
rows = [line.rstrip("\n").split("\t") for line in open(f"{base}/rows{suffix}.tsv")]
# one junit file: the per-notebook suites, plus a skipped case for each notebook not run
root = ET.Element("testsuites", name=f"nbval BOOK_PROFILE={profile}")
for path in sorted(glob.glob(f"{base}/junit/{tag or 'run'}-*.xml")):
    tree = ET.parse(path).getroot()
    for suite in ([tree] if tree.tag == "testsuite" else list(tree)):
        root.append(suite)
for nb, wall, result in rows:
    if result in ("skipped", "missing"):
        suite = ET.SubElement(root, "testsuite", name=nb, tests="1", skipped="1")
        case = ET.SubElement(suite, "testcase", classname=nb, name=nb)
        ET.SubElement(case, "skipped", message=f"{result}: not run in this call")
    elif result.startswith("stopped"):  # killed by timeout: pytest wrote no report
        suite = ET.SubElement(root, "testsuite", name=nb, tests="1", errors="1")
        case = ET.SubElement(suite, "testcase", classname=nb, name=nb, time=wall)
        ET.SubElement(case, "error", message=f"{result} after {wall} s")
ET.ElementTree(root).write(f"{out}/junit{suffix}.xml", encoding="utf-8", xml_declaration=True)
try:
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip().splitlines()[0]
except Exception:
    gpu = "no GPU"
import torch
table = ["| notebook | GPU | torch | profile | wall time | result | date |",
         "| --- | --- | --- | --- | --- | --- | --- |"]
for nb, wall, result in rows:
    wall = f"{wall} s" if wall != "-" else "—"
    table.append(f"| `{nb}` | {gpu} | {torch.__version__} | {profile} | {wall} | {result} |"
                 f" {date.today().isoformat()} |")
open(f"{out}/times{suffix}.md", "w").write("\n".join(table) + "\n")
print("\n".join(table))
PY
}

main() {
  echo "run_nbval.sh: BOOK_PROFILE=$BOOK_PROFILE, budget $(left) s, $(date -u +%H:%M:%SZ), $REPO"
  stage_assets
  install_wheels
  # the environment, once per command (a staging call reports it only where it installed)
  if [ ! -f "$OUT/env.txt" ] && { [ "$stage_only" = 0 ] || [ "$installed_now" = 1 ]; }; then
    env_report
  fi
  if [ "$stage_only" = 1 ]; then
    echo "staged only (--stage-only); $(left) s of the budget left"
    return 0
  fi
  run_notebooks
  echo "== per-notebook wall time (kernel start included), BOOK_PROFILE=$BOOK_PROFILE:"
  report
  local bad skipped
  bad=$(cut -f3 "$BASE/rows$SUFFIX.tsv" | grep -cv -e '^passed$' -e '^skipped$')
  skipped=$(cut -f3 "$BASE/rows$SUFFIX.tsv" | grep -c '^skipped$')
  echo "done in $(( $(date +%s) - T0 )) s: $bad not passed, $skipped skipped for time"
  [ "$bad" -gt 0 ] && return 1
  [ "$skipped" -gt 0 ] && return 3
  return 0
}

main 2>&1 | tee -a "$LOG"
exit "${PIPESTATUS[0]}"
