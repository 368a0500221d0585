#!/usr/bin/env bash
# Demo step 55: the seed's and upstream's command lines. Go-style boolean flags
# (--validate=false), an ad-hoc shared directory publish that tells an instance
# (--notify-instance) and says when it told nobody, `axon status` on that storage, errors in
# one shape on stderr, and upstream's list -f / version /
# cache / config commands (and a pointer for the ones this axon does not have).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

work="$DEMO_ROOT/parity"
REF=demo/tiny-bert@v1
mkdir -p "$work/src" "$work/share"
head -c 300000 /dev/urandom >"$work/src/model.safetensors"
echo '{"model_type": "bert"}' >"$work/src/config.json"
if ! axon list 2>/dev/null | grep -q "demo/tiny-bert"; then  # step 10 did not run: make one
  axon install "$work/src" --as "$REF" -q
fi

say "parity: Go-style boolean flags; an ad-hoc storage path tells nobody, and says so"
run axon publish "$REF" --target "$work/share" --validate=false --notify=true

say "parity: the same share read by an instance, told with --notify-instance"
URL=$(start_mlos_core parity-reader "$work/share")
run axon publish "$REF" --target "$work/share" --notify-instance "$URL"
run axon status "$REF" --target "$work/share" --notify-instance "$URL"

say "parity: errors are one line on stderr, stdout stays empty"
out=$(axon publish "$REF" --target "$work/no-such-share" 2>"$work/err.txt") && exit 1 || code=$?
echo "exit $code, stdout: '${out}', stderr: $(cat "$work/err.txt")"
[ -z "$out" ] && [ "$code" = 7 ]

say "parity: upstream's commands"
run axon list -f names
run axon version
run axon cache stats
run axon config get cache_dir
axon search bert 2>&1 && exit 1 || echo "(exit $?)"
