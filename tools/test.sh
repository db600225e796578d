#!/usr/bin/env bash
# Sets everything up (tools/setup.sh) and runs every test of the workspace.
#   bash tools/test.sh [extra cargo test arguments]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash tools/setup.sh
# A CPU-only Triton Inference Server for the remote-inference tests (crates/triton).
bash tools/setup-triton.sh
# A one-off build gains nothing from incremental state; it only costs disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
free_kib=$(df -Pk . | awk 'NR==2 {print $4}')
if [ "${free_kib:-0}" -lt $((2 * 1024 * 1024)) ]; then
    echo "warning: only $((free_kib / 1024)) MiB free on $(df -P . | awk 'NR==2 {print $6}');" \
        "the test build needs about 1.5 GiB" >&2
fi
# No file imports another that imports it back (issue 9); fails the run with the circle.
echo "==> tools/check-imports"
python3 tools/check-imports
# --all-targets builds the library once, with the features the tests unify, instead of a
# second copy for the plugin's cdylib and the daemon binary.
echo "==> cargo build --workspace --all-targets (the plugin's cdylib too)"
cargo build --workspace --all-targets --locked
echo "==> cargo test --workspace"
cargo test --workspace --locked "$@"
