# Set-up is part of every target: `make demo` and `make test` create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cxrjobs-installed
# torch 2.14.1 / torchvision 0.29.1 are a matched pair (each torchvision is built against one torch).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
DEMO_DIR ?= demo-out

.PHONY: install demo test bench clean chromium

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/cxrjobs demo --out $(DEMO_DIR)

test: install chromium
	$(PY) -m pytest -q -ra

# The report test renders the HTML in a real headless browser (Debian's chromium).
chromium:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

bench: install
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) .cxrjobs $(DEMO_DIR) benchmarks/results
