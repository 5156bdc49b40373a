# cmbscat: every target uses the project's own virtual environment in .venv
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
# PyTorch. From PyPI on Linux, torch==2.13.0 is the CUDA build (several GB with its nvidia-*
# packages; it runs on the CPU too). For the small CPU-only build, give PyTorch's CPU index:
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH       ?= torch==2.13.0
TORCH_INDEX ?=

.PHONY: install test smoke reproduce reproduce-sealed fnl-scan fnl-scan-800 gnl-scan fnl-regression observed learning-curve bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

install: $(PY)  ## create .venv and install cmbscat with its test extras
	$(if $(TORCH_INDEX),$(PY) -m pip install --quiet "$(TORCH)" --index-url "$(TORCH_INDEX)",)
	$(PY) -m pip install --quiet "$(TORCH)" -e ".[dev]"

test:  ## run the test suite
	$(BIN)/pytest -q

smoke:  ## a tiny end-to-end run of every stage (about a minute on 2 cores)
	$(BIN)/cmbscat pipeline pipelines/smoke.json

reproduce:  ## the paper experiment at L = 1024, every stage, with a results table (under 2 h on 2 cores)
	$(BIN)/cmbscat pipeline pipelines/paper.json

reproduce-sealed:  ## the paper experiment's final table of a release: also the sealed test set
	$(BIN)/cmbscat pipeline pipelines/paper.json --sealed

fnl-scan:  ## accuracy of every method against f_NL (table + PNG + amplitude at 95 %)
	$(BIN)/cmbscat pipeline --scan pipelines/fnl_scan.json

fnl-scan-800:  ## the same at f_NL 5-30 with 800 training maps per amplitude (the hybrid's A95 ratio: the 800-map rule fixed in docs/fnl_scan.md at 97bfb16)
	$(BIN)/cmbscat pipeline --scan pipelines/fnl_scan_800.json

gnl-scan:  ## the same against g_NL (the second non-Gaussian model)
	$(BIN)/cmbscat pipeline --scan pipelines/gnl_scan.json

fnl-regression:  ## estimate f_NL with errors: every method's sigma against the optimal estimator's
	$(BIN)/cmbscat pipeline pipelines/fnl_regression.json

observed:  ## every method on the same maps: noiseless full sky, beam + noise, beam + noise + mask
	$(BIN)/cmbscat pipeline pipelines/observed.json

learning-curve:  ## hybrid (with / without odd channels, rotations) and cubic S against training maps
	$(PY) studies/learning_curve.py --out results/learning_curve

bench:  ## every CPU benchmark of benchmarks/README.md, one thread each (~30 min on 2 cores; gpu_check needs a GPU)
	$(PY) benchmarks/simulate.py
	OMP_NUM_THREADS=1 $(PY) benchmarks/observed_simulate.py
	OMP_NUM_THREADS=1 $(PY) benchmarks/pixel_window.py
	OMP_NUM_THREADS=1 $(PY) benchmarks/scatter.py
	OMP_NUM_THREADS=1 $(PY) benchmarks/scatter_equivariance.py
	OMP_NUM_THREADS=1 $(PY) benchmarks/disco.py
	OMP_NUM_THREADS=1 $(PY) benchmarks/training_step.py
	$(PY) benchmarks/executor_overhead.py

clean:
	rm -rf results runs .pytest_cache
