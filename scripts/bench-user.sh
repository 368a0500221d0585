#!/usr/bin/env bash
# The SSH benchmark logs in as an unprivileged account with a plain /bin/sh, as a publish
# account on a server would: on a dev machine root's shell start-up files may run version
# managers (pyenv init: ~0.2 s) on every ssh login, which is not what is being measured.
# Creates the system account `axon-bench` (no password, key login only through the
# benchmark's own sshd) when run as root; otherwise the benchmark logs in as you and says so
# (also when a directory above the clone is closed to others, as /root is).
# Remove it with: userdel -r axon-bench
set -uo pipefail
user=axon-bench
id "$user" >/dev/null 2>&1 && exit 0
if [[ $(id -u) -ne 0 ]] || ! command -v useradd >/dev/null; then
  echo "bench-user: not root: the SSH benchmark will log in as $(id -un)" >&2
  exit 0
fi
useradd --system --shell /bin/sh --home-dir "/var/lib/$user" --create-home "$user" \
  && usermod -p '*' "$user" \
  || { echo "bench-user: could not create $user; the SSH benchmark will log in as root" >&2; exit 0; }
echo "bench-user: created the unprivileged account $user for the SSH benchmark"
