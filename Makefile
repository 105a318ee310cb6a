# Two commands: `make repro` runs the pipeline, `make test` runs the tests. Both create .venv first.
PYTHON ?= python3
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: repro test install clean-venv

$(VENV)/.installed: requirements.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -r requirements.txt
	touch $@

install: $(VENV)/.installed

repro: install
	dvc repro
	dvc metrics show

test: install
	python -m pytest -q tests

clean-venv:
	rm -rf $(VENV)
