# The book's commands. On a fresh machine:
#   make book     # set up everything (venv, pinned packages, offline assets) and build the site   (minutes)
#   make test     # unit tests, ruff, every notebook in the ci profile (nbval), the site in Chromium
#   make refresh  # re-execute every notebook in the full profile and store the outputs            (slow on CPU)
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.book-installed
NOTEBOOKS = $(wildcard $(addsuffix .ipynb,$(shell sed -n 's/.*file: //p' _toc.yml)))  # in book order
# No request leaves the machine: the Hub is never contacted and every cache lives in the project.
export HF_HUB_OFFLINE = 1
export HF_HOME = $(CURDIR)/.cache/huggingface
export BOOK_CACHE = $(CURDIR)/.cache/book
export MPLCONFIGDIR = $(CURDIR)/.cache/matplotlib

.PHONY: setup book test refresh chromium clean

setup: $(STAMP)

$(STAMP): requirements.txt constraints.txt pyproject.toml book_utils/assets.py
	@$(PYTHON) -c "import sys; assert sys.version_info >= (3, 11), 'Python >= 3.11 is needed, this is ' + sys.version"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt -c constraints.txt
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/python -m book_utils.assets install
	@touch $@

book: setup
	$(BIN)/jupyter-book build . -W -n --keep-going
	@echo "Open _build/html/index.html"

chromium:
	@{ command -v chromium >/dev/null && fc-list :lang=zh | grep -q .; } || { \
	  echo "Installing Debian's chromium and a Chinese font (the glossary's terms) for the site test"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    chromium fonts-wqy-microhei >/dev/null; }

test: setup chromium
	BOOK_PROFILE=ci $(BIN)/pytest

refresh: setup
	@for nb in $(NOTEBOOKS); do \
	  echo "== $$nb"; start=$$(date +%s); \
	  BOOK_PROFILE=full $(BIN)/jupyter-execute --inplace --timeout=-1 $$nb || exit 1; \
	  echo "   $$(( $$(date +%s) - start )) s"; \
	done

clean:
	rm -rf _build .cache
