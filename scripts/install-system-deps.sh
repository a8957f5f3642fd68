#!/usr/bin/env bash
# Installs the Debian packages nfqproxy needs. Idempotent: apt runs only when a package is missing.
set -euo pipefail
packages=(iptables conntrack ipset libnetfilter-queue-dev libnfnetlink-dev libmnl-dev iproute2 kmod procps
          iperf3 wrk gcc python3-dev python3-venv nftables strace)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-system-deps: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  echo "install-system-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
fi
# The queue and conntrack modules; built in on some kernels, so failure to load is not an error.
for m in nfnetlink_queue xt_NFQUEUE nf_conntrack; do modprobe -q "$m" 2>/dev/null || true; done
