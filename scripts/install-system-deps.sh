#!/usr/bin/env bash
# System packages the test suite needs; run as root by scripts/test.sh.
# Idempotent and quick when everything is there: the package index is
# updated once, and only when something is missing.
set -euo pipefail

# One "command package" pair a line: the command tells whether the package
# is there.
NEEDED=(
    "ip iproute2"   # network-namespace hosts (tests/multihost)
    "nft nftables"  # packet loss on those hosts (this kernel has no netem)
)

missing=()
for pair in "${NEEDED[@]}"; do
    read -r cmd pkg <<<"$pair"
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done

if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
