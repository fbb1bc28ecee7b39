# Targets a newcomer can guess. `make test` installs what the tests need
# (Debian packages; needs root or sudo) and runs every test.

CARGO      ?= cargo
TARGET     := x86_64-unknown-linux-gnu
# What `make build` ships, builder and firstboot alike (Cargo.toml says
# why this profile).
PROFILE    := dist
OUT        := target/$(TARGET)/$(PROFILE)
DIST       := target/dist
FIRSTBOOT  := $(OUT)/firstboot
# ignition: real Ignition and ignition-validate; python3-venv holds moto;
# bind9-dnsutils (dig) and openssl cross-check firstboot's DNS server and
# CA; curl and nftables attack lab sites from outside their nodes; podman
# checks firstboot's container command line; freeipa-client's
# ipa-client-install checks a worker's enrollment options; etcd-server is
# the real etcd the FleetLock server's tests run on loopback; the rest run
# the lab. The lab cloud (make e2e) also needs xfsprogs (Ignition's disks
# stage formats volumes), ssh (builder status logs in to the nodes) and
# ping (the firewall lets ICMP through). etcd-server: firstboot's etcd
# client is tested against a real etcd on loopback; certmonger: its
# certmonger requests against a private certmonger daemon.
APT_DEPS   := ignition systemd-container debootstrap iproute2 python3-venv \
              bind9-dnsutils openssl curl nftables podman xfsprogs \
              openssh-client iputils-ping freeipa-client etcd-server certmonger
# Prism checks the DigitalOcean client and fake against the official spec.
PRISM_VERSION := 5.16.0
PRISM      := target/tools/prism/node_modules/.bin/prism
# moto (PyPI) is a local S3 server with signature checks: the Spaces
# publisher's tests run against it.
MOTO_VERSION := 5.2.5
MOTO       := target/tools/moto/bin/moto_server
# Each skipped test appends a line here (tests/support/mod.rs); `make
# test` prints and counts them, since the test runner hides them.
SKIPS      := target/test-skips.txt
# What every test run is given: the shipped static binaries (the lab's
# nodes run this firstboot, the end-to-end test this builder) and tools.
TEST_ENV   = BUILDER_TEST_FIRSTBOOT=$(CURDIR)/$(FIRSTBOOT) \
             BUILDER_TEST_BUILDER=$(CURDIR)/$(OUT)/builder \
             PRISM_BIN=$(CURDIR)/$(PRISM) MOTO_SERVER_BIN=$(CURDIR)/$(MOTO) \
             BUILDER_TEST_IPA_SIM=$(CURDIR)/target/debug/ipa-sim \
             SITE_TEST_SKIPS=$(CURDIR)/$(SKIPS)
# The end-to-end test (tests/e2e.rs): ignored by the plain run, printed
# as it goes.
E2E        = $(CARGO) test --locked -p builder --test e2e -- --ignored --nocapture \
             --test-threads=1 --skip bench_

.PHONY: all build firstboot builder test test-deps test-deps-apt lint fmt bench golden render lab lab-image e2e ipa-sim clean

all: build

## build: builder and firstboot, both static (glibc, +crt-static, so they
# run on any node image or Linux machine), side by side in target/dist/.
# One cargo run builds both with one profile and target, so their
# dependencies (tokio, rustls, ring...) compile once. The explicit
# --target keeps RUSTFLAGS away from build scripts and proc macros, which
# cannot be linked statically.
build:
	RUSTFLAGS='-C target-feature=+crt-static' $(CARGO) build --profile $(PROFILE) --locked \
	    --target $(TARGET) -p builder -p firstboot
	@for bin in builder firstboot; do case "$$(ldd $(OUT)/$$bin 2>&1)" in \
	    *"statically linked"*|*"not a dynamic executable"*) ;; \
	    *) echo "error: $(OUT)/$$bin is dynamically linked" >&2; exit 1;; esac; done
	@mkdir -p $(DIST)
	cp $(OUT)/builder $(FIRSTBOOT) $(DIST)/
	@echo "built $(DIST)/builder ($$(stat -c %s $(DIST)/builder) bytes) and" \
	    "$(DIST)/firstboot ($$(stat -c %s $(DIST)/firstboot) bytes), static"

