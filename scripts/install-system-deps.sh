#!/usr/bin/env bash
# System packages some tests need, installed as root by scripts/test.sh.
# Idempotent and quick when everything is there: `apt-get update` runs only
# when a package is missing. Each block below belongs to one set of tests;
# add a new block rather than editing another.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

if [ "$(id -u)" != 0 ]; then
    echo "install-system-deps: not root, nothing installed" >&2
    exit 0
fi

APT_UPDATED=0
need_packages() {
    # Installs the named Debian packages that are not installed yet.
    local missing=()
    local pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$pkg")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi
    if [ "$APT_UPDATED" = 0 ]; then
        apt-get update -qq
        APT_UPDATED=1
    fi
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# --- deploy: a real single-node Slurm (tests/deploy/test_slurm.py);
# systemd-analyze and shellcheck for deploy/ (tests/deploy/test_manifests.py).
need_packages slurmctld slurmd slurm-client munge systemd shellcheck
# The Debian packages enable and may start their own daemons; the tests run
# private ones from a temporary configuration, so the packaged ones stay off.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now slurmctld slurmd munge >/dev/null 2>&1 || true
fi
# --- end deploy

# --- faults: network-namespace hosts (tests/multihost): `ip` for namespaces,
# bridges and veth pairs; `nft` for packet loss (this kernel has no netem).
need_packages iproute2 nftables
# --- end faults

# --- dashboard: a real headless browser over the dashboard page
# (tests/integration/test_dashboard_browser.py, through selenium).
need_packages chromium chromium-driver
# --- end dashboard
