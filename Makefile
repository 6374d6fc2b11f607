# Two entry points on a fresh machine: `make demo` (the main job) and `make test` (the test suite).
# Both create .venv and install the project into it first: the demo only what it runs (the project and
# its dependencies), the tests the dev extras on top (pytest, ruff, hypothesis, mujoco, psycopg).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --quiet --disable-pip-version-check

.PHONY: install install-dev demo test lint registry bench-speed bench-samplers bench-frontier bench-quality bench-two-sample bench-continual \
	bench-extrapolation bench-multi-object clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	touch $@

$(BIN)/.installed-mujoco: $(BIN)/.installed
	$(PIP) -e ".[mujoco]"
	touch $@

$(BIN)/.installed-dev: $(BIN)/.installed
	$(PIP) -e ".[dev]"
	touch $@

install: $(BIN)/.installed

install-dev: $(BIN)/.installed-dev

demo: install
	scripts/demo.sh

lint: install-dev
	$(BIN)/ruff check .

# -rs: say why each skipped test was skipped (no PostgreSQL server, no MuJoCo renderer, ...)
test: lint
	$(BIN)/pytest -rs

registry: install
	scripts/build_registry.sh registry.db

# The speed and sampling-frontier benchmarks run in their own venv with the peer libraries they are compared
# with (never project dependencies); results go to benchmarks/results/. Not part of `make test`.
# k-diffusion goes in --no-deps: its package __init__ imports torchvision, which this torch wheel cannot sit
# beside, so benchmarks/peer_samplers.py loads its sampling module alone and only that module's imports
# (scipy, torchdiffeq, torchsde, tqdm) are installed. The recipe reruns when the pins below change.
PEERS := benchmarks/.venv-peers
PEERS_PIP := $(PEERS)/bin/pip install --quiet --disable-pip-version-check

$(PEERS)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(PEERS)
	$(PEERS_PIP) torch==2.13.0 ebmkit==0.16.0 torchebm==0.8.9 diffusers==0.42.1 scipy==1.17.1 \
		torchdiffeq==0.2.5 torchsde==0.2.6 tqdm==4.70.1
	$(PEERS_PIP) --no-deps k-diffusion==0.1.1.post1
	$(PEERS_PIP) -e .
	touch $@

bench-speed: $(PEERS)/.installed
	$(PEERS)/bin/python benchmarks/speed.py

bench-samplers: install
	$(BIN)/python benchmarks/samplers.py

# Judged accuracy against network evaluations and seconds: conceptlib's annealed sampler at several budgets
# beside diffusers' and k-diffusion's samplers driving the same composed model (the peer venv), report split;
# `--split tune` is where the sampler's defaults were chosen (benchmarks/results/tuning/).
bench-frontier: $(PEERS)/.installed
	$(PEERS)/bin/python benchmarks/sampling_frontier.py --split report

# Table 1 on the shipped registry, report split (tune with --split tune; benchmarks/results/tuning/), and how
# much the two-sample realism critic sees on artifacts made on purpose.
bench-quality: install
	$(BIN)/python benchmarks/quality.py --split report

bench-two-sample: install
	$(BIN)/python benchmarks/two_sample_power.py

# Continual learning on different data per stage (the paper's Table 2 protocol), on the report split; the
# tune split (`--split tune`) is where settings were chosen. Hours on 2 CPU cores: stages already in the kept
# registries are not trained again.
bench-continual: $(BIN)/.installed-mujoco
	$(BIN)/python benchmarks/continual.py --source scenes --split report
	$(BIN)/python benchmarks/continual.py --source mujoco --split report --variants residual

# At 0.35 of the CLI's default iterations (the committed results): the full budget is about 40 min a corner.
bench-extrapolation: install
	$(BIN)/python benchmarks/extrapolation.py --corners 0.01,0.1,1 --budget 0.35

# Multi-object scenes from the position concept stage 1 of bench-continual learned (run that first), and
# from a position concept of the mujoco `cube` variant (one green cube among clutter), trained here once.
CUBE_REGISTRY := benchmarks/results/multi-object-mujoco-cube-registry.db
bench-multi-object: $(BIN)/.installed-mujoco
	$(BIN)/python benchmarks/multi_object.py --tag scenes \
	  --registry benchmarks/results/continual-scenes-report-residual-registry.db
	test -f $(CUBE_REGISTRY) || $(BIN)/concept --registry $(CUBE_REGISTRY) add position --source mujoco \
	  --param variant=cube --param image_size=32 --seed 1 --device auto
	$(BIN)/python benchmarks/multi_object.py --source mujoco --tag mujoco-cube -n 100 --registry $(CUBE_REGISTRY)
	$(BIN)/python benchmarks/multi_object.py --source mujoco --tag mujoco-cube-guidance4 -n 100 --guidance 4 \
	  --registry $(CUBE_REGISTRY)

clean:
	rm -rf $(VENV) $(PEERS) out .pytest_cache .hypothesis
