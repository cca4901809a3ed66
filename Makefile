# The two set-up-free commands: `make demo` (the main job) and `make test`.
# Both create .venv and install into it on first use: the light client (packages/foresight-client),
# then this project. CPU torch first: a plain `torch`
# requirement would pull a multi-GB CUDA build. On a GPU box: make TORCH="torch==2.13.0 --index-url ..."
VENV := .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
EXTRAS ?= model,sim,dev,cpu,ray,rerun

$(VENV)/.installed: pyproject.toml packages/foresight-client/pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e packages/foresight-client
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	$(PY) -m pip install -q --no-deps openpi-client "open-clip-torch>=2.20"  # the latter for CLIP's BPE file (bench.real_scale)
	touch $@

.PHONY: demo test rehearsal bench
demo: $(VENV)/.installed
	$(VENV)/bin/foresight demo

# Two test processes (pytest-xdist; tests marked xdist_group share one process and its fixtures):
# most slow tests wait on a child node or a subprocess.
test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 --dist loadgroup -m "not rehearsal"

# bench.real_scale on a tiny-width architecture: every user command of the full-size path, minutes
rehearsal: $(VENV)/.installed
	$(PY) -m pytest -q -m rehearsal tests/test_real_scale.py

bench: $(VENV)/.installed
	$(PY) -m bench
