#!/usr/bin/env bash
# Demo step 75: relay. A staging cluster (2 instances) and a production cluster (3) register
# in a real etcd on loopback. axon publishes to staging once (one seed, the other pulls it),
# promotes to production (production pulls from staging: no model bytes from axon), publishes
# a second model to production, and a fourth production instance that joins later catches up
# on both from the desired state by itself.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

if ! command -v etcd >/dev/null; then
  say "relay: etcd not installed (apt-get install etcd-server): step skipped"
  exit 0
fi
work="$DEMO_ROOT/relay"
mkdir -p "$work"

say "relay: etcd on loopback; staging (core-s1, core-s2) and prod (core-1..3) join through it"
client=$(free_port); peer=$(free_port)
etcd --name relay --data-dir "$work/etcd" --log-level warn \
  --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
  --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
  --initial-cluster "relay=http://127.0.0.1:$peer" >"$work/etcd.log" 2>&1 &
echo $! >>"$DEMO_PIDS_FILE"
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$client/health" >/dev/null && break; sleep 0.1; done
DISCOVERY="etcd://127.0.0.1:$client"

declare -A URLS
join() {  # join ID CLUSTER [serve args...]: an mlos-core registered in CLUSTER
  local id=$1 cluster=$2 port; shift 2; port=$(free_port)
  mkdir -p "$work/$id/models"
  mlos-core serve --host 127.0.0.1 --port "$port" --models-dir "$work/$id/models" --no-fsync \
    --log-level warning --cluster "$cluster" --discovery "$DISCOVERY" --discovery-ttl 3 \
    --instance-id "$id" "$@" >"$work/$id.log" 2>&1 &
  echo $! >>"$DEMO_PIDS_FILE"
  URLS[$id]="http://127.0.0.1:$port"
  for _ in $(seq 200); do curl -sf "${URLS[$id]}/health" >/dev/null && break; sleep 0.1; done
  echo "joined $cluster: $id at ${URLS[$id]}"
}
for id in core-s1 core-s2; do join "$id" staging; done
for id in core-1 core-2 core-3; do join "$id" prod --accept-from staging --catch-up-interval 1; done
sleep 1  # the member records are read by each instance's peer list

mkdir -p "$AXON_HOME"
python3 - "$AXON_HOME/config.yaml" "$DISCOVERY" <<'PY'
import pathlib, sys, yaml
path, uri = pathlib.Path(sys.argv[1]), sys.argv[2]
cfg = (yaml.safe_load(path.read_text()) if path.exists() else None) or {}
cfg["clusters"] = cfg.get("clusters") or {}
for name in ("staging", "prod"):
    cfg["clusters"][name] = {"discovery": uri, "storage_type": "api", "relay": True}
path.write_text(yaml.safe_dump(cfg, sort_keys=False))
print(yaml.safe_dump({"clusters": {k: cfg["clusters"][k] for k in ("staging", "prod")}}), end="")
PY

say "relay: publish to staging: one seed gets axon's bytes, the other member pulls from it"
model="$work/model"
mkdir -p "$model"
printf '{"model_type": "bert", "hidden_size": 8}' >"$model/config.json"
head -c $((32 * 1024 * 1024)) /dev/urandom >"$model/model.safetensors"
run axon install "$model" --as demo/relay-bert@v1 --quiet
run axon publish demo/relay-bert@v1 --target staging

say "relay: promote to prod: prod's members pull from staging's (no model bytes from axon)"
run axon promote demo/relay-bert@v1 --from staging --to prod

say "relay: a refused promotion: staging disagrees with the cache"
head -c 4096 /dev/urandom >"$model/model.safetensors"
run axon install "$model" --as demo/relay-bert@v1 --quiet
if axon promote demo/relay-bert@v1 --from staging --to prod; then
  echo "the promotion should have been refused" >&2; exit 1
else
  echo "(exit $?: refused, nothing changed on prod)"
fi

say "relay: a second model, published to prod (by relay) before core-4 exists"
other="$work/model2"
mkdir -p "$other"
printf '{"model_type": "gpt2", "n_embd": 8}' >"$other/config.json"
head -c $((8 * 1024 * 1024)) /dev/urandom >"$other/model.safetensors"
run axon install "$other" --as demo/relay-gpt@v1 --quiet
run axon publish demo/relay-gpt@v1 --target prod --dry-run   # who would get it how
run axon publish demo/relay-gpt@v1 --target prod

say "relay: core-4 joins prod later and catches up on every model of the desired state by itself"
join core-4 prod --accept-from staging --catch-up-interval 1
held() {  # held ID: does core-4 show that model?
  curl -sf "${URLS[core-4]}/models/$(python3 -c 'import sys,urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1")" >/dev/null
}
for _ in $(seq 150); do
  held demo/relay-bert@v1 && held demo/relay-gpt@v1 && break; sleep 0.2
done
for id in demo/relay-bert@v1 demo/relay-gpt@v1; do
  held "$id" && echo "core-4 holds $id: nobody published it again" \
    || { echo "core-4 did not catch up on $id:"; curl -s "${URLS[core-4]}/health"; exit 1; }
done
for _ in $(seq 50); do  # the catch-up report settles at its next round
  curl -s "${URLS[core-4]}/health" | python3 -c \
    'import json,sys; sys.exit(json.load(sys.stdin)["relay"]["catching_up"])' && break; sleep 0.2
done
python3 - "${URLS[core-4]}" <<'PY'
import json, sys, urllib.request
url = sys.argv[1]
relay = json.load(urllib.request.urlopen(f"{url}/health"))["relay"]
report = relay["catch_up"]
metrics = urllib.request.urlopen(f"{url}/metrics").read().decode()
pulled = next(
    int(line.split()[1]) for line in metrics.splitlines()
    if line.startswith("mlos_relay_pulled_bytes_total ")
)
print(
    f"core-4: catching_up {relay['catching_up']}, desired {report['desired']}, "
    f"current {report['current']}, {pulled / 1024 / 1024:.1f} MiB pulled from its peers "
    "(/metrics mlos_relay_pulled_bytes_total)"
)
PY
