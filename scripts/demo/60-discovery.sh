#!/usr/bin/env bash
# Demo step 60: service discovery. A real etcd on loopback; three mlos-core instances join
# the cluster "disco" through it (no instance list in the config); axon lists them with their
# health and publishes to all of them; one is killed -9 and drops out after its TTL; a new
# one joins and the next publish includes it.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

if ! command -v etcd >/dev/null; then
  say "discovery: etcd not installed (apt-get install etcd-server): step skipped"
  exit 0
fi
work="$DEMO_ROOT/discovery"
mkdir -p "$work"
TTL=3

say "discovery: start etcd on loopback"
client=$(free_port); peer=$(free_port)
etcd --name demo --data-dir "$work/etcd" --log-level warn \
  --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
  --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
  --initial-cluster "demo=http://127.0.0.1:$peer" >"$work/etcd.log" 2>&1 &
echo $! >>"$DEMO_PIDS_FILE"
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$client/health" >/dev/null && break; sleep 0.1; done
DISCOVERY="etcd://127.0.0.1:$client"
echo "etcd ready at $DISCOVERY"

declare -A PIDS URLS
join() {  # join ID: start an mlos-core that registers itself in cluster "disco"
  local id=$1 port; port=$(free_port)
  mkdir -p "$work/$id/models"
  mlos-core serve --port "$port" --models-dir "$work/$id/models" --no-fsync --log-level warning \
    --cluster disco --discovery "$DISCOVERY" --discovery-ttl "$TTL" --instance-id "$id" \
    >"$work/$id.log" 2>&1 &
  PIDS[$id]=$!; URLS[$id]="http://127.0.0.1:$port"
  echo "${PIDS[$id]}" >>"$DEMO_PIDS_FILE"
  for _ in $(seq 200); do curl -sf "${URLS[$id]}/health" >/dev/null && break; sleep 0.1; done
  echo "joined: $id at ${URLS[$id]}"
}
members() {  # the member ids etcd currently lists
  python3 - "$DISCOVERY" <<'PY'
import sys
from axon.discovery import discover
print(" ".join(m.instance_id for m in discover(sys.argv[1], "disco")))
PY
}
wait_members() {  # wait until the members are exactly "$1"
  for _ in $(seq 100); do [[ "$(members 2>/dev/null)" == "$1" ]] && return 0; sleep 0.2; done
  echo "members did not become '$1' (now: $(members))" >&2; return 1
}

say "discovery: three instances register themselves (mlos-core serve --cluster --discovery)"
for id in core-1 core-2 core-3; do join "$id"; done
wait_members "core-1 core-2 core-3"

say "discovery: the config names only the discovery source (added to \$AXON_HOME/config.yaml)"
mkdir -p "$AXON_HOME"
python3 - "$AXON_HOME/config.yaml" "$DISCOVERY" <<'PY'
import pathlib, sys, yaml
path, uri = pathlib.Path(sys.argv[1]), sys.argv[2]
cfg = (yaml.safe_load(path.read_text()) if path.exists() else None) or {}
cfg["clusters"] = cfg.get("clusters") or {}
cfg["clusters"]["disco"] = {"discovery": uri, "storage_type": "api"}
path.write_text(yaml.safe_dump(cfg, sort_keys=False))
print(yaml.safe_dump({"clusters": {"disco": cfg["clusters"]["disco"]}}, sort_keys=False), end="")
PY
run axon targets show disco

say "discovery: publish to the discovered cluster reaches all three"
model="$work/model"
mkdir -p "$model"
printf '{"model_type": "bert", "hidden_size": 8}' >"$model/config.json"
head -c 65536 /dev/urandom >"$model/model.safetensors"
run axon install "$model" --as demo/disco-bert@v1 --quiet
run axon publish demo/disco-bert@v1 --target disco

say "discovery: kill -9 core-2; it drops out once its ${TTL}s lease expires"
kill -9 "${PIDS[core-2]}"
wait "${PIDS[core-2]}" 2>/dev/null || true
start=$SECONDS
wait_members "core-1 core-3"
echo "core-2 gone from discovery after ~$((SECONDS - start))s"

say "discovery: core-4 joins; the next publish includes it"
join core-4
wait_members "core-1 core-3 core-4"
run axon targets show disco
run axon publish demo/disco-bert@v1 --target disco
curl -sf "${URLS[core-4]}/models/demo%2Fdisco-bert%40v1" >/dev/null && echo "core-4 has demo/disco-bert@v1"

say "discovery: clean shutdown (SIGTERM) deregisters at once"
kill -TERM "${PIDS[core-4]}"
wait "${PIDS[core-4]}" 2>/dev/null || true
run python3 -c "from axon.discovery import discover; print([m.instance_id for m in discover('$DISCOVERY', 'disco')])"
