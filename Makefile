# The README's commands. Each installs what it needs on a fresh Debian machine.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
APT    := iptables ipset conntrack libnetfilter-queue-dev iproute2 curl kmod ethtool libpcap0.8 tcpdump librsvg2-bin netbase

.PHONY: test demo labs bench lint deps clean

deps:
	@missing=""; for p in $(APT); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

$(STAMP): pyproject.toml
	$(MAKE) deps
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

demo: $(STAMP)
	$(PY) examples/demo.py

# Every classroom lab in examples/labs (as root); each builds and removes its own lab,
# named LAB_PREFIX plus a random suffix (`make labs LAB_PREFIX=ws3`).
LAB_PREFIX ?= lab
labs: $(STAMP)
	@failed=""; for lab in examples/labs/[0-9][0-9]_*.py; do \
	  $(PY) $$lab --prefix '$(LAB_PREFIX)' || failed="$$failed $$(basename $$lab)"; done; \
	if [ -n "$$failed" ]; then echo "labs that failed:$$failed"; exit 1; fi; \
	echo "every lab passed"

bench: $(STAMP)
	$(PY) -m tcpscapy.bench
	$(PY) -m tcpscapy.bench.lossy --write BENCHMARKS.md

clean:
	rm -rf $(VENV) .pytest_cache
