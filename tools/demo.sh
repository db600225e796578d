#!/usr/bin/env bash
# README command 1: set everything up, fetch OpenAI's CLIP ViT-B/32 (once, from the Hugging Face
# hub or $HF_ENDPOINT), and run the daemon on pipelines/demo.toml: the CCTV clip vtest.avi, looped
# like a live camera, with events printed as JSON lines. Ctrl-C stops it.
#   bash tools/demo.sh [extra clipfilterd run arguments]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash tools/setup.sh --build
echo "==> clipfilterd model fetch (Xenova/clip-vit-base-patch32)"
target/release/clipfilterd model fetch >/dev/null
echo "==> clipfilterd run --config pipelines/demo.toml"
exec target/release/clipfilterd run --config pipelines/demo.toml "$@"
