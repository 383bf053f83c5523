#!/usr/bin/env bash
# `make bench`: release build, then (a) the verification chain per call
# and (b) whole-process timings against sudo, (c) request mode: approval-to-exec
# latency and IdP requests per waiting minute. Needs root for (b) and (c).
# (b) also runs with an IdP whose consume answers after 2 ms; set
# BENCH_BASELINE_ESCAPES=/path/to/escapes to measure another build beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p openape-tests --bench chain
cargo bench -p openape-tests --bench elevation
cargo bench -p openape-tests --bench request
