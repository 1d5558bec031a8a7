# The two commands of the README. `make run` sets up and runs the main job (`nanoseek run`, the R1 recipe end to
# end); `make test` sets up and runs the test suite (what CI runs).
PYTHON ?= python3
VENV := .venv

.PHONY: run test setup setup-dev browser

run: setup
	$(VENV)/bin/nanoseek run

test: setup-dev browser
	$(VENV)/bin/python -m pytest

setup:
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e .

setup-dev:
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[dev]'

# The browser test drives Debian's Chromium (no browser download); TLS tests use openssl.
browser:
	command -v chromium >/dev/null && command -v openssl >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium openssl)
