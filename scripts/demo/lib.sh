# Sourced by every demo step. Helpers: say (a heading), run (echo then run a command),
# free_port, start_mlos_core NAME MODELS_DIR [args...] (prints the URL; stopped at exit).
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '\033[2m$ %s\033[0m\n' "$*"; "$@"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start_mlos_core() {  # NAME MODELS_DIR [serve args...]: start an instance, print its URL
  local name=$1 models=$2 port; shift 2; port=$(free_port)
  mkdir -p "$models"
  mlos-core serve --host 127.0.0.1 --port "$port" --models-dir "$models" --instance-id "$name" \
    --log-level warning "$@" >"$DEMO_ROOT/$name.log" 2>&1 &
  echo $! >>"$DEMO_PIDS_FILE"
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
  echo "http://127.0.0.1:$port"
}
