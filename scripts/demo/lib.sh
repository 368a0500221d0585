# Sourced by every demo step. Helpers: say (a heading), run (echo then run a command),
# free_port, start_mlos_core NAME MODELS_DIR [args...] (prints the URL; stopped at exit).
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '\033[2m$ %s\033[0m\n' "$*"; "$@"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
