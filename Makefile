# The two commands: `make demo` and `make test`. Both set up .venv on first use.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# This machine's pip config points at local mirrors that lack some paths; pip warns for each.
QUIET_PIP := { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: demo test proto clean

$(STAMP): pyproject.toml requirements/constraints.txt
	python3 -m venv $(VENV)
	@# torch first, pinned, so nothing else pulls a different (multi-GB CUDA) build on CPU machines.
	$(PYTHON) -m pip install --quiet torch==2.13.0 2>&1 | $(QUIET_PIP)
	$(PYTHON) -m pip install --quiet -c requirements/constraints.txt -e '.[dev]' 2>&1 | $(QUIET_PIP)
	@# The public toploc package, only to cross-check our proofs byte for byte in a test. Its wheel is
	@# built for another torch, so build it from source against ours (~3.5 min once; pip caches it).
	$(PYTHON) -m pip install --quiet --no-build-isolation --no-binary toploc toploc==0.1.6 2>&1 | $(QUIET_PIP) \
		|| echo "toploc did not build: the toploc cross-check test will skip"
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
