# edgeface: every target sets itself up from nothing (virtualenv, installs, model conversion).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export EDGEFACE_HOME ?= $(HOME)/.cache/edgeface
export EDGEFACE_MODELS ?= $(EDGEFACE_HOME)/models
PROFILE ?= x86

.PHONY: install models test demo check-quant bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[convert,report,dev]'
	touch $@

models: install
	$(BIN)/python -m convert --out $(EDGEFACE_MODELS) --cache $(EDGEFACE_HOME)

test: models
	$(BIN)/python -m pytest -q

demo: models
	$(BIN)/edgeface demo --profile $(PROFILE) --out out/demo $(EDGEFACE_HOME)/sample_images

check-quant: models
	$(BIN)/edgeface check-quant --profile $(PROFILE)

bench: models
	$(BIN)/edgeface bench --profile $(PROFILE)

clean:
	rm -rf $(VENV) build *.egg-info
