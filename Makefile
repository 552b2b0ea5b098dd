# vmsnapd — developer entry points.  All targets need root (zfs-fuse, libvirt qemu:///system).
#   make demo       set up the lab, start a counter guest on a throw-away pool, show it running
#   make test       set up the lab, run the whole suite (lab tests must run: VMSNAPD_LAB_REQUIRED=1)
#   make lab-clean  remove every lab pool, domain and mount (vlab* names)
PYTHON := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: test demo lab lab-clean unit

lab:
	bash tests/lab/setup.sh

test: lab
	VMSNAPD_LAB_REQUIRED=1 $(PYTHON) -m pytest tests $(PYTEST_ARGS)

unit:
	$(PYTHON) -m pytest tests/unit $(PYTEST_ARGS)

demo: lab
	$(PYTHON) tests/lab/demo.py

lab-clean:
	@if [ -x $(PYTHON) ]; then $(PYTHON) tests/lab/demo.py --clean; else echo "no .venv: nothing set up"; fi
