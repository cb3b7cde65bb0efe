# Two entry points for a newcomer on a fresh machine: `make demo` and `make test`.
# Both create the virtualenv and install everything they need (system packages via apt when root):
# the project with its `test` and `loadtest` extras (the image installs neither).

VENV ?= .venv
PY := $(VENV)/bin/python
SYSTEM_TOOLS := iptables ipset ip conntrack bird

.PHONY: demo test lint bench fuzz fuzz-ci system-packages clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,loadtest]'
	touch $@

system-packages:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing system packages for:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables ipset iproute2 conntrack bird2 >/dev/null; \
	  else echo "note: missing$$missing (kernel tests will skip; run as root with apt to install)"; fi; \
	fi

demo: $(VENV)/.installed
	$(VENV)/bin/loadtest demo

test: lint system-packages
	$(PY) -m pytest -q

# ruff (lint + format check) and mypy (strict on the wire format and the pure cores): clean before a commit.
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Coverage-guided fuzzing (atheris) of every parser of untrusted input, FUZZ_SECONDS per target; crash
# inputs land in .fuzz/crashes/. Where atheris cannot install, the same targets run under hypothesis.
FUZZ_SECONDS ?= 60
$(VENV)/.fuzz-installed: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test,loadtest,fuzz]' || echo "note: atheris did not install; fuzzing falls back to hypothesis"
	touch $@

fuzz: $(VENV)/.fuzz-installed
	$(PY) -m fuzz all --seconds $(FUZZ_SECONDS)

# CI's short run: seeded and bounded by a number of inputs rather than by time, so a slow or busy machine
# does the same work as a fast one (about half a minute in all).
fuzz-ci: $(VENV)/.fuzz-installed
	$(PY) -m fuzz all --seconds 60 --runs 20000 --seed 1

bench: $(VENV)/.installed
	$(VENV)/bin/loadtest bench fanout

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .fuzz
