#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests need, then `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

need_install=()
# redis-server: the shared-state tests (rate limits, ownership cache) run against a real one.
command -v redis-server >/dev/null 2>&1 || need_install+=(redis-server)
# openssl: the TLS tests check with `openssl s_client` that old protocols and CBC suites are refused.
command -v openssl >/dev/null 2>&1 || need_install+=(openssl)

if ((${#need_install[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing: ${need_install[*]}"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_install[@]}" >/dev/null 2>&1; then
      apt-get update -q >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_install[@]}" >/dev/null
    fi
  else
    echo "missing: ${need_install[*]} — install them (e.g. 'sudo apt-get install ${need_install[*]}') and re-run" >&2
    exit 1
  fi
fi

cargo test --all-targets "$@"
