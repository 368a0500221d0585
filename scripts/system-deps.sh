#!/usr/bin/env bash
# Installs the system programs the tests, demo and benchmarks use. Each entry is
# "command:debian-package". As root (CI, the dev machines here) missing ones are installed
# with apt-get; otherwise we print what is missing: the tests that need it skip with a reason
# locally and fail under CI=true.
set -uo pipefail
needs=(
  "sshd:openssh-server"
  "ssh:openssh-client"
  "rsync:rsync"
  "etcd:etcd-server"
  "dnsmasq:dnsmasq-base"
  "curl:curl"
  "pgrep:procps"
  "/usr/bin/time:time"  # GNU time: the benchmarks measure peak RSS per command with it
  "nginx:nginx"  # the ingest benchmark's baseline server (PUT to a file), run privately
)
missing=()
for entry in "${needs[@]}"; do
  cmd=${entry%%:*}; pkg=${entry#*:}
  if ! command -v "$cmd" >/dev/null 2>&1 && [[ ! -x /usr/sbin/$cmd ]]; then
    missing+=("$pkg")
  fi
done
((${#missing[@]})) || exit 0
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  echo "system-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Packages such as nginx start their system service when installed: not here (the
  # benchmarks run their own, privately). Debian's policy-rc.d hook says no, for this install.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || { echo "system-deps: apt-get install ${missing[*]} failed" >&2; exit 1; }
else
  echo "system-deps: missing ${missing[*]} (not root: install them with apt-get; tests needing them will skip)" >&2
fi
exit 0
