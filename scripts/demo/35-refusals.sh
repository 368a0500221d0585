#!/usr/bin/env bash
# Demo step 35: what axon and mlos-core refuse. A server that only pretends to be MLOS Core
# (every answer a 200 {"status":"success"}) gets no "published"; a model id whose directory
# would nest inside another model's is refused naming it; a registration cannot point
# mlos-core at /etc; a request head past the size limit is cut.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

work="$DEMO_ROOT/refusals"
REF=demo/tiny-bert@v1
mkdir -p "$work/src"
head -c 300000 /dev/urandom >"$work/src/model.safetensors"
echo '{"model_type": "bert"}' >"$work/src/config.json"
if ! axon list 2>/dev/null | grep -q "demo/tiny-bert"; then  # step 10 did not run: make one
  axon install "$work/src" --as "$REF" -q
fi
URL=$(start_mlos_core core-guard "$work/models")

say "refusals: a server that answers 200 {\"status\":\"success\"} to everything is not MLOS Core"
port=$(free_port)
python3 - "$port" <<'PY' >"$DEMO_ROOT/liar.log" 2>&1 &
import http.server, sys
class Liar(http.server.BaseHTTPRequestHandler):
    def _lie(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"status":"success"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = do_PUT = do_HEAD = _lie
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Liar).serve_forever()
PY
echo $! >>"$DEMO_PIDS_FILE"
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done
set +e
run axon publish "$REF" --target "http://127.0.0.1:$port" --retries 0
echo "exit code: $? (7: the instance answered outside the protocol; nothing is reported published)"
set -e

say "refusals: two model ids never share a directory"
run axon publish "$REF" --target "$URL" -q && echo "published $REF (at demo/tiny-bert/v1/)"
set +e
run axon install "$work/src" --as demo/tiny-bert/v1@x  # in the cache: inside demo/tiny-bert@v1
echo "exit code: $?"
set -e
other="$work/other-home"  # a colleague's cache, where the id is free
AXON_HOME="$other" axon install "$work/src" --as demo/tiny-bert/v1@x -q
set +e
AXON_HOME="$other" run axon publish demo/tiny-bert/v1@x --target "$URL" --retries 0
echo "exit code: $? (on the instance, too: demo/tiny-bert@v1 holds that directory)"
set -e

say "refusals: registration only of a model's own directory (never /etc, never through a link)"
run curl -s -X POST "$URL/models/register" -H 'Content-Type: application/json' \
  -d '{"model_id": "demo/etc@v1", "path": "/etc"}'
echo

say "refusals: a request head past --max-header-size (32K) is cut with 431"
junk=$(head -c 40000 /dev/zero | tr '\0' a)
printf '\033[2m$ curl -H "X-Junk: <40,000 bytes>" %s/health\033[0m\n' "$URL"
curl -s -o /dev/null -w 'GET /health with a 40 KB header -> %{http_code}\n' \
  -H "X-Junk: $junk" "$URL/health"
