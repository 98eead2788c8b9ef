# `make run`: create .venv when missing, then serve the demo graph on http://127.0.0.1:8000
# `make test`: create .venv when missing, then run the whole test suite (what CI runs)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint render clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[demo,onnx,dev]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/serve-app demo

test: $(STAMP)
	$(VENV)/bin/ruff check serve_app tests loadtest kuberay
	$(VENV)/bin/mypy serve_app loadtest
	$(VENV)/bin/pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check serve_app tests loadtest kuberay
	$(VENV)/bin/mypy serve_app loadtest

render: $(STAMP)
	$(VENV)/bin/serve-app render
	$(VENV)/bin/serve-app render-k8s
	$(PY) kuberay/components/monitoring/build_dashboard.py

clean:
	rm -rf $(VENV) model-repository
