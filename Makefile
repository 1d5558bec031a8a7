# The two commands of the README. `make run` sets up and runs the main job (`nanoseek run`, the R1 recipe end to
# end); `make test` sets up and runs the test suite (what CI runs).
PYTHON ?= python3
VENV := .venv

.PHONY: run test setup setup-dev browser

run: setup
	$(VENV)/bin/nanoseek run

test: setup-dev browser
	$(VENV)/bin/python -m pytest -rs

setup:
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e .

setup-dev:
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[dev]'

# The browser test drives Debian's Chromium (no browser download); TLS tests use openssl. When either is missing,
# apt-get installs them: as root, or through sudo when it is there. Without root or sudo (or when the install fails),
# nothing is installed, this says so, and pytest skips the tests that need them (-rs prints why). `make run` never
# needs root.
SKIP := make test: no chromium or openssl here; the browser test (and without openssl the TLS tests) will be skipped
install = $(1) apt-get update -qq && $(1) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	--no-install-recommends chromium openssl

browser:
	@if command -v chromium >/dev/null && command -v openssl >/dev/null; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then echo "$(SKIP): no apt-get to install them"; \
	elif [ "$$(id -u)" = 0 ]; then $(call install,) || echo "$(SKIP): apt-get failed"; \
	elif command -v sudo >/dev/null; then $(call install,sudo) || echo "$(SKIP): sudo apt-get failed"; \
	else echo "$(SKIP): installing them needs root or sudo"; fi
