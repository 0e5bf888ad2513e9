# VocoEng: `make run` and `make test` are the two set-up commands (see README).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
export DJANGO_DEV ?= 1

.PHONY: run test browser lint format install migrate worker web bridge flower bench bench-ai \
	bench-webhooks bench-bridge bench-pipeline bench-analytics clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

migrate: install
	$(PY) manage.py migrate --noinput

# Web + worker on the embedded defaults (SQLite, filesystem broker, echo AI).
# The worker embeds celery beat (-B): the pipeline reaper and the webhook
# deliveries sweep run locally too (production: the Procfile's own beat).
run: migrate
	@echo ""
	@echo "  VocoEng is starting at http://127.0.0.1:$(PORT)/  (Ctrl-C stops it)"
	@echo "  try: curl -s -X POST http://127.0.0.1:$(PORT)/process -H 'Content-Type: application/json' -d '{\"source\":\"api\",\"user_id\":\"demo\",\"message\":\"Hello\"}'"
	@echo ""
	@trap 'trap - INT TERM EXIT; kill 0' INT TERM EXIT; \
	$(VENV)/bin/celery -A vocoeng worker -B -Q default,ai,analytics -P threads -c 16 -l info & \
	$(PY) manage.py runserver 127.0.0.1:$(PORT) --noreload

web: migrate
	$(VENV)/bin/gunicorn vocoeng.wsgi -c python:vocoeng.gunicorn_config --bind 127.0.0.1:$(PORT) --workers 2

worker: install
	$(VENV)/bin/celery -A vocoeng worker -Q default,analytics -l info

# Flower, Celery's monitoring UI, on the same broker (README "Metrics").
FLOWER_PORT ?= 5555
flower: install
	$(VENV)/bin/celery -A vocoeng flower --address=127.0.0.1 --port=$(FLOWER_PORT)

# The browser tests drive Debian's chromium (Playwright cannot download browsers
# here): install it when missing and we are root, first from the package lists
# already on the machine, then after refreshing them. Without it those tests fail
# with a message saying how to install it.
CHROMIUM_PATH ?= /usr/bin/chromium
CHROMIUM_PACKAGES := chromium chromium-driver
browser:
	@if [ ! -x "$(CHROMIUM_PATH)" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y --no-install-recommends $(CHROMIUM_PACKAGES) || \
	    { apt-get update && \
	      apt-get install -y --no-install-recommends $(CHROMIUM_PACKAGES); } || \
	    echo "make: could not install chromium; the browser tests will fail"; \
	  else \
	    echo "make: $(CHROMIUM_PATH) is missing; as root run:" \
	      "apt-get install -y --no-install-recommends $(CHROMIUM_PACKAGES)"; \
	  fi; \
	fi

# The whole suite. Embedded defaults unless DATABASE_URL / CELERY_BROKER_URL are set.
test: install browser
	VOCOENG_VAR_DIR=$(CURDIR)/var/test $(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench-ai: install
	$(PY) bench/ai_fanout.py

bench-webhooks: install
	$(PY) bench/webhooks.py

bench-bridge: install
	$(PY) bench/bridge.py

bench-pipeline: install
	$(PY) bench/pipeline.py

bench-analytics: install
	$(PY) bench/analytics.py

# Every script in bench/, then one table (saved in var/bench/latest.md). Exits
# non-zero only when a script fails to run. BENCH_QUICK=1: smaller, a few minutes.
bench: install
	$(PY) bench/run_all.py

clean:
	rm -rf var/broker var/test
