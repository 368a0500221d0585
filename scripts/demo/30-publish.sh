#!/usr/bin/env bash
# Demo step 30: axon publish to one instance. The example model from step 10
# (demo/tiny-bert@v1) goes to a local mlos-core twice: once by filesystem (copy into its
# models dir, then POST /models/register) and once by API (the resumable upload protocol).
# Then status, an unchanged re-publish that moves no bytes, --dry-run and --json.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

work="$DEMO_ROOT/publish"
REF=demo/tiny-bert@v1
if ! axon list 2>/dev/null | grep -q "demo/tiny-bert"; then  # step 10 did not run: make one
  mkdir -p "$work/src"
  head -c 300000 /dev/urandom >"$work/src/model.safetensors"
  echo '{"model_type": "bert"}' >"$work/src/config.json"
  axon install "$work/src" --as "$REF" -q
fi

say "publish: two local instances on loopback"
FS_URL=$(start_mlos_core core-fs "$work/fs-models")
API_URL=$(start_mlos_core core-api "$work/api-models")
# merge two targets into the config the earlier steps wrote
python3 - "$AXON_HOME/config.yaml" "$FS_URL" "$API_URL" "$work/fs-models" <<'PY'
import sys, yaml
path, fs_url, api_url, fs_models = sys.argv[1:]
try:
    conf = yaml.safe_load(open(path)) or {}
except FileNotFoundError:
    conf = {}
targets = conf.get("mlos_targets") or {}
targets["local-fs"] = {  # this machine's models dir: copy, then notify
    "endpoint": fs_url, "access_method": "filesystem", "storage_path": fs_models,
    "dir_mode": "0755", "file_mode": "0644"}
targets["local-api"] = {"endpoint": api_url, "access_method": "api"}  # upload via the API
conf["mlos_targets"] = targets
yaml.safe_dump(conf, open(path, "w"), sort_keys=False)
PY
run sed -n '/mlos_targets:/,$p' "$AXON_HOME/config.yaml"
run axon targets list || true

say "publish: --dry-run shows the plan and changes nothing"
run axon publish "$REF" --target local-fs --dry-run

say "publish: by filesystem (atomic swap into the models dir, then POST /models/register)"
run axon publish "$REF" --target local-fs
run find "$work/fs-models/demo" -maxdepth 3
run curl -s -o /dev/null -w 'GET /models/demo%%2Ftiny-bert%%40v1 on core-fs -> %{http_code}\n' \
  "$FS_URL/models/demo%2Ftiny-bert%40v1"

say "publish: by API (open -> send only the missing blobs -> commit, registered on commit)"
run axon publish "$REF" --target local-api

say "publish: status: on the target? which version? checksums match the cache? registered?"
run axon status "$REF" --target local-fs
run axon status "$REF" --target local-api

say "publish: unchanged re-publish moves no bytes (--json result)"
run axon publish "$REF" --target local-api --json

say "publish: a URL works as a target too; the model is already there"
run axon publish "$REF" --target "$API_URL" -q && echo "ok (exit $?)"

say "publish: a dead instance is one line naming the target, exit 7"
set +e
run axon publish "$REF" --target "http://127.0.0.1:$(free_port)" --retries 1
echo "exit code: $?"
set -e
