#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs the real clients (tftp-hpa,
# atftp, curl, QEMU with iPXE and OVMF), checks formatting and lints, then
# runs every unit and integration test. A missing client fails a test; none
# is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test
