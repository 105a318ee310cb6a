# Two commands: `make repro` runs the pipeline, `make test` runs the tests. Both create .venv first.
PYTHON ?= python3
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DVC_NO_ANALYTICS := 1

BENCH_ARCHIVE ?= ../shared/datasets/casting_data.zip

.PHONY: repro report pr-report preset search test browser postgres mosquitto bench install clean-venv

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -r requirements.txt
	$(VENV)/bin/python -m pip install --quiet --no-deps -e .  # the casting-inspect command
	touch $@

install: $(VENV)/.installed

repro: install
	dvc repro
	dvc metrics show

# The inspection report (reports/index.html): runs whatever of the pipeline is out of date first.
report: install
	dvc repro report
	@echo "open reports/index.html"

# What this branch changes against BASE (params, metrics, plots), as Markdown: the pull-request comment.
# CHECK=1: exit 1 when its decisions on the test photos show a real regression (pr-tolerances.yaml).
BASE ?= main
pr-report: install
	@python -m casting_inspection.team.pr_report --base '$(BASE)' $(if $(PLOTS_OUT),--plots-out '$(PLOTS_OUT)') $(if $(CHECK),--check)

# A published recipe as a DVC experiment (presets/NAME.yaml); QUEUE=1 queues it for `dvc queue start`.
preset: install
	python -m casting_inspection.team.presets '$(NAME)' $(if $(QUEUE),--queue)

# An Optuna study in which every trial is a DVC experiment (presets/PRESET.yaml's search: block); see docs/experiments.md.
# Several workers share one study: the same STORAGE (a shared journal file, or postgresql://...) and STUDY in each clone.
PRESET ?= cnn-search
search: install
	python -m casting_inspection.team.search '$(PRESET)' $(if $(TRIALS),--trials '$(TRIALS)') $(if $(STUDY),--study '$(STUDY)') \
	  $(if $(STORAGE),--storage '$(STORAGE)') $(if $(PUSH),--push '$(PUSH)') $(if $(SEED),--seed '$(SEED)') $(if $(APPLY),--apply)

# The report's test opens it in Debian's headless Chromium; installed here when missing and we may.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "chromium is missing and could not be installed (apt-get install chromium): the report's browser test will fail"

# The search's two-worker test runs Debian's PostgreSQL server on 127.0.0.1; installed here when missing and we may.
postgres:
	@test -x "$$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | tail -1)" || { [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } \
	  || echo "PostgreSQL is missing and could not be installed (apt-get install postgresql): the search's database test will fail"

# The station's tests run Debian's mosquitto broker on 127.0.0.1; installed here when missing and we may.
mosquitto:
	@command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto || { [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; } \
	  || echo "mosquitto is missing and could not be installed (apt-get install mosquitto): the station's MQTT tests will fail"

test: install browser postgres mosquitto
	ruff check . && ruff format --check .
	python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder tests  # two processes; a file's tests stay in one (its fixtures are built once), the longest files first (tests/conftest.py)

# Benchmarks (run by hand, print figures; see bench/RESULTS.md). Needs `make repro` first.
bench: install
	python bench/bench_pipeline.py --archive $(BENCH_ARCHIVE)
	python bench/bench_inference.py
	python bench/bench_reference.py
	PYTHONPATH=src python bench/bench_robustness.py
	python bench/bench_service.py

clean-venv:
	rm -rf $(VENV)
