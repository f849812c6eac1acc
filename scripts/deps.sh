#!/usr/bin/env bash
# The Debian packages Octet builds and tests with. Run it to install the missing ones
# (apt-get; as root, or through sudo); source it for OCTET_DEPS and octet_install_deps.
OCTET_DEPS=(build-essential cmake pkg-config libsentencepiece-dev doctest-dev nlohmann-json3-dev
            libpcre2-dev libutf8proc-dev libcurl4-openssl-dev libxxhash-dev)

octet_install_deps() {
  local missing=() pkg arch
  arch=$(dpkg --print-architecture)
  for pkg in "${OCTET_DEPS[@]}"; do  # installed for this machine's architecture (or "all")
    dpkg-query -W -f='${Status} ${Architecture}\n' "$pkg" 2>/dev/null |
      grep -Eq "ok installed ($arch|all)\$" || missing+=("$pkg:$arch")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "Installing: ${missing[*]}"
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "error: need root or sudo to install ${missing[*]}" >&2; return 1; }
    sudo=(sudo)
  fi
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  octet_install_deps
fi
