#!/usr/bin/env bash
# Demo step 62: what a --target means, written as the seed writes its config. Unquoted file
# modes read as chmod reads them; a cluster whose member `mlos-core-1:PORT` names a configured
# instance and takes its settings (shown with where each came from); a token_env that is not
# set stops before anything is sent; a mistyped target name fails at once with "did you
# mean" (in a private network namespace with its own DNS server, when this machine allows);
# a cluster whose members an instance lists (GET /v1/cluster/members, etcd behind it).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

work="$DEMO_ROOT/targets"
export AXON_HOME="$work/home"  # this step's own config; the model is installed again here
mkdir -p "$work" "$AXON_HOME"
printf 'tenants:\n  demo: {tokens: [demo-s3cret], namespaces: ["demo"]}\n' >"$work/tokens.yaml"
CORE1=$(start_mlos_core targets-core-1 "$work/core-1" --no-fsync --tokens "$work/tokens.yaml" \
  --cluster demo)
model="$work/model"
mkdir -p "$model"
printf '{"model_type": "bert", "hidden_size": 8}' >"$model/config.json"
head -c 65536 /dev/urandom >"$model/model.safetensors"
axon install "$model" --as demo/targets-bert@v1 --quiet

say "targets: the seed's config (unquoted modes, members named host:port, token_env)"
port=${CORE1##*:}
cat >"$AXON_HOME/config.yaml" <<EOF
mlos_targets:
  mlos-core-1:
    endpoint: $CORE1
    access_method: api
    token_env: DEMO_TOKEN
  local-fs:
    endpoint: $CORE1
    access_method: filesystem
    storage_path: $work/local-models
    dir_mode: 750
    file_mode: 640
  mlos-cluster-prod:
    type: cluster
    instances: ["mlos-core-1:$port"]
    timeout: 20
EOF
run cat "$AXON_HOME/config.yaml"

say "targets: modes are octal digits as for chmod (750 is 0750, not 0o1356)"
run axon targets show local-fs
mkdir -p "$work/local-models"
run axon publish demo/targets-bert@v1 --target local-fs --no-notify -q
run stat -c '%a %n' "$work/local-models/demo/targets-bert/v1" \
  "$work/local-models/demo/targets-bert/v1/config.json"

say "targets: the cluster member mlos-core-1:$port takes mlos-core-1's settings"
run axon targets show mlos-core-1
run axon targets show mlos-cluster-prod

say "targets: token_env set but \$DEMO_TOKEN unset: stopped before anything is sent"
unset DEMO_TOKEN
if run axon publish demo/targets-bert@v1 --target mlos-cluster-prod; then exit 1; fi
DEMO_TOKEN=demo-s3cret run axon publish demo/targets-bert@v1 --target mlos-cluster-prod
say "targets: an address typed here takes --token-env NAME (or \$AXON_TOKEN), never a value"
if run axon status demo/targets-bert@v1 --target "$CORE1" --token-env demo-s3cret; then exit 1; fi
MY_TOKEN=demo-s3cret run axon publish demo/targets-bert@v1 --target "$CORE1" --token-env MY_TOKEN -q

say "targets: a mistyped target name (mlos-cluster-prd) fails at once, with did-you-mean"
if [[ $EUID -eq 0 ]] && command -v dnsmasq >/dev/null && unshare --mount --net true 2>/dev/null; then
  # a private network namespace: loopback only, its own DNS server; nothing leaves the machine
  printf 'nameserver 127.0.0.1\n' >"$work/resolv.conf"
  unshare --mount --net bash -c '
    ip link set lo up; mount --bind "$1/resolv.conf" /etc/resolv.conf
    dnsmasq --conf-file=/dev/null --no-resolv --no-hosts --listen-address=127.0.0.1 \
      --bind-interfaces --port=53 --user=root --pid-file="$1/dns.pid" --local=/#/
    for _ in $(seq 50); do (echo >/dev/tcp/127.0.0.1/53) 2>/dev/null && break; sleep 0.1; done
    start=$(date +%s.%N)
    axon publish demo/targets-bert@v1 --target mlos-cluster-prd; code=$?
    echo "exit $code after $(python3 -c "print(round($(date +%s.%N) - $start, 2))") s"
    kill "$(cat "$1/dns.pid")"' _ "$work" || true
else
  echo "(needs root, unshare and dnsmasq for a private DNS server: skipped)"
fi

say "targets: a cluster whose members an instance lists (members_from, GET /v1/cluster/members)"
if command -v etcd >/dev/null; then
  client=$(free_port); peer=$(free_port)
  etcd --name targets --data-dir "$work/etcd" --log-level warn \
    --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "targets=http://127.0.0.1:$peer" >"$work/etcd.log" 2>&1 &
  echo $! >>"$DEMO_PIDS_FILE"
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$client/health" >/dev/null && break; sleep 0.1; done
  A=$(start_mlos_core edge-a "$work/edge-a" --no-fsync --cluster edge --discovery "etcd://127.0.0.1:$client")
  B=$(start_mlos_core edge-b "$work/edge-b" --no-fsync --cluster edge --discovery "etcd://127.0.0.1:$client")
  for _ in $(seq 100); do
    [[ $(curl -sf "$A/v1/cluster/members?probe=false" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["members"]))') == 2 ]] && break
    sleep 0.1
  done
  run curl -s "$A/v1/cluster/members"
  echo
  printf 'clusters:\n  edge:\n    members_from: %s\n' "$A" >>"$AXON_HOME/config.yaml"
  run axon targets show edge
  run axon publish demo/targets-bert@v1 --target edge
else
  echo "(etcd not installed: apt-get install etcd-server; skipped)"
fi
