# pam_openape + escapes. `make demo` and `make test` do all set-up
# (system packages via apt when missing) on a fresh Debian/Ubuntu machine.

CARGO ?= cargo
PREFIX ?= /usr/local

.PHONY: all setup build release demo test lint deny unit e2e bench fuzz clean

all: build

setup:
	./scripts/setup.sh

build: setup
	$(CARGO) build --workspace --all-targets

release: setup
	$(CARGO) build --workspace --release

demo: build
	./scripts/demo.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# What may enter the dependency tree (deny.toml): licenses, banned crates
# (a JWT library, RSA, ECDSA, OpenSSL), crate sources. Offline: only this
# host's platform (crates other platforms use need not be on disk), and the
# advisory check (its database comes from the network) is not run here.
HOST_TRIPLE := $(shell rustc -vV 2>/dev/null | sed -n 's/^host: //p')
# cargo-deny from crates.io when missing (builds for about 7 minutes on
# two cores, once per machine).
deny: setup
	@$(CARGO) deny --version >/dev/null 2>&1 || { echo "deny: installing cargo-deny (cargo install --locked cargo-deny; a few minutes)"; $(CARGO) install --locked cargo-deny; }
	$(CARGO) deny --offline --locked --all-features --target $(HOST_TRIPLE) \
	  check licenses bans sources

# Everything CI runs: formatting, lints, the dependency check, unit tests,
# end-to-end suites, then the package checks (make package-test, below).
# The end-to-end suites need root (setuid binary, test users, mount
# namespaces); run as another user they report themselves skipped.
# scripts/sudo-rs.sh builds the pinned sudo-rs for the real-sudo suites
# once (cargo install from crates.io, about half a minute on 2 cores) and
# reuses it afterwards.
test: build lint deny
	CARGO="$(CARGO)" ./scripts/sudo-rs.sh
	$(CARGO) test --workspace --no-fail-fast
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) package-test; else echo "skipped: the package checks need root"; fi

bench: release
	./scripts/bench.sh

# Fuzz each target for FUZZ_SECONDS with cargo-fuzz (libFuzzer) on the stable
# toolchain (RUSTC_BOOTSTRAP=1; installs cargo-fuzz if missing); prints
# executions, coverage and crashes per target. See fuzz/run.sh.
FUZZ_SECONDS ?= 600
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) CARGO="$(CARGO)" ./fuzz/run.sh

clean:
	$(CARGO) clean

# ---- Packages and source installs (packaging/; see the man pages there) ----
# `make release && sudo make install` installs from source; `make deb`,
# `make rpm`, `make dist` build the .deb, the .rpm and the release tarball
# that packaging/install.sh verifies and installs; `make package-test`
# checks all of them (packaging/tests/check-packages.sh).
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)
DESTDIR ?=
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
export SOURCE_DATE_EPOCH

.PHONY: install uninstall pkg-build deb rpm dist package-test package-chroot-test

pkg-build:
	$(CARGO) build --release -p escapes -p pam_openape

# cargo-deb / cargo-generate-rpm (crates.io) and apt tools, when missing.
deb: pkg-build
	CARGO="$(CARGO)" ./packaging/setup-tools.sh deb
	rm -f $(TARGET_DIR)/debian/openape-escapes_*.deb
	$(CARGO) deb -p escapes --no-build --no-strip -o $(TARGET_DIR)/debian/
	./packaging/debian/add-md5sums.sh $(TARGET_DIR)/debian/openape-escapes_$(VERSION)-1_amd64.deb

rpm: pkg-build
	CARGO="$(CARGO)" ./packaging/setup-tools.sh rpm
	mkdir -p target/packaging/man $(TARGET_DIR)/generate-rpm
	for m in escapes.8 pam_openape.8 openape.toml.5; do gzip -9n -c packaging/man/$$m > target/packaging/man/$$m.gz; done
	rm -f $(TARGET_DIR)/generate-rpm/openape-escapes-*.rpm
	$(CARGO) generate-rpm -p escapes-cli -o $(TARGET_DIR)/generate-rpm/

dist: pkg-build
	./packaging/make-dist.sh $(VERSION) $(TARGET_DIR)/release/escapes $(TARGET_DIR)/release/libpam_openape.so $(TARGET_DIR)/dist

# Source install: binaries from `make release` (build as your user first).
# PREFIX (default /usr/local) and DESTDIR as usual; the PAM module goes to
# the system's PAM directory (override with PAMDIR=); /etc/openape/config.toml
# is installed only when there is none.
install:
	DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" BIN=$(TARGET_DIR)/release/escapes \
	  PAM=$(TARGET_DIR)/release/libpam_openape.so TOP=. ./packaging/install-files.sh install

# Removes what `make install` added; keeps the config and the audit log.
uninstall:
	DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" TOP=. ./packaging/install-files.sh uninstall

# Builds the .deb, the .rpm and the tarball, then checks contents, modes,
# metadata, lintian, dpkg --root install/upgrade/purge running a grant,
# rpm --root install, install.sh (good and bad checksums), make install;
# then the chroot test below. Part of `make test`.
package-test: build deb rpm dist
	./packaging/setup-tools.sh test
	./packaging/tests/check-packages.sh
	./packaging/tests/chroot-test.sh

# The .deb in a debootstrap chroot of this release (the Debian mirror; about
# a minute the first time, seconds with the cached base): apt install,
# escapes trust, a grant run, sudo through the sample stack, pam-auth-update,
# apt purge.
package-chroot-test: build deb
	./packaging/setup-tools.sh test
	./packaging/tests/chroot-test.sh
