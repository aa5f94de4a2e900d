# Each target builds what it needs: a fresh machine with only python3 runs `make demo` or `make test`.
# Python: the newest >= 3.12 on PATH or under pyenv (jax 0.12), else python3 (on 3.11 the lock gives
# jax 0.10.2 with its CPU work-around); PYTHON=/path/to/python overrides. Shims that cannot run are skipped.
ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell for v in 3.15 3.14 3.13 3.12; do \
  for p in "$$(command -v python$$v)" "$$(pyenv prefix $$v 2>/dev/null)/bin/python$$v"; do \
    [ -x "$$p" ] && "$$p" -c '' 2>/dev/null && { echo "$$p"; exit 0; }; \
  done; done; echo python3)
endif
PYTHON_VERSION := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
ifneq ($(shell $(PYTHON) -c 'import sys; print(sys.version_info >= (3, 11))'),True)
$(error $(PYTHON) is Python $(PYTHON_VERSION); resnet_jax needs 3.11 or newer (3.12+ for current jax): install one, e.g. `uv python install 3.12`, and run with PYTHON=/path/to/python3.12)
endif
VENV ?= .venv
PY := $(VENV)/bin/python
# Accelerator support through JAX's extras: EXTRAS=cuda12, cuda13 or tpu (make venv EXTRAS=cuda13).
EXTRAS ?=
# The stamp names the Python and the extras, so changing either rebuilds the venv.
STAMP := $(VENV)/.installed-$(PYTHON_VERSION)$(EXTRAS:%=-%)
UV_VERSION := 0.13.9
# Two workers fit the 2-core CI machine; set PYTEST_WORKERS=auto on a bigger one. Whole files go to
# a worker, so a module's expensive fixture (a trained run, a sweep) is made once. (--dist loadgroup
# would do it per fixture, but xdist 3.8's groups are lost under pytest 9.)
PYTEST_WORKERS ?= 2
PYTEST = $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile
# The first line of every target: which interpreter and stack this run uses.
SAY_STACK = @$(PY) -c 'import sys, importlib.metadata as m; print(f"Python {sys.version.split()[0]} ({sys.executable}),", ", ".join(f"{p} {m.version(p)}" for p in ("jax", "jaxlib", "flax")))'

.PHONY: venv demo test test-fast test-torch test-slurm smoke lock clean

venv: $(STAMP)

# The venv is rebuilt only when the lock, the project metadata or the Python changes. uv installs this
# stack in ~10 s where pip takes ~67 s; pip alone still works with the same lock file.
$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv --clear $(VENV)
	$(PY) -m pip install -q uv==$(UV_VERSION)
	$(VENV)/bin/uv pip install -q --python $(PY) -r requirements.lock
	$(VENV)/bin/uv pip install -q --python $(PY) -c requirements.lock -e '.$(EXTRAS:%=[%])'
	touch $@

# Trains ResNet-20 on the bundled MNIST digits and draws its error curves; rerunning resumes
# (DEMO_DIR= to start elsewhere).
DEMO_DIR ?= runs/demo
demo: $(STAMP)
	$(SAY_STACK)
	$(PY) -m resnet_jax.models.summary --dataset=cifar --depth=20 --input_channels=1
	$(PY) -m resnet_jax.main --config=configs/mnist_demo.py --workdir=$(DEMO_DIR)
	$(PY) -m resnet_jax.tools.plot $(DEMO_DIR) --output=$(DEMO_DIR)/curves.png --title="ResNet-20 on 5,000 MNIST digits"

test: $(STAMP)
	$(SAY_STACK)
	$(PYTEST) tests

# The suite without its slow tests (training processes, the largest networks): the edit-test loop.
test-fast: $(STAMP)
	$(SAY_STACK)
	$(PYTEST) -m "not slow and not torch" tests

# The tests that compare with PyTorch, torchvision and timm (skipped by `make test` without them), after
# installing them in the venv with pip, which on Python 3.11 here takes torch and torchvision from local
# disk (a CUDA build run on the CPU; uv would download it) and timm from the package index. Here a test
# that cannot import them fails rather than skips. TORCH=... picks other requirements.
TORCH ?= torch==2.14.1 torchvision==0.29.1 timm==1.0.31
test-torch: $(STAMP)
	$(SAY_STACK)
	$(PY) -m pip install -q $(TORCH)
	RESNET_JAX_REQUIRE_TORCH=1 $(PYTEST) -m torch tests

# launch/slurm.sbatch on a real one-node SLURM cluster that the tests start here (tests/slurm_cluster.py:
# Debian's slurmctld, slurmd and munge, installed with apt-get where missing; no systemd), one job at a
# time, so one pytest worker. Without root, or where apt-get is missing or fails, they are skipped with
# one line saying why.
test-slurm: $(STAMP)
	$(SAY_STACK)
	RESNET_JAX_SLURM=1 $(PY) -m pytest -p no:xdist -m slurm tests/test_slurm.py

# A few minutes' check of a second stack (CI runs it on Python 3.11): the CPU reproducers, the
# paper's counts, and the demo trained and evaluated for 20 steps.
smoke: $(STAMP)
	$(SAY_STACK)
	$(PYTEST) tests/test_cpu_workaround.py tests/test_models.py -k "workaround or parameters or multiply_adds"
	rm -rf $(VENV)/smoke-run
	$(PY) -m resnet_jax.main --config=configs/mnist_demo.py:steps=20 --workdir=$(VENV)/smoke-run

# Regenerate the lock after changing dependencies in pyproject.toml: one file for Python 3.11 and 3.12+.
lock: $(STAMP)
	$(VENV)/bin/uv pip compile pyproject.toml --extra test --extra demo --universal --python-version 3.11 -o requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache runs
