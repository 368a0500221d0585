#!/usr/bin/env bash
# Demo step 20: mlos-core, the receiving server. Start an instance on loopback, upload a
# model with nothing but curl (multipart), list it, see it registered and on disk, then
# re-publish it: the version is swapped atomically and the old one kept for rollback.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

work="$DEMO_ROOT/server"
mkdir -p "$work/src/tokenizer"
say "server: start mlos-core on loopback"
URL=$(start_mlos_core core-demo "$work/models")
run curl -s "$URL/health"; echo

say "server: a small model, uploaded with curl -F (no axon needed)"
head -c 2000000 /dev/urandom >"$work/src/model.safetensors"
echo '{"hidden_size": 8}' >"$work/src/config.json"
printf 'hello\nworld\n' >"$work/src/tokenizer/vocab.txt"
cat >"$work/src/manifest.yaml" <<'YAML'
apiVersion: v1
kind: Model
metadata: {namespace: demo, name: tiny-bert, version: v1, description: demo model}
spec:
  framework: {name: PyTorch, version: "2.1"}
  format:
    type: safetensors
    execution_format: safetensors
    files:   # upstream style: sizes and sha256 left empty, the server fills them in
      - {path: model.safetensors, size: 0, sha256: ""}
      - {path: config.json, size: 0, sha256: ""}
      - {path: tokenizer/vocab.txt, size: 0, sha256: ""}
YAML
cd "$work/src"
run curl -s -F model_id=demo/tiny-bert@v1 -F manifest=@manifest.yaml \
  -F 'model_files=@model.safetensors;filename=model.safetensors' \
  -F 'model_files=@config.json;filename=config.json' \
  -F 'model_files=@tokenizer/vocab.txt;filename=tokenizer/vocab.txt' \
  "$URL/models/upload"; echo

say "server: listed and registered (id percent-encoded or raw)"
run curl -s "$URL/models"; echo
run curl -s -o /dev/null -w 'GET /models/demo%%2Ftiny-bert%%40v1 -> %{http_code}\n' \
  "$URL/models/demo%2Ftiny-bert%40v1"
run curl -s -X POST "$URL/models/demo/tiny-bert@v1/inference" -d '{"input_ids": [[1, 2, 3]]}'; echo

say "server: on disk, the upstream layout (files are hard links into the blob store)"
run find "$work/models/demo" -type f
run grep -A2 'path: model.safetensors' "$work/models/demo/tiny-bert/v1/manifest.yaml"

say "server: re-publish v1 with a new config: atomic swap, previous generation kept"
echo '{"hidden_size": 16}' >"$work/src/config.json"
curl -s -o /dev/null -F model_id=demo/tiny-bert@v1 -F manifest=@manifest.yaml \
  -F 'model_files=@model.safetensors;filename=model.safetensors' \
  -F 'model_files=@config.json;filename=config.json' \
  -F 'model_files=@tokenizer/vocab.txt;filename=tokenizer/vocab.txt' "$URL/models/upload"
run cat "$work/models/demo/tiny-bert/v1/config.json"
run curl -s -X POST "$URL/v1/models/demo%2Ftiny-bert%40v1/rollback"; echo
run cat "$work/models/demo/tiny-bert/v1/config.json"

say "server: metrics"
curl -s "$URL/metrics" | grep -E '^mlos_(uploads_total|upload_bytes_total|models)[ {]'
