#!/usr/bin/env bash
# Demo step 50: network storage (publish once, many instances read).
#  1. a shared directory read by two mlos-core instances: axon writes it with
#     stage -> fsync -> rename, then registers the model on both (notify_instances);
#  2. a local S3-compatible server (moto, loopback): axon uploads content-addressed blobs and
#     writes the manifest last; two instances started with --models-url pull the model.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

work="$DEMO_ROOT/storage"
mkdir -p "$work/shared"
config="$AXON_HOME/config.yaml"
if ! axon list 2>/dev/null | grep -q "demo/tiny-bert"; then
  say "storage: no demo model in the cache (step 10 did not run); skipping"
  exit 0
fi

say "storage: two mlos-core instances reading one shared models directory"
one=$(start_mlos_core storage-one "$work/shared")
two=$(start_mlos_core storage-two "$work/shared")
echo "instances: $one $two, both on $work/shared"

say "storage: start a local S3-compatible server (moto) on loopback"
export AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_DEFAULT_REGION=us-east-1
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true
s3port=$(free_port)
python -m moto.server -H 127.0.0.1 -p "$s3port" >"$work/moto.log" 2>&1 &
echo $! >>"$DEMO_PIDS_FILE"
S3="http://127.0.0.1:$s3port"
for _ in $(seq 200); do curl -s "$S3" >/dev/null && break; sleep 0.1; done
python - "$S3" <<'PY'
import sys, boto3
boto3.client("s3", endpoint_url=sys.argv[1]).create_bucket(Bucket="mlos-models")
PY
echo "S3 endpoint $S3, bucket mlos-models"
s3one=$(start_mlos_core storage-s3-one "$work/s3-one" --models-url s3://mlos-models/prod \
  --s3-endpoint-url "$S3")
s3two=$(start_mlos_core storage-s3-two "$work/s3-two" --models-url s3://mlos-models/prod \
  --s3-endpoint-url "$S3")

say "storage: two network_storage targets in $config"
python - "$config" "$work/shared" "$one" "$two" "$S3" "$s3one" "$s3two" <<'PY'
import sys, yaml
path, shared, one, two, s3, s3one, s3two = sys.argv[1:]
try:
    data = yaml.safe_load(open(path)) or {}
except FileNotFoundError:
    data = {}
targets = data.get("mlos_targets") or {}
targets["shared-dir"] = {"type": "network_storage", "storage_type": "filesystem",
                         "storage_path": shared, "notify_instances": [one, two]}
targets["shared-s3"] = {"type": "network_storage", "storage_type": "s3",
                        "storage_path": "s3://mlos-models/prod", "endpoint_url": s3,
                        "notify_instances": [s3one, s3two]}
data["mlos_targets"] = targets
with open(path, "w") as fh:
    yaml.safe_dump(data, fh, sort_keys=False)
print(yaml.safe_dump({"mlos_targets": {k: targets[k] for k in ("shared-dir", "shared-s3")}},
                     sort_keys=False))
PY

say "storage: publish to the shared directory (written once, registered on both instances)"
run axon publish demo/tiny-bert@v1 --target shared-dir
run curl -s "$one/models"; echo
run curl -s "$two/models"; echo

say "storage: publish to S3: blobs first, manifest.yaml last (the commit point)"
run axon publish demo/tiny-bert@v1 --target shared-s3
python - "$S3" <<'PY'
import sys, boto3
for obj in boto3.client("s3", endpoint_url=sys.argv[1]).list_objects_v2(Bucket="mlos-models")["Contents"]:
    print(f"  s3://mlos-models/{obj['Key']}  {obj['Size']} B")
PY
echo "both S3 readers pulled and registered it:"
run curl -s "$s3one/models"; echo
run curl -s "$s3two/models"; echo

say "storage: publishing again sends nothing (every blob is already in the bucket)"
echo "$ axon publish demo/tiny-bert@v1 --target shared-s3 --json"
axon publish demo/tiny-bert@v1 --target shared-s3 --json | python -c \
  'import json,sys; r=json.load(sys.stdin)["results"][0]; print("bytes sent:", r["bytes_sent"], "ok:", r["ok"])'
