# The two commands: `make demo` and `make test`. Both set up .venv on first use.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# This machine's pip config points at local mirrors that lack some paths; pip warns for each.
QUIET_PIP := grep -v "is ignored: it is neither a file nor a directory" || true

.PHONY: demo test proto clean

$(STAMP): pyproject.toml requirements/constraints.txt
	python3 -m venv $(VENV)
	@# torch first, pinned, so nothing else pulls a different (multi-GB CUDA) build on CPU machines.
	$(PYTHON) -m pip install --quiet torch==2.13.0 2>&1 | $(QUIET_PIP)
	$(PYTHON) -m pip install --quiet -c requirements/constraints.txt -e '.[dev]' 2>&1 | $(QUIET_PIP)
	$(PYTHON) -m pip check
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/potluck demo

test: $(STAMP)
	$(PYTHON) -m pytest -q

proto: $(STAMP)
	$(PYTHON) -m protocol.proto_gen

clean:
	rm -rf $(VENV)
