# The README's two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test docs bench clean wheel

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,web,timm,real,video,docs]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/camlens demo --out demo-out

test: $(STAMP)
	$(PY) -m pytest -q

docs: $(STAMP)  # build the site strictly, then serve it at http://127.0.0.1:8000/ (rebuilt on every edit)
	$(PY) -m mkdocs build --strict
	$(PY) -m mkdocs serve

# dist/camlens-VERSION-py3-none-any.whl, to install from source elsewhere: pip install 'dist/camlens-*.whl[real]'
wheel:
	rm -rf dist
	$(PYTHON) -m pip wheel . --no-deps -w dist

clean:
	rm -rf $(VENV) demo-out dist
