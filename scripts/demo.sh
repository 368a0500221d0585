#!/usr/bin/env bash
# `make demo`: the whole publish story, end to end, on this machine only (loopback).
# Each step is a script in scripts/demo/ (run in name order) that sources scripts/demo/lib.sh.
# Everything lives in a temporary directory that is removed at the end; servers started by a
# step are stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEMO_ROOT="$(mktemp -d -t axon-demo-XXXXXX)"
export AXON_HOME="$DEMO_ROOT/axon-home"
export PATH="$PWD/.venv/bin:$PATH"
export DEMO_PIDS_FILE="$DEMO_ROOT/pids"
: > "$DEMO_PIDS_FILE"
cleanup() {
  while read -r pid; do kill "$pid" 2>/dev/null || true; done < "$DEMO_PIDS_FILE"
  wait 2>/dev/null || true
  rm -rf "$DEMO_ROOT"
}
trap cleanup EXIT
for step in scripts/demo/[0-9]*.sh; do
  bash "$step"
done
echo
echo "demo finished: everything ran against loopback only; temporary files removed."
