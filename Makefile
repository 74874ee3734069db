# Quicksilver migration toolkit. On a fresh Debian machine:
#   make demo   installs what it needs, builds, runs the demo
#   make test   installs what it needs, builds, runs every test
#   make bench  installs what it needs, builds (release), runs the benchmarks
#               (one suite: make bench-writes, bench-reads, bench-reads-busy, bench-propagation, bench-cluster, ...)
#   make soak   the kill loops at scale (minutes); make tsan  the tests under ThreadSanitizer

SWIFT ?= swift
APT_PACKAGES := liblmdb-dev librocksdb-dev libxxhash-dev lmdb-utils libcurl4-openssl-dev pkg-config python3 python3-pip python3-yaml memcached curl etcd-server etcd-client iproute2 iptables
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: deps interop-deps interop build release test test-interop fuzz soak tsan container-test container-test-source container-memory operations-doc demo bench replay clean

# A recorded feed to replay: a capture file, a ulog directory or a fixture directory.
FEED ?= Fixtures/kt/basic
DB_MAP ?= 0=,1=aux/

# Installs the Debian packages the build and the tests need (only those missing).
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
	@command -v $(SWIFT) >/dev/null || { echo "swift not found: install Swift 6 (https://www.swift.org/install/linux/) and put it on PATH"; exit 1; }

build: deps
	$(SWIFT) build

# Release builds leave out the run-time exclusivity checks (swift_beginAccess: about a fifth
# of the instructions of a memcached get, most of them inside SwiftNIO; docs/benchmarks.md).
# Debug builds, which the tests and the sanitizers run, keep them.
RELEASE_FLAGS := -Xswiftc -enforce-exclusivity=unchecked
release: deps
	$(SWIFT) build -c release $(RELEASE_FLAGS)

PYTHON ?= python3
PIP_PACKAGES := ukt pymemcache pytest

# Python clients the interop tests use (PyPI): ukt for KT, pymemcache for memcached.
interop-deps:
	@$(PYTHON) -c "import ukt, pymemcache, pytest" 2>/dev/null || $(PYTHON) -m pip install --quiet $(PIP_PACKAGES) \
		|| $(PYTHON) -m pip install --quiet --break-system-packages $(PIP_PACKAGES)

# The XCTest suites, and beside them (--also: parts of the same two lanes) the fuzz seeds,
# the Python interop and deploy tests, two replays and the container test.
test: deps interop-deps
	$(SWIFT) build --build-tests
	SWIFT=$(SWIFT) ./scripts/swift-test.sh --also interop "$(SUBMAKE) --no-print-directory test-interop" \
		--also container "./scripts/container-test.sh .build/debug"

# make itself, named through a variable of its own so that `make -n test` only prints.
SUBMAKE = $(MAKE)

# The part of make test that is not XCTest or the container (built already).
test-interop:
	.build/debug/qsfuzz seeds Fixtures .fuzz/seeds >/dev/null && .build/debug/qsfuzz mutate .fuzz/seeds 3000
	QS_BIN_DIR=.build/debug $(PYTHON) -m pytest -q Tests/interop Tests/deploy
	./scripts/replay.sh .build/debug Fixtures/kt/basic 0=,1=aux/
	./scripts/replay.sh .build/debug Fixtures/kt/medium 0=main/,1=aux/ --allow-clear

# Builds the container image's runtime stage with this host's executables and runs it with
# podman (root needed; skips with a message where podman cannot run). See docs/operations.md.
container-test: build
	./scripts/container-test.sh .build/debug

# The same with the image compiled by the Dockerfile's own Swift build stage (some minutes).
container-test-source:
	./scripts/container-test.sh --from-source

# A 1 GB store in a container with 512 MiB, on LMDB and on RocksDB (minutes; needs root and
# podman, and container-test's base image): peak memory, own memory vs cache, no OOM kill.
container-memory: release
	./scripts/container-memory.sh .build/release

# Regenerates the flag and metric tables of docs/operations.md.
operations-doc: build
	./scripts/gen-operations-doc.sh .build/debug

# Real memcached and Kyoto Tycoon clients (pymemcache, ukt from PyPI) against the binaries.
interop: build interop-deps
	QS_BIN_DIR=.build/debug $(PYTHON) -m pytest -q Tests/interop

demo: build
	./scripts/demo.sh .build/debug

# Replays FEED through qsktbridge into a fresh root and compares with its final.jsonl.
replay: build
	./scripts/replay.sh .build/debug "$(FEED)" "$(DB_MAP)" $(REPLAY_FLAGS)

# Fuzzes every decoder of outside bytes for FUZZ_SECONDS each (libFuzzer + AddressSanitizer,
# its own build in .build-fuzz); see docs/reliability.md.
FUZZ_SECONDS ?= 120
fuzz: deps
	./scripts/fuzz.sh --seconds $(FUZZ_SECONDS)

# The kill loops at scale (Tests/BridgeTests/SoakTests.swift, docs/reliability.md): under a
# live KT workload, 100 SIGKILLs of a bridge, 20 of the root under two duplicate bridges,
# 10 of a replica during its bootstrap; prints lost / duplicated / differing keys (all 0)
# and the time to converge. Any QS_SOAK_* variable set in the environment wins; `make test`
# runs the same test with the short defaults.
soak: deps
	$(SWIFT) build --build-tests
	QS_SOAK_BRIDGE_KILLS=$${QS_SOAK_BRIDGE_KILLS:-100} QS_SOAK_ROOT_KILLS=$${QS_SOAK_ROOT_KILLS:-20} \
	QS_SOAK_REPLICA_KILLS=$${QS_SOAK_REPLICA_KILLS:-10} QS_SOAK_KEYS=$${QS_SOAK_KEYS:-2000} \
	QS_SOAK_VALUE_BYTES=$${QS_SOAK_VALUE_BYTES:-200} QS_SOAK_WRITERS=$${QS_SOAK_WRITERS:-2} \
	QS_SOAK_BULK=$${QS_SOAK_BULK:-16} QS_SOAK_WRITE_EVERY_MS=$${QS_SOAK_WRITE_EVERY_MS:-2} \
	QS_SOAK_REPORT=$(CURDIR)/.build/soak-report.txt QS_TEST_TIMEOUT=3600 SWIFT=$(SWIFT) \
		./scripts/swift-test.sh --filter SoakTests
	@cat .build/soak-report.txt

# The XCTest suites, and every daemon they start, under ThreadSanitizer (its own build in
# .build-tsan); fails on any report. See docs/reliability.md.
tsan: deps
	SWIFT=$(SWIFT) ./scripts/tsan.sh

bench: release
	.build/release/qsbench --out bench/results

# One qsbench suite (writes, reads, reads-busy, propagation, lag, backlog, mirror, cluster, bootstrap, read-loop, scale);
# bench-bootstrap measures 100 MB; QS_BENCH_BOOTSTRAP_SIZES=100,500,1000 adds the 500 MB and 1 GB runs.
# QS_BENCH_* variables tune it (qsbench --help).
bench-%: release
	.build/release/qsbench --suites $* --out bench/results

# Instruction counts under callgrind (needs valgrind): profile-writes, profile-read-loop, profile-reads.
profile-%: release
	./scripts/profile.sh $*

clean:
	rm -rf .build .bench-scratch .build-fuzz .build-tsan .fuzz
