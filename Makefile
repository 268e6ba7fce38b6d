# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Both create .venv and install what they need (Python packages; Chromium via apt when missing).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint lab pages system bench-system speechset clean peers-venv

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps silero-vad  # ships silero_vad.onnx; --no-deps keeps PyTorch out
	$(BIN)/pip install -q --no-deps pipecat-ai  # ships smart-turn-v3.2-cpu.onnx (BSD-2); --no-deps: none of pipecat
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# System packages the tests use; skipped when present or when apt is unavailable.
system:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "note: chromium not installed; tests/e2e/test_browser.py and tests/test_jupyterlab.py will skip"; }

# System packages only the benchmarks and the audio builders use (no test needs them): espeak-ng for the
# synthetic interviews (bench/synth.py) and the bundled track (python -m workbench.store.synth), the real-speech
# sources for the speech set.
bench-system:
	@command -v espeak-ng >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null) || \
	  echo "note: espeak-ng not installed; bench/bench_turns.py and workbench.store.synth cannot synthesise speech"; }
	@{ [ -d /usr/share/pocketsphinx/test/data/librivox ] && [ -d /usr/share/asterisk/sounds/en_US_f_Allison ]; } || \
	  { command -v apt-get >/dev/null 2>&1 && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install \
	  -y -qq pocketsphinx-testdata asterisk-core-sounds-en-wav >/dev/null) || \
	  echo "note: real-speech sources not installed; python -m workbench.store.speechset cannot rebuild the set"; }

demo: $(STAMP)
	$(BIN)/workbench demo

test: $(STAMP) system
	$(BIN)/ruff check workbench tests bench notebooks/render.py
	$(BIN)/python -m pytest -q

bench: $(STAMP) system bench-system peers-venv
	$(BIN)/python bench/run_all.py --write

# pipecat for bench/bench_peers.py, in a venv of its own so the project's dependencies stay clean (git-ignored)
PEERS_VENV := bench/.peers-venv
peers-venv: $(PEERS_VENV)/.installed
$(PEERS_VENV)/.installed:
	$(PY) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install -q --upgrade pip
	$(PEERS_VENV)/bin/pip install -q 'pipecat-ai[google,silero]==1.14.0'
	touch $@

# The full real-speech set with thinking pauses (clean, 20/15/10 dB SNR) on demand; the tests use recordings/thinking.*
speechset: $(STAMP) bench-system
	$(BIN)/python -m workbench.store.speechset recordings/speechset

lint: $(STAMP)
	$(BIN)/ruff check workbench tests bench notebooks/render.py

# Jupyter refuses to start as root (containers, CI images) without --allow-root; a user gets no extra flag.
lab: $(STAMP)
	$(BIN)/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root,) notebooks/

# Every notebook run from a clean kernel on the emulator into notebooks/rendered/NAME.md (+ NAME_files/ figures), so the
# repository shows what each notebook shows; tests/test_notebooks.py fails when a page is older than its notebook or
# the code (a digest in the page's first line). A few minutes: the sessions run in real time.
pages: $(STAMP)
	$(BIN)/python notebooks/render.py

clean:
	rm -rf $(VENV) .pytest_cache $(PEERS_VENV)
