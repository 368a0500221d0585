#!/usr/bin/env bash
# Demo step 52: what axon says about shared storage, and only what it checked.
#  1. a file:// URL one slash short is refused, naming the directory meant (not written to /x);
#  2. a reader that does not register from the share is told how (--register-root DIR);
#  3. `axon status` says it compared sizes, not bytes; --full-verify finds a same-size change;
#  4. upstream's `install --format onnx` gets a one-line pointer (axon does not convert).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

work="$DEMO_ROOT/storage-checks"
mkdir -p "$work/share"
if ! axon list 2>/dev/null | grep -q "demo/tiny-bert"; then
  say "storage checks: no demo model in the cache (step 10 did not run); skipping"
  exit 0
fi
expect_code() {  # CODE COMMAND...: run it, show its output, check its exit code
  local want=$1 code=0
  shift
  printf '\033[2m$ %s\033[0m\n' "$*"
  "$@" || code=$?
  [ "$code" -eq "$want" ] || { echo "expected exit $want, got $code" >&2; exit 1; }
}

say "storage checks: file://tmp/x is host 'tmp', path /x: refused, naming file:///tmp/x"
expect_code 3 axon publish demo/tiny-bert@v1 --target "file:/${work}/share"

say "storage checks: an instance that reads its own models dir, not the share"
own=$(start_mlos_core storage-checks-own "$work/own-models")
expect_code 8 axon publish demo/tiny-bert@v1 --target "file://$work/share" --notify-instance "$own"

say "storage checks: one that registers from the share (--register-root) is told"
reader=$(start_mlos_core storage-checks-reader "$work/reader-models" --register-root "$work/share")
run axon publish demo/tiny-bert@v1 --target "$work/share" --notify-instance "$reader" -q
run axon status demo/tiny-bert@v1 --target "$work/share" --notify-instance "$reader"

say "storage checks: a same-size change on the share: sizes still match, --full-verify sees it"
weights=$(find "$work/share/demo/tiny-bert/v1" -name '*.safetensors' | head -1)
chmod u+w "$weights"
size=$(stat -c %s "$weights")
head -c "$size" /dev/zero >"$weights"
run axon status demo/tiny-bert@v1 --target "$work/share"
expect_code 5 axon status demo/tiny-bert@v1 --target "$work/share" --full-verify

say "storage checks: upstream's install --format: native is the files as they are; onnx is refused"
expect_code 2 axon install "$DEMO_ROOT/tiny-bert.axon" --as demo/converted@v1 --format onnx
run axon config get default_namespace
