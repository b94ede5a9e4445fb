# The README's two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,web,timm,real,video]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/camlens demo --out demo-out

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) demo-out
