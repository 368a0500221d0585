#!/usr/bin/env bash
# Demo step 59: a team whose bare model names mean its own namespace on both sides (axon's
# default_namespace: and mlos-core --default-namespace), so a curl with a bare id finds what
# axon published; and progress without a terminal: three files of 8 MiB or more through a
# slow link print plain lines whose percentage is of the whole target from the first line.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

work="$DEMO_ROOT/namespaces"
mkdir -p "$work/clf"
export AXON_HOME="$work/axon-home"  # this step's own config: the others keep 'local'
mkdir -p "$AXON_HOME"
printf 'default_namespace: vision\n' >"$AXON_HOME/config.yaml"
URL=$(start_mlos_core namespaces "$work/core-models" --default-namespace vision)
port=${URL##*:}

say "namespaces: axon's default_namespace and mlos-core's --default-namespace are both 'vision'"
echo '{"model_type": "bert"}' >"$work/clf/config.json"
for f in model.safetensors shard-2.bin shard-3.bin; do head -c 8400000 /dev/urandom >"$work/clf/$f"; done
run axon install "$work/clf" --as classifier@v1 -q
run curl -s "$URL/stats"; echo

say "progress: no terminal, a slow link (8 MiB/s): a line per target every second or 10%"
python3 - "$port" "$work/proxy.port" >"$work/proxy.log" 2>&1 <<'PY' &
import pathlib, sys, time
from tests.fixtures.proxy import TcpProxy
proxy = TcpProxy(int(sys.argv[1]))  # loopback only, throttled like the tests' slow links
proxy.throttle(8 * 1024 * 1024)
pathlib.Path(sys.argv[2]).write_text(str(proxy.port))
while True:
    time.sleep(1)
PY
echo $! >>"$DEMO_PIDS_FILE"
for _ in $(seq 100); do [ -s "$work/proxy.port" ] && break; sleep 0.1; done
proxy_port=$(cat "$work/proxy.port")
SLOW="http://127.0.0.1:$proxy_port"
printf '\033[2m$ AXON_PROGRESS_INTERVAL=1 axon publish classifier@v1 --target %s 2>&1 | cat\033[0m\n' "$SLOW"
out=$(AXON_PROGRESS_INTERVAL=1 axon publish classifier@v1 --target "$SLOW" 2>&1 | cat)
echo "$out"
first=$(grep -m1 -E "progress: .*% \(" <<<"$out")
case "$first" in *"of 24.0 MiB"*) ;; *) echo "the first progress line is not of the whole: $first"; exit 1 ;; esac

say "namespaces: a bare id with curl finds what axon published as vision/classifier@v1"
run curl -sf "$URL/models/classifier@v1"; echo
