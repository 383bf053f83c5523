#!/usr/bin/env bash
# `make bench`: release build, then (a) the verification chain per call
# and (b) whole-process timings against sudo. Needs root for (b).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p openape-tests --bench chain
cargo bench -p openape-tests --bench elevation
