#!/usr/bin/env bash
# Installs those of the Debian packages named that are missing, as root; otherwise prints the
# commands to run and fails. A name qualified with an architecture (libtbb-dev:arm64) is a multiarch
# package: its architecture is added to dpkg's first.
# usage: tools/install_missing.sh PACKAGE...
set -euo pipefail

missing=()
declare -A add_architectures=()
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" && continue
  missing+=("$p")
  if [[ $p == *:* ]] && ! dpkg --print-foreign-architectures | grep -qx "${p##*:}"; then
    add_architectures[${p##*:}]=1
  fi
done
((${#missing[@]})) || exit 0

commands=""
for a in "${!add_architectures[@]}"; do commands+="dpkg --add-architecture $a && "; done
commands+="apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" != 0 ]; then
  echo "embag: missing Debian packages; as root run: $commands" >&2
  exit 1
fi
echo "embag: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
for a in "${!add_architectures[@]}"; do dpkg --add-architecture "$a"; done
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
