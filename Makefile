# vmsnapd — developer entry points.  All targets need root (zfs-fuse, libvirt qemu:///system).
#   make demo       set up the lab, start a counter guest on a throw-away pool, show it running
#   make test       set up the lab, run the whole suite (lab tests must run: VMSNAPD_LAB_REQUIRED=1)
#   make lab-clean  remove every lab pool, domain and mount (vlab* names)
#   make install    install on this host (venv in /opt/vmsnapd, CLI, unit, man page, completion; see docs/install.md)
#   make uninstall  remove what make install put there (never /etc/vmsnapd nor /var/lib/vmsnapd)
#   make deb        build dist/vmsnapd_<version>_<arch>.deb (installs its build dependencies first)
#   make deb-test   build the .deb and install it with apt in a fresh Debian 12 chroot (slow, needs network)
#   make bench-scale  a take+prune pass on 100 datasets x 70 aged snapshots, vmsnapd vs sanoid --cron (~15 min)
#   make bench-idle   the daemon with 1,000 configured datasets: idle RSS, nothing-due pass, config check (~5 min)
#   make bench-vms    8 running guests in one pass vs one guest, pauses, one restore checked (~10 min)
#   make bench-group  the pause of a single guest vs each member of a 2-guest VM group (~5 min)
#   make bench      every benchmark one after another (see bench/README.md), then the ratio table and the
#                   PNG plot (build/bench/); alone: bench-pause bench-ram bench-consistency (and bench-scale
#                   bench-idle bench-vms); bench-report re-prints the table from build/bench/*.json
PYTHON := .venv/bin/python
PYTEST_ARGS ?=

# Install locations (override on the command line; DESTDIR stages the tree for a package).
DESTDIR ?=
PREFIX ?= /usr/local
VENVDIR ?= /opt/vmsnapd
SYSCONFDIR ?= /etc
UNITDIR ?= $(PREFIX)/lib/systemd/system
MANDIR ?= $(PREFIX)/share/man
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
DOCDIR ?= $(PREFIX)/share/doc/vmsnapd
SYSTEM_PYTHON ?= /usr/bin/python3
BUILDDIR ?= $(CURDIR)/build
INSTALL_VARS = DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" VENVDIR="$(VENVDIR)" SYSCONFDIR="$(SYSCONFDIR)" \
	UNITDIR="$(UNITDIR)" MANDIR="$(MANDIR)" BASHCOMPDIR="$(BASHCOMPDIR)" DOCDIR="$(DOCDIR)" \
	SYSTEM_PYTHON="$(SYSTEM_PYTHON)" BUILDDIR="$(BUILDDIR)"

.PHONY: test demo lab lab-clean unit install uninstall deb deb-deps deb-test clean \
	bench bench-deps bench-pause bench-ram bench-consistency bench-report bench-scale bench-idle bench-vms \
	bench-group

# Benchmarks: results (JSON, PNG) go to BENCH_OUT; never run them with make -j (they share one 2-core lab).
BENCH_OUT ?= build/bench
BENCH_RESTORES ?= 50
BENCH_PAUSE_ARGS ?=
BENCH_RAM_ARGS ?=
BENCH_ALL = bench-pause bench-ram bench-consistency bench-scale bench-idle bench-vms bench-group

lab:
	bash tests/lab/setup.sh

test: lab
	VMSNAPD_LAB_REQUIRED=1 $(PYTHON) -m pytest tests $(PYTEST_ARGS)

unit:
	$(PYTHON) -m pytest tests/unit $(PYTEST_ARGS)

demo: lab
	$(PYTHON) tests/lab/demo.py

bench-scale: lab
	BENCH_OUT=$(BENCH_OUT) $(PYTHON) bench/scale_vs_sanoid.py

bench-idle: lab
	BENCH_OUT=$(BENCH_OUT) $(PYTHON) bench/idle_scale.py

bench-vms: lab
	BENCH_OUT=$(BENCH_OUT) $(PYTHON) bench/many_vms.py

bench-group: lab
	BENCH_OUT=$(BENCH_OUT) $(PYTHON) bench/group.py

lab-clean:
	@if [ -x $(PYTHON) ]; then $(PYTHON) tests/lab/demo.py --clean; else echo "no .venv: nothing set up"; fi

install:
	$(INSTALL_VARS) bash packaging/install.sh

uninstall:
	$(INSTALL_VARS) bash packaging/uninstall.sh

deb-deps:
	bash packaging/build-deps.sh

deb: deb-deps
	bash packaging/build-deb.sh

deb-test: deb
	bash packaging/test-deb-chroot.sh dist/vmsnapd_*.deb

clean:
	rm -rf build dist

bench-deps: lab
	@$(PYTHON) -c 'import matplotlib' 2>/dev/null || $(PYTHON) -m pip install -q -e '.[test,bench]'
	@mkdir -p $(BENCH_OUT)

bench-pause: bench-deps
	$(PYTHON) bench/pause.py $(BENCH_PAUSE_ARGS) --json $(BENCH_OUT)/pause.json

bench-ram: bench-deps
	$(PYTHON) bench/ram_size.py $(BENCH_RAM_ARGS) --json $(BENCH_OUT)/ram.json

bench-consistency: bench-deps
	$(PYTHON) bench/consistency.py -n $(BENCH_RESTORES) --json $(BENCH_OUT)/consistency.json

bench-report:
	$(PYTHON) bench/report.py $(BENCH_OUT)

# One after another; a failing benchmark does not stop the others, it fails `make bench` at the end.
bench: bench-deps
	@rc=0; for t in $(BENCH_ALL); do $(MAKE) --no-print-directory $$t || rc=1; done; \
	$(MAKE) --no-print-directory bench-report || rc=1; exit $$rc
