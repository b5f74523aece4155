# One command per job; each sets up its own environment when nothing is there yet.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test render bench clean

# The local CPU build of torch first, so that nothing pulls a CUDA build from the registry.
# (Comments stay outside recipes: make would echo them.)
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 || $(PY) -m pip install -q torch
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# Downloads the weights on first use, then renders an example timeline.
render: $(STAMP)
	$(VENV)/bin/memflow render timelines/lighthouse.json -o lighthouse.mp4

bench: $(STAMP)
	$(VENV)/bin/memflow bench

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
