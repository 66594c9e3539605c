# sluice: the two commands of the quick start are `make run` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
RUN_SECONDS ?=
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: run test deps build release install lab-up lab-down bench fuzz clippy fmt check-config clean

## Install the Debian packages the build and the tests need (only what is missing).
deps:
	@bash tools/scripts/install-deps.sh

build: deps
	$(CARGO) build --workspace --all-targets

release: deps
	$(CARGO) build --release --workspace --bins

## Install binaries, systemd units, example configs and the README under DESTDIR/PREFIX (after
## `make release`; BINDIR=target/debug installs a debug build). Units go to /etc/systemd/system
## with their paths following PREFIX; an existing /etc/sluice/sluiced.toml is never touched.
PREFIX ?= /usr/local
BINDIR ?= target/release
DESTDIR ?=
install:
	@for b in sluiced sluice sluice-k8s-sync sluice-decap; do \
	    test -x $(BINDIR)/$$b || { echo "install: no $(BINDIR)/$$b; run make release first" >&2; exit 1; }; \
	done
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)/etc/systemd/system $(DESTDIR)/etc/sluice/examples \
	    $(DESTDIR)$(PREFIX)/share/doc/sluice
	install -m 0755 $(BINDIR)/sluiced $(BINDIR)/sluice $(BINDIR)/sluice-k8s-sync $(BINDIR)/sluice-decap \
	    $(DESTDIR)$(PREFIX)/bin/
	for u in systemd/*.service; do \
	    sed 's#/usr/local#$(PREFIX)#g' $$u > $(DESTDIR)/etc/systemd/system/$$(basename $$u); \
	    chmod 0644 $(DESTDIR)/etc/systemd/system/$$(basename $$u); \
	done
	install -m 0644 configs/*.toml configs/*.yaml configs/*.json $(DESTDIR)/etc/sluice/examples/
	install -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/sluice/README.md
	cp -r docs/decisions $(DESTDIR)$(PREFIX)/share/doc/sluice/

## Build, bring the lab up, start sluiced on it, show traffic crossing it. Ctrl-C stops;
## RUN_SECONDS=N stops by itself after N seconds. Non-zero exit if the demo traffic did not pass.
run: release
	@RUN_SECONDS=$(RUN_SECONDS) bash tools/scripts/demo.sh

## Every test, including the namespace/XDP/AF_XDP ones (those need root; they skip with a reason otherwise).
test: deps
	$(CARGO) build --workspace --all-targets
	bash tools/scripts/check-config-examples.sh
	$(CARGO) test --workspace --no-fail-fast

lab-up: deps
	bash tools/lab/lab.sh up sl $${QUEUES:-1}

lab-down:
	bash tools/lab/lab.sh down sl

## Criterion benchmarks (mem-backend pipeline).
bench: deps release
	$(CARGO) bench -p sluice-bench --bench pipeline --bench scale --bench overlay --bench lb --bench policy --bench flows
	@# the SYN flood of issue 9 at the generator's full rate (FLOOD_RATE=PPS for another rate)
	RATE=$${FLOOD_RATE:-0} bash bench/scripts/syn-flood.sh 10
	bash bench/scripts/malformed-flood.sh 10
	@# against the kernel's datapaths, in one run each (BENCHMARKS.md)
	bash bench/scripts/forward-rate.sh 3
	bash bench/scripts/encap-rate.sh 3
	bash bench/scripts/latency.sh 5
	bash bench/scripts/service-scale.sh 2
	python3 bench/scripts/plot.py

## Fuzz the full parser and pipeline (FUZZ_SECONDS, default 600). cargo-fuzz needs nightly
## features: RUSTC_BOOTSTRAP=1 lets the installed stable toolchain provide them.
FUZZ_SECONDS ?= 600
fuzz: deps
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	mkdir -p fuzz/corpus/parse
	cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none parse corpus/parse seeds/parse -- -max_total_time=$(FUZZ_SECONDS) -max_len=4096

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
