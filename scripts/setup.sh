#!/usr/bin/env bash
# Idempotent first step of `make demo` and `make test`: Debian packages, then .venv.
# Quiet when everything is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(runc crun btrfs-progs nftables iproute2 debootstrap python3 python3-venv
              util-linux mount procps psmisc curl postgresql
              nginx-light wrk chromium fonts-dejavu-core openssl tini lxcfs)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Packages must not start their services (nginx would take port 80): hoody runs
    # its own PostgreSQL and nginx instances, in scratch directories, when it needs them.
    had_policy=0
    [[ -e /usr/sbin/policy-rc.d ]] && had_policy=1
    ((had_policy)) || printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    ((had_policy)) || rm -f /usr/sbin/policy-rc.d
fi

# The lock file pins every Python dependency with hashes; reinstall when it changes.
stamp=.venv/.lock-stamp
if [[ ! -x .venv/bin/python ]]; then
    /usr/bin/python3 -m venv .venv
fi
if [[ ! -f $stamp ]] || ! cmp -s requirements.lock "$stamp"; then
    echo "setup: installing Python dependencies from requirements.lock"
    .venv/bin/pip install -q --disable-pip-version-check --require-hashes --no-deps -r requirements.lock
    .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
    cp requirements.lock "$stamp"
fi