# Each alone would build different dependency features (a second
# dependency build); both come from the one build.
builder firstboot: build

## render: the main job on the bundled example
render: build
	$(DIST)/builder render examples/hosts.yaml --out rendered

## lab-image: build (or find cached) the lab node image (root)
lab-image:
	$(CARGO) run --locked -q -p site-lab -- image

## lab: boot examples/lab.yaml as three lab nodes, by hand (root)
lab: build
	$(DIST)/builder render examples/lab.yaml --out target/lab/rendered
	$(CARGO) run --locked -q -p site-lab -- up target/lab/rendered --firstboot $(FIRSTBOOT)

## test-deps: what the tests use: Debian packages (real Ignition, the
## lab), Prism (checks the DigitalOcean client against the spec) and moto
## (an S3 server for publishing to Spaces)
test-deps: test-deps-apt $(PRISM) $(MOTO)

test-deps-apt:
	@missing=""; for p in $(APT_DEPS); do \
	    dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	command -v npm >/dev/null 2>&1 || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    echo "installing Debian packages:$$missing"; \
	    $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; fi

$(PRISM): | test-deps-apt
	npm install --no-audit --no-fund --silent --prefix target/tools/prism \
	    @stoplight/prism-cli@$(PRISM_VERSION)

$(MOTO): | test-deps-apt
	python3 -m venv target/tools/moto
	target/tools/moto/bin/pip install --quiet --disable-pip-version-check \
	    'moto[server]==$(MOTO_VERSION)'

## test: install test needs, build (the tests run its static firstboot),
## run every test; skipped tests are listed and counted at the end
test: test-deps build ipa-sim
	@rm -f $(SKIPS); mkdir -p $(dir $(SKIPS))
	@status=0; $(TEST_ENV) $(CARGO) test --locked --workspace || status=$$?; \
	$(TEST_ENV) $(E2E) || status=$$?; \
	if [ -s $(SKIPS) ]; then \
	    echo; echo "skipped tests ($$(wc -l < $(SKIPS))), each with what it needs:"; \
	    sed 's/^/  /' $(SKIPS); \
	else echo; echo "skipped tests: none"; fi; \
	exit $$status

## e2e: the whole promise on one machine: builder init, render, launch
## (against the lab cloud: droplets boot as lab nodes), status over SSH,
## destroy; a 3-host and a 5-host site; one line per step and a summary
## table (root; about a minute here)
e2e: test-deps build ipa-sim
	@rm -f $(SKIPS); mkdir -p $(dir $(SKIPS))
	@status=0; $(TEST_ENV) $(E2E) || status=$$?; \
	if [ -s $(SKIPS) ]; then echo "skipped:"; sed 's/^/  /' $(SKIPS); fi; \
	exit $$status

## ipa-sim: the FreeIPA simulator lab nodes run where Fedora CoreOS runs
## the freeipa-server container (tests/ipa-sim)
ipa-sim:
	$(CARGO) build --locked -p ipa-sim

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## golden: regenerate tests/golden/ from examples/hosts.yaml
golden:
	BUILDER_REGENERATE_GOLDEN=1 $(CARGO) test --locked -p builder --test render golden

## bench: render and lab timings and sizes, launch to assembled in the
## lab cloud (figures go into BENCHMARKS.md)
bench: test-deps build ipa-sim
	BUILDER_TEST_FIRSTBOOT=$(CURDIR)/$(FIRSTBOOT) $(CARGO) test --release --locked \
	    -p builder --test bench -- --ignored --nocapture --test-threads=1
	$(TEST_ENV) $(CARGO) test --locked -p builder --test e2e -- --ignored --nocapture \
	    --test-threads=1 bench_
	# The handoff's etcd roll: write latency before and during it (the
	# line starting "bench:"), every write read back.
	$(TEST_ENV) $(CARGO) test --locked -p builder --test lab_freeipa -- --nocapture \
	    --test-threads=1 freeipa_assembles

clean:
	$(CARGO) clean
	rm -rf rendered
