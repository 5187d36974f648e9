# Two commands matter: `make demo` (the main job on built-in data) and `make test` (the suite).
# Both build .venv themselves; torch comes through constraints.txt, which pins the CPU build.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
PIPI    = $(PIP) install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: demo test venv install install-dev lint bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

venv: $(VENV)/bin/python

install: venv
	$(PIPI) -e .

# Test oracles: torchattacks without its `requests` pin, imagecorruptions with the setuptools it needs.
install-dev: venv
	$(PIPI) -e ".[dev,timm]" "setuptools<81"
	$(PIPI) scikit-image opencv-python-headless
	$(PIPI) --no-deps torchattacks==3.5.1 imagecorruptions==1.1.2

demo: install
	$(PY) -m robustssl bench quickstart

test: install-dev
	$(PY) -m pytest -q -p no:cacheprovider tests

lint: install-dev
	$(PY) -m ruff check src tests benchmarks

bench: install-dev
	for f in benchmarks/*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) runs build dist src/*.egg-info
