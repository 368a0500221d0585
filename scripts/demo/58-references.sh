#!/usr/bin/env bash
# Demo step 58: references as the seed and upstream users type them. `hf/<repo>@latest` (the
# seed's first command) from a Hugging Face Hub stand-in on loopback (HF_ENDPOINT) whose
# default branch is not "main"; a bare name (federated-model@v1.0, the README's) taking the
# default namespace; references without a version taking the only installed one, or asking
# for one; and an entry written the way the upstream Go axon writes it (unquoted timestamps,
# a manifest listing one file, its .axon package) verified and published through the API.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

work="$DEMO_ROOT/references"
mkdir -p "$work"
URL=$(start_mlos_core references "$work/core-models")

say "references: hf/<repo>@latest means the repo's default branch (here 'trunk'), at its commit"
port=$(free_port)
python3 - "$port" >"$work/hub.log" 2>&1 <<'PY' &
import sys, time
from tests.fixtures.hfhub import FakeRepo, serve_fake_hub
files = {"config.json": b'{"model_type": "bert"}', "model.safetensors": b"\0" * 4096}
with serve_fake_hub(port=int(sys.argv[1])) as hub:
    hub.repos["acme/tiny-bert"] = FakeRepo(files, default_branch="trunk")
    while True:
        time.sleep(1)
PY
echo $! >>"$DEMO_PIDS_FILE"
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/api/models/acme/tiny-bert" >/dev/null && break; sleep 0.1; done
export HF_ENDPOINT="http://127.0.0.1:$port" HF_HOME="$work/hf-home" HF_HUB_DISABLE_TELEMETRY=1
run axon install hf/acme/tiny-bert@latest
run grep -A2 "^  source:" "$AXON_HOME/cache/models/hf/acme/tiny-bert/latest/manifest.yaml"

say "references: a bare name takes the default namespace ('local'; default_namespace in config.yaml)"
mkdir -p "$work/fed"
echo '{"model_type": "bert"}' >"$work/fed/config.json"
head -c 200000 /dev/urandom >"$work/fed/model.safetensors"
run axon install "$work/fed" --as federated-model@v1.0 -q
run axon publish federated-model@v1.0 --target "$URL"
run axon status federated-model@v1.0 --target "$URL"
run curl -s "$URL/models/federated-model@v1.0"; echo

say "references: no version given: the only installed one is used, and said"
run axon verify local/federated-model
run axon install "$work/fed" --as federated-model@v1.1 -q
out=$(axon verify local/federated-model 2>&1) && exit 1 || code=$?
echo "$out (exit $code)"
[ "$code" = 2 ]

say "references: an entry the upstream Go axon wrote (timestamps, one file listed, its package)"
up="$AXON_HOME/cache/models/up/tiny-bert/latest"
mkdir -p "$up"
cp "$work/fed/config.json" "$work/fed/model.safetensors" "$up/"
cat >"$up/manifest.yaml" <<'YAML'
apiVersion: v1
kind: Model
metadata:
    name: tiny-bert
    namespace: up
    version: 1.0.0
    license: ""
    created: 0001-01-01T00:00:00Z
    updated: 0001-01-01T00:00:00Z
spec:
    framework:
        name: PyTorch
        version: 2.0.0
    format:
        type: pytorch
        execution_format: safetensors
        files:
            - path: model.safetensors
              size: 0
              sha256: ""
YAML
echo '{"installed_at": "2026-01-01T00:00:00Z", "namespace": "up", "name": "tiny-bert", "version": "latest"}' \
  >"$up/.axon_metadata.json"
tar -C "$up" -czf "$up/up-tiny-bert-latest.axon" config.json model.safetensors
run axon verify up/tiny-bert@latest
run axon publish up/tiny-bert@latest --target "$URL" -q
run grep -E "created|updated|path:" "$work/core-models/up/tiny-bert/latest/manifest.yaml"
