# `make demo`: train + evaluate Mask R-CNN on the embedded shapes data (CPU, ~10 min).
# `make test`: the whole test suite (end-to-end runs included). Both set up .venv first.
# `make lint`: black, isort and ruff checks (pyproject.toml), then dev/check_policies.py (the
# project's rules besides style); `make format` applies black and isort.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
READY := $(VENV)/.backbones-ready
DEMO_CONFIG ?= configs/mrcnn_r18_shapes.yaml
DEMO_DIR ?= output/demo

.PHONY: setup demo test test-fast lint format clean reproduce-small reproduce-gpu

setup: $(READY)

# Re-runs only when the setup inputs change; every step inside skips what is installed.
$(READY): setup.py tools/setup_env.py
	python3 tools/setup_env.py --venv $(VENV) --stamp $@

# --resume: a second run skips the finished training and only evaluates and draws again.
demo: $(READY)
	$(PYTHON) tools/train_net.py --config-file $(DEMO_CONFIG) --resume OUTPUT_DIR $(DEMO_DIR)
	$(PYTHON) tools/visualize_predictions.py --config-file $(DEMO_CONFIG) \
		--weights $(DEMO_DIR)/model_final.pth --output $(DEMO_DIR)/predictions

# The paper's two claims at small scale on CPU (docs/pretraining.md): the degradation experiment
# (thin plain/residual R-18/34/50, 3 seeds), then Mask R-CNN on 200 shapes images fine-tuned from
# each pretrained residual net and from scratch, 3 seeds. About 2 hours on 2 cores. Resumable.
reproduce-small: $(READY)
	$(PYTHON) tools/reproduce_small.py

# The same two experiments wider and longer on one GPU, sized for about 15 minutes on an H100
# (an estimate: docs/pretraining.md). Its results go to output/reproduce_gpu.
reproduce-gpu: $(READY)
	$(PYTHON) tools/reproduce_small.py --output-root output/reproduce_gpu --width 32 \
		--pretrain-iters 6000 --train-images 300 --detector-iters 1500 --jobs 4 MODEL.DEVICE cuda

# Two pytest workers with one thread each: on 2 cores, more threads than cores spin-wait.
TEST_WORKERS ?= 2
TEST_ENV := OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1}

test: $(READY)
	$(TEST_ENV) $(PYTHON) -m pytest -m "slow or not slow" -n $(TEST_WORKERS)

test-fast: $(READY)
	$(TEST_ENV) $(PYTHON) -m pytest -n $(TEST_WORKERS)

# Formatting and lint (pyproject.toml): black, isort and ruff, installed into .venv on first use.
LINT_PATHS := backbones tools tests datasets dev setup.py
LINTERS := $(VENV)/.backbones-linters

$(LINTERS): $(READY)
	$(PYTHON) -m pip install -q "black>=24" "isort>=5.13" "ruff>=0.5" && touch $@

# Then the project's rules besides style (dev/check_policies.py, docs/tests.md): import layers,
# module size, the README's size and links, no test counts in the docs, the design tree,
# named files and relative links.
lint: $(LINTERS)
	$(VENV)/bin/black --check $(LINT_PATHS)
	$(VENV)/bin/isort --check-only $(LINT_PATHS)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(PYTHON) dev/check_policies.py

format: $(LINTERS)
	$(VENV)/bin/isort $(LINT_PATHS)
	$(VENV)/bin/black $(LINT_PATHS)

clean:
	rm -rf $(VENV) output
