# The two commands a newcomer needs: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The CPU build of torch; a bare `torch` would pull a multi-GB CUDA build.
TORCH  := torch==2.13.0
RUNS   ?= runs
# CPU class of the benchmarks: native, or avx2 to hold an AVX-512/AMX CPU to AVX2 (benchmarks/cpu_class.py)
CPU_CLASS ?= native

.PHONY: setup bench-venv demo lint test test-fast notebooks bench-mlp bench-cnn bench-ddp bench-inspect bench-web bench-attribution serve clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[all,dev]'
	@touch $(STAMP)

demo: setup
	@bash scripts/system-deps.sh
	bash scripts/demo.sh

# ruff's rules and line length live in pyproject.toml ([tool.ruff]).
lint: setup
	$(BIN)/ruff check

test: setup
	@bash scripts/system-deps.sh --browser
	$(BIN)/ruff check
	$(BIN)/python -m pytest -n 2 -q

test-fast: setup
	$(BIN)/python -m pytest -n 2 -q -m "not slow and not browser"

# The example notebooks run in full (all of MNIST, every epoch; `make test` runs them in fast mode),
# each rendered as HTML into out/notebooks/; their runs go to examples/runs/notebooks/.
notebooks: setup
	$(BIN)/jupyter nbconvert --to html --execute --ExecutePreprocessor.timeout=3600 --output-dir out/notebooks examples/*.ipynb

# Activations of every layer for the test set (seed CNN) and OIPs of all 128 seed-vi conv3 maps;
# trains quick seed/seed-vi runs into runs/bench-inspect the first time (pass RUNS via ARGS to reuse yours).
bench-inspect: setup
	$(BIN)/python benchmarks/bench_inspect.py --cpu-class $(CPU_CLASS) $(ARGS)

# Server time per draw update (probabilities + all activations, seed CNN, CPU); target median < 100 ms.
bench-web: setup
	$(BIN)/python benchmarks/bench_web.py $(ARGS)

# Server time per draw update with an attribution map, per method (seed CNN, CPU); gradient methods < 100 ms.
# ARGS="--run RUN --sanity 20" adds the sanity-check table of a trained run.
bench-attribution: setup
	$(BIN)/python benchmarks/bench_attribution.py $(ARGS)

serve: setup
	$(BIN)/mnistlab serve --runs $(RUNS)

# A separate virtualenv for the libraries mnistlab is compared against (TensorFlow is ~600 MB).
BENCH_VENV  := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed

bench-venv: $(BENCH_STAMP)

$(BENCH_STAMP): benchmarks/requirements-bench.txt pyproject.toml
	@test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q $(TORCH)
	$(BENCH_VENV)/bin/python -m pip install -q -r benchmarks/requirements-bench.txt
	$(BENCH_VENV)/bin/python -m pip install -q -e .
	@touch $(BENCH_STAMP)

# The timing benchmarks (mlp, cnn, ddp, inspect) take CPU_CLASS=native|avx2, e.g. `make bench-cnn CPU_CLASS=avx2`.
# NumPy MLP against PyTorch, Keras/TF and scikit-learn: 35 epochs, 3 runs each, several minutes.
# BENCH_MLP_ARGS passes options, e.g. BENCH_MLP_ARGS="--threads 1 --rounds 5".
bench-mlp: bench-venv
	$(BENCH_VENV)/bin/python benchmarks/bench_mlp.py --cpu-class $(CPU_CLASS) $(BENCH_MLP_ARGS)

# CPU: seed recipe, mnistlab vs the PyTorch DataLoader loop vs Keras/TF (5 epochs, minutes).
# Shorter: make bench-cnn BENCH_CNN_ARGS="--epochs 2 --train-size 20000 --rounds 3"
BENCH_CNN_ARGS ?= --epochs 5 --rounds 1
bench-cnn: bench-venv
	$(BENCH_VENV)/bin/python benchmarks/bench_cnn.py --cpu-class $(CPU_CLASS) $(BENCH_CNN_ARGS)

# CPU: seed recipe as 2 processes x 1 thread (DDP over gloo) vs one process with 1 thread, 2 threads and
# the thread split; medians over interleaved rounds (epochs and the loop's steps), all-reduce cost per step
# (minutes). Shorter: make bench-ddp BENCH_DDP_ARGS="--train-size 10000 --epochs 2 --rounds 2"; on a shared
# machine BENCH_DDP_ARGS="--lock FILE" holds a timing lock one round at a time.
BENCH_DDP_ARGS ?=
bench-ddp: setup
	$(BIN)/python benchmarks/bench_ddp.py --cpu-class $(CPU_CLASS) $(BENCH_DDP_ARGS)

clean:
	rm -rf $(VENV) .venv-bench build dist src/*.egg-info .pytest_cache
