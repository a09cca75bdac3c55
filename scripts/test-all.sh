#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs the real clients (tftp-hpa,
# atftp, curl, QEMU with iPXE and OVMF, stress-ng), checks formatting and
# lints, then runs every unit and integration test. A missing client fails
# a test; none is skipped.
#
#   scripts/test-all.sh                 the suite
#   scripts/test-all.sh --with-cpu-hog  the same with `stress-ng --cpu 2`
#                                       running alongside (tests must hold
#                                       on a loaded machine too)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
if [ "${1:-}" = "--with-cpu-hog" ]; then
  cargo test --no-run
  stress-ng --cpu 2 --quiet &
  hog=$!
  trap 'kill "$hog" 2>/dev/null || true' EXIT
  echo "test-all: stress-ng --cpu 2 running alongside (pid $hog)"
fi
cargo test
