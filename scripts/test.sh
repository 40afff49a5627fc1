#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Copyright 2026 The d2c Authors

# Runs the whole d2c test suite, including the tests against real peers
# (openssl, curl, mosquitto, softhsm2, swtpm, PostgreSQL, zstd; zsh and fish check the
# completion scripts). Run as root on a Debian machine and it installs
# the peers it lacks with apt-get first; as another user, install them
# yourself (see README.md). A missing peer fails its tests: none is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(openssl curl mosquitto ca-certificates softhsm2 swtpm zstd zsh fish postgresql)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    echo "test.sh: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "test.sh: missing Debian packages: ${missing[*]} (sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi

# mosquitto's package starts a system broker on port 1883; the tests start
# their own brokers on free ports and do not need it.
go test -race -count=1 -timeout 20m "$@" ./...
