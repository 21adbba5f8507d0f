#!/usr/bin/env bash
# Install what tlsproxy, its demo, its tests and its benchmark need on a Debian machine, then create .venv.
# Idempotent: skips what is already there. Run as root (or with sudo available) for apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || need_apt+=(mariadb-server)
command -v mariadb >/dev/null 2>&1 || need_apt+=(mariadb-client)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v sysbench >/dev/null 2>&1 || need_apt+=(sysbench)  # the benchmark's load generator (bench/)
command -v socat >/dev/null 2>&1 || need_apt+=(socat)  # the benchmark's plain TCP relay scenario
command -v tcpdump >/dev/null 2>&1 || need_apt+=(tcpdump)  # the security tests' capture on loopback (as root)
command -v strace >/dev/null 2>&1 || need_apt+=(strace)  # bench/profile.py and bench/head_to_head.py count system calls
python3 -c "import venv, ensurepip" >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: apt-get install ${need_apt[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  # Debian's maintainer scripts would start a system mariadbd; tlsproxy starts its own servers.
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
echo "setup: ready (.venv)"
