#!/usr/bin/env bash
# Sets everything up (tools/setup.sh) and runs every test of the workspace.
#   bash tools/test.sh [extra cargo test arguments]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash tools/setup.sh
echo "==> cargo build --workspace (the plugin's cdylib, which cargo test does not build)"
cargo build --workspace --locked
echo "==> cargo test --workspace"
cargo test --workspace --locked "$@"
