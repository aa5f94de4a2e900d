# Each target builds what it needs: a fresh machine with only Python 3.11 runs `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.9
# Two workers fit the 2-core CI machine; set PYTEST_WORKERS=auto on a bigger one.
PYTEST_WORKERS ?= 2

.PHONY: demo test summary lock clean

# The venv is rebuilt only when the lock or the project metadata changes. uv installs this stack in
# ~10 s where pip takes ~67 s; pip alone still works with the same lock file.
$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv==$(UV_VERSION)
	$(VENV)/bin/uv pip install -q --python $(PY) -r requirements.lock
	$(VENV)/bin/uv pip install -q --python $(PY) --no-deps -e .
	touch $@

# Trains ResNet-20 on the bundled MNIST digits and draws its error curves; rerunning resumes
# (DEMO_DIR= to start elsewhere).
DEMO_DIR ?= runs/demo
demo: $(VENV)/.installed
	$(PY) -m resnet_jax.models.summary --dataset cifar --depth 20 --input-channels 1
	$(PY) -m resnet_jax.main --config=configs/mnist_demo.py --workdir=$(DEMO_DIR)
	$(PY) -m resnet_jax.plot $(DEMO_DIR) --output=$(DEMO_DIR)/curves.png --title="ResNet-20 on 5,000 MNIST digits"

test: $(VENV)/.installed
	$(PY) -m pytest -n $(PYTEST_WORKERS) tests

# Regenerate the lock after changing dependencies in pyproject.toml.
lock: $(VENV)/.installed
	$(VENV)/bin/uv pip compile pyproject.toml --extra test --extra demo --universal --python-version 3.11 -o requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache runs
