# pam_openape + escapes. `make demo` and `make test` do all set-up
# (system packages via apt when missing) on a fresh Debian/Ubuntu machine.

CARGO ?= cargo
PREFIX ?= /usr/local

.PHONY: all setup build release demo test lint unit e2e bench fuzz clean

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

# Everything CI runs: formatting, lints, unit tests, end-to-end suites.
# The end-to-end suites need root (setuid binary, test users, mount
# namespaces); run as another user they report themselves skipped.
test: build lint
	$(CARGO) test --workspace --no-fail-fast

bench: release
	./scripts/bench.sh

clean:
	$(CARGO) clean
