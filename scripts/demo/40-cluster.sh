#!/usr/bin/env bash
# Demo step 40: cluster publishing. Three local mlos-core instances form the cluster
# demo-prod (one more is demo-staging). A staging -> production promotion, the cluster
# summary (succeeded n/N), the status matrix, a partial failure (exit 9), --atomic refusing
# to switch anyone while an instance is down (exit 10), and round-robin.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

work="$DEMO_ROOT/cluster"
REF=demo/cluster-bert@v1
mkdir -p "$work/src"
head -c 2000000 /dev/urandom >"$work/src/model.safetensors"
echo '{"model_type": "bert"}' >"$work/src/config.json"
axon install "$work/src" --as "$REF" -q

say "cluster: three instances for production, one for staging (all on loopback)"
before=$(wc -l <"$DEMO_PIDS_FILE")
C1=$(start_mlos_core core-1 "$work/core-1")
C2=$(start_mlos_core core-2 "$work/core-2")
C3=$(start_mlos_core core-3 "$work/core-3")
ST=$(start_mlos_core staging-1 "$work/staging-1")
# merge the clusters into the config the earlier steps wrote (both seed config forms)
python - "$AXON_HOME/config.yaml" "$C1" "$C2" "$C3" "$ST" <<'PY'
import sys, yaml
path, c1, c2, c3, st = sys.argv[1:]
try:
    conf = yaml.safe_load(open(path)) or {}
except FileNotFoundError:
    conf = {}
conf.setdefault("clusters", {})["demo-prod"] = {
    "instances": [c1, c2, c3], "strategy": "all", "storage_type": "api"}
conf["clusters"]["demo-rr"] = {"instances": [c1, c2, c3], "strategy": "round-robin"}
conf.setdefault("mlos_targets", {})["demo-staging"] = {
    "type": "cluster", "instances": [st], "storage_type": "api"}
yaml.safe_dump(conf, open(path, "w"), sort_keys=False)
PY
run sed -n '/clusters:/,$p' "$AXON_HOME/config.yaml"

say "cluster: staging first, then promote to production (the same publish, another target)"
run axon publish "$REF" --target demo-staging
run axon publish "$REF" --target demo-prod

say "cluster: status matrix: instance x (present, checksum ok, registered)"
run axon status "$REF" --target demo-prod

say "cluster: a new build while core-3 is down: partial failure, exit 9"
head -c 2000000 /dev/urandom >"$work/src/model.safetensors"
axon install "$work/src" --as demo/cluster-bert@v2 -q
kill "$(sed -n "$((before + 3))p" "$DEMO_PIDS_FILE")"  # core-3, started third above
set +e
run axon publish demo/cluster-bert@v2 --target demo-prod --retries 0 --timeout 5
echo "exit code: $? (9 = some instances failed)"
run axon publish demo/cluster-bert@v2 --target demo-prod --retries 0 --timeout 5 --min-success 2
echo "exit code: $? (--min-success 2: two of three is enough)"
run axon status demo/cluster-bert@v2 --target demo-prod
echo "exit code: $? (drift is visible at a glance)"

say "cluster: --atomic stages everywhere first; with core-3 down nobody switches, exit 10"
axon install "$work/src" --as demo/cluster-bert@v3 -q
run axon publish demo/cluster-bert@v3 --target demo-prod --atomic --retries 0 --timeout 5
echo "exit code: $? (10 = no instance got it; each still serves what it had)"
set -e

say "cluster: round-robin: each publish goes to the next instance (position kept on disk)"
run axon publish demo/cluster-bert@v2 --target demo-rr --retries 0 --timeout 5 || true
run axon publish demo/cluster-bert@v2 --target demo-rr --retries 0 --timeout 5 || true
run cat "$AXON_HOME/state/round-robin.json"

say "cluster: --json gives one result per instance"
run axon publish "$REF" --target demo-staging --json
