#!/usr/bin/env bash
# Demo step 65: signed models. An instance that takes only models signed by a trusted key
# refuses an unsigned publish before a byte is sent; `axon sign` writes model.sig (the
# OpenSSF model signing format), the model_signing CLI verifies it, the instance takes it
# and reports the signer; a tampered copy registered behind axon's back is refused.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

work="$DEMO_ROOT/signing"
REF=demo/signed-bert@v1
mkdir -p "$work/src" "$work/trusted"
head -c 200000 /dev/urandom >"$work/src/model.safetensors"
echo '{"model_type": "bert"}' >"$work/src/config.json"
axon install "$work/src" --as "$REF" -q

say "signing: a release key (EC P-256); the instance trusts its public half"
run openssl ecparam -name prime256v1 -genkey -noout -out "$work/release.pem"
run openssl ec -in "$work/release.pem" -pubout -out "$work/trusted/release.pub" 2>/dev/null
URL=$(start_mlos_core core-signed "$work/models" --trusted-keys "$work/trusted")
run curl -s "$URL/v1/signing"
echo

say "signing: an unsigned model is refused before any byte is sent (exit 5)"
set +e
run axon publish "$REF" --target "$URL" --retries 0
echo "exit code: $?"
set -e

say "signing: axon sign, axon verify --signature, axon info"
run axon sign "$REF" --key "$work/release.pem"
run axon verify "$REF" --signature --trusted-key "$work/trusted/release.pub"
echo "\$ axon info $REF | grep -E '^(model|signed):'"
axon info "$REF" | grep -E '^(model|signed):'
cache_dir=$(axon info "$REF" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["path"])')
if command -v model_signing >/dev/null; then
  run model_signing verify key "$cache_dir" --signature "$cache_dir/model.sig" \
    --public_key "$work/trusted/release.pub"
fi

say "signing: the signed model is taken; the instance reports who signed it"
run axon publish "$REF" --target "$URL" -q
echo "\$ curl -s $URL/v1/models/demo%2Fsigned-bert%40v1  (its signer)"
curl -s "$URL/v1/models/demo%2Fsigned-bert%40v1" | python3 -c \
  'import json,sys; print("signer:", json.load(sys.stdin)["signer"]["description"])'

say "signing: a copy with one byte changed, placed next to it and registered, is refused"
bad="$work/models/demo/signed-bert/v2"
cp -r "$work/models/demo/signed-bert/v1" "$bad"
python3 - "$bad" <<'PY'
import hashlib, sys, yaml, pathlib
root = pathlib.Path(sys.argv[1])
weights = root / "model.safetensors"
weights.write_bytes(b"\x00" + weights.read_bytes()[1:])  # a byte changed ...
manifest = yaml.safe_load((root / "manifest.yaml").read_text())
manifest["metadata"]["version"] = "v2"
for f in manifest["spec"]["format"]["files"]:  # ... and the manifest made to match it
    if f["path"] == "model.safetensors":
        f["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
(root / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
PY
run curl -s -X POST "$URL/models/register" -H 'Content-Type: application/json' \
  -d '{"model_id": "demo/signed-bert@v2"}'
echo
echo "\$ curl -s $URL/metrics | grep mlos_signature_refusals_total"
curl -s "$URL/metrics" | grep '^mlos_signature_refusals_total'

say "signing: a copy with one byte changed under its signed manifest, then a scan: refused too"
bad="$work/models/demo/signed-bert/v3"
cp -r "$work/models/demo/signed-bert/v1" "$bad"
python3 - "$bad" <<'PY'
import sys, yaml, pathlib
root = pathlib.Path(sys.argv[1])
weights = root / "model.safetensors"
weights.write_bytes(b"\x00" + weights.read_bytes()[1:])  # a byte changed, the digests kept
manifest = yaml.safe_load((root / "manifest.yaml").read_text())
manifest["metadata"]["version"] = "v3"
(root / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
PY
run curl -s -X POST "$URL/models/scan"
echo
echo "\$ curl -s -o /dev/null -w '%{http_code}' $URL/v1/models/demo%2Fsigned-bert%40v3"
curl -s -o /dev/null -w '%{http_code}\n' "$URL/v1/models/demo%2Fsigned-bert%40v3"
echo "\$ curl -s $URL/metrics | grep -E '^mlos_signature_(refusals|hashed)'"
curl -s "$URL/metrics" | grep -E '^mlos_signature_(refusals|hashed)'
