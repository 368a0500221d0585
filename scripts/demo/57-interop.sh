#!/usr/bin/env bash
# Demo step 57: next to the real upstream Go axon. It installs a model from a registry served
# on loopback and publishes it into an mlos-core's models dir (/var/lib/mlos/models, bound
# to a temp dir in private mount namespaces: nothing outside them is written); our mlos-core
# registers it from upstream's /models/scan; then our axon publishes the same model there
# and sends nothing again: the files upstream placed are hashed where they lie and used.
# Then upstream rewrites, in place, a file mlos-core shares between two models: the copy is
# found damaged (axon status exit 5) and our publish sends that one file again.
# Skipped, saying why, without the binary ($AXON_UPSTREAM_BIN, ../shared/upstream-axon/axon,
# /work/shared/upstream-axon/axon) or without user namespaces.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

bin=""
for candidate in "${AXON_UPSTREAM_BIN:-}" "$PWD/../shared/upstream-axon/axon" /work/shared/upstream-axon/axon; do
  if [ -n "$candidate" ] && [ -x "$candidate" ]; then bin=$candidate; break; fi
done
if [ -z "$bin" ]; then
  say "interop: skipped (no upstream Go axon binary; set AXON_UPSTREAM_BIN=/path/to/axon)"
  exit 0
fi
if ! unshare --mount --map-root-user --propagation private true 2>/dev/null; then
  say "interop: skipped (unshare --mount is not allowed here; upstream publish needs /var/lib/mlos/models)"
  exit 0
fi

work="$DEMO_ROOT/interop"
export AXON_HOME="$work/home/.axon"  # the binary keeps ~/.axon: HOME=$work/home for it
models="$work/var-lib-mlos-models"
mkdir -p "$AXON_HOME" "$models" "$work/registry" "$work/tmp"
REF=acme/tiny-bert@v1

# in a private mount namespace: $models at /var/lib/mlos/models (a tmpfs over /var/lib
# gives the mount point where the machine has none), then run "$@"
BOUND_SH='
    set -e
    if [ ! -d /var/lib/mlos/models ]; then
      mount -t tmpfs -o size=1m,mode=755 axon-demo /var/lib; mkdir -p /var/lib/mlos/models
    fi
    mount --bind "$0" /var/lib/mlos/models
    exec "$@"'
bound() {
  unshare --mount --map-root-user --propagation private sh -c "$BOUND_SH" "$models" "$@"
}

say "interop: a registry on loopback serving $REF (a manifest and a tar.gz package)"
reg_port=$(free_port)
python3 - "$work/registry" "$reg_port" <<'EOF'
import hashlib, io, json, os, sys, tarfile
root, port = sys.argv[1], sys.argv[2]
files = {
    "config.json": json.dumps({"model_type": "bert", "hidden_size": 32}).encode(),
    "model.safetensors": os.urandom(2 * 1024 * 1024),
    "tokenizer/vocab.txt": b"[PAD]\n[UNK]\nhello\n",
}
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w:gz") as tar:
    for rel, data in files.items():
        info = tarfile.TarInfo(rel)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
os.makedirs(f"{root}/packages", exist_ok=True)
open(f"{root}/packages/tiny-bert.tar.gz", "wb").write(buf.getvalue())
mdir = f"{root}/api/v1/models/acme/tiny-bert/v1"
os.makedirs(mdir, exist_ok=True)
open(f"{mdir}/manifest.yaml", "w").write(f"""apiVersion: v1
kind: Model
metadata: {{name: tiny-bert, namespace: acme, version: v1, description: served on loopback}}
spec:
  framework: {{name: PyTorch, version: 2.1.0}}
  format:
    type: pytorch
    execution_format: safetensors
    files: [{{path: model.safetensors, size: 0, sha256: ""}}]
distribution:
  package:
    url: http://127.0.0.1:{port}/packages/tiny-bert.tar.gz
    sha256: {hashlib.sha256(buf.getvalue()).hexdigest()}
""")
EOF
(cd "$work/registry" && exec python3 -m http.server "$reg_port" --bind 127.0.0.1) >/dev/null 2>&1 &
echo $! >>"$DEMO_PIDS_FILE"
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$reg_port/" >/dev/null && break; sleep 0.1; done
printf 'cache_dir: %s\nregistry:\n  url: http://127.0.0.1:%s\n  enable_huggingface: false\n' \
  "$AXON_HOME/cache" "$reg_port" >"$AXON_HOME/config.yaml"

say "interop: upstream installs it (its cache: manifest with unquoted timestamps, the .axon package)"
printf '\033[2m$ %s\033[0m\n' "$bin install $REF --format native   (last line shown)"
HOME="$work/home" TMPDIR="$work/tmp" "$bin" install "$REF" --format native | tail -1
ls -A "$AXON_HOME/cache/models/acme/tiny-bert/v1"

say "interop: our mlos-core, its models dir at /var/lib/mlos/models (bound, private namespace)"
port=$(free_port)
# exec all the way down (subshell -> unshare -> sh -> mlos-core): $! is the server itself,
# so the demo's cleanup stops it
(exec unshare --mount --map-root-user --propagation private sh -c "$BOUND_SH" "$models" \
  mlos-core serve --host 127.0.0.1 --port "$port" --models-dir /var/lib/mlos/models \
  --instance-id interop --log-level warning) >"$DEMO_ROOT/interop-core.log" 2>&1 &
echo $! >>"$DEMO_PIDS_FILE"
URL="http://127.0.0.1:$port"
for _ in $(seq 200); do curl -sf "$URL/health" >/dev/null && break; sleep 0.1; done

say "interop: upstream publishes into it; its POST /models/scan registers the model"
HOME="$work/home" TMPDIR="$work/tmp" MLOS_CORE_ENDPOINT="$URL" run bound "$bin" publish "$REF"
curl -s "$URL/models" | python3 -c 'import json,sys; print([m["id"] for m in json.load(sys.stdin)["models"]])'

say "interop: our axon lists, verifies and publishes the same model there: nothing is sent again"
run axon list
run axon verify "$REF"
run axon publish "$REF" --target "$URL"
ls -A "$models/acme/tiny-bert/v1"

say "interop: a copy of it under another name shares its stored bytes (hard links to one blob)"
COPY=acme/tiny-bert-copy@v1
run axon install "$AXON_HOME/cache/models/acme/tiny-bert/v1" --as "$COPY" -q
run axon publish "$COPY" --target "$URL" -q
say "interop: upstream publishes an edited config.json over our version: it rewrites the file in place"
printf '{"model_type": "bert", "hidden_size": 64}' >"$AXON_HOME/cache/models/acme/tiny-bert/v1/config.json"
HOME="$work/home" TMPDIR="$work/tmp" MLOS_CORE_ENDPOINT="$URL" bound "$bin" publish "$REF" | tail -1
say "interop: the scan it asks for finds the copy's stored bytes rewritten: damaged, status exit 5"
for _ in $(seq 100); do  # the scan may outlast upstream's 2 s wait for its answer
  curl -s "$URL/models/acme%2Ftiny-bert-copy%40v1" | grep -q '"damaged": *\["' && break; sleep 0.1
done
curl -s "$URL/models/acme%2Ftiny-bert-copy%40v1" | python3 -c 'import json,sys; m=json.load(sys.stdin)["model"]; print(m["status"], m["damaged"])'
code=0; axon status "$COPY" --target "$URL" || code=$?
echo "(exit $code)"; [ "$code" = 5 ]
say "interop: our publish sends the damaged file again, and only that"
run axon publish "$COPY" --target "$URL"
run axon status "$COPY" --target "$URL"
