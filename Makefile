# Two commands for users: `make demo` and `make test` (both create .venv first).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PLUGINS_DIR ?= $(CURDIR)/.plugins
PORT ?= 5151

export FIFTYONE_DATABASE_VALIDATION ?= false
export FIFTYONE_DO_NOT_TRACK ?= true

.PHONY: venv plugin demo app test bench install-plugin clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m clustering.warmup  # compile the engine's CPU kernels now, not on first use
	touch $@

venv: $(VENV)/.installed

# A plugins directory holding this checkout as @imgclust/clustering (used by demo/app).
plugin:
	mkdir -p $(PLUGINS_DIR)/imgclust
	ln -sfn $(CURDIR) $(PLUGINS_DIR)/imgclust/clustering

demo: venv plugin
	FIFTYONE_PLUGINS_DIR=$(PLUGINS_DIR) $(PY) -m clustering.demo

app: venv plugin
	FIFTYONE_PLUGINS_DIR=$(PLUGINS_DIR) $(PY) -m clustering.demo --app --port $(PORT)

test: venv
	$(PY) -m pytest tests

bench: venv
	$(PY) bench/bench_engine.py
	$(PY) bench/bench_embeddings.py
	$(PY) bench/bench_scale.py
	$(PY) bench/bench_quality.py  # Fashion-MNIST from Debian's dataset-fashion-mnist, photos from ../shared/data/photos; each skipped without it
	$(PY) bench/bench_reduction.py  # photos from ../shared/data/photos, skipped without them
	$(PY) bench/bench_writer.py   # two writers of one run, kill -9 during writes
	$(PY) bench/bench_tree.py     # a two-level cluster tree vs the flat run
	$(PY) bench/bench_engine.py --estimate
	$(PY) bench/bench_stability.py  # after bench_quality.py, whose cached embeddings it reads

# Link this checkout into your own FiftyOne plugins directory.
install-plugin: venv
	dir=$$($(PY) -c "import fiftyone as fo; print(fo.config.plugins_dir)") && \
	mkdir -p "$$dir/imgclust" && ln -sfn $(CURDIR) "$$dir/imgclust/clustering" && \
	echo "linked $(CURDIR) -> $$dir/imgclust/clustering"

clean:
	rm -rf $(VENV) $(PLUGINS_DIR)
