#!/usr/bin/env bash
# Regenerates completions/ from the installed `whisfusion` app (typer/click completion shims).
# Usage: scripts/gen_completions.sh [OUT_DIR]   (tests/test_cli.py checks they are current)
set -euo pipefail
out="${1:-$(dirname "$0")/../completions}"
mkdir -p "$out"
_WHISFUSION_COMPLETE=source_bash whisfusion > "$out/whisfusion.bash"
_WHISFUSION_COMPLETE=source_zsh whisfusion > "$out/_whisfusion"
_WHISFUSION_COMPLETE=source_fish whisfusion > "$out/whisfusion.fish"
