#!/bin/sh
# Check every unit file here with systemd-analyze verify, which needs each
# ExecStart= binary to exist: verify copies that point at a built baton.
#   cargo build -p baton && systemd/verify.sh [path/to/baton]
# Any output is a warning; the script fails on one.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
baton=${1:-${CARGO_TARGET_DIR:-$here/../target}/debug/baton}
baton=$(realpath "$baton")
[ -x "$baton" ] || { echo "no baton binary at $baton (cargo build -p baton)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for unit in "$here"/*.service "$here"/*.socket; do
    sed -e "s|/usr/local/bin/baton|$baton|g" -e "s|/usr/local/bin/myapp|/bin/true|g" \
        "$unit" >"$work/$(basename "$unit")"
done
cd "$work"
status=0
for units in baton.service "baton-socket.socket baton-socket.service" baton@example.service; do
    # shellcheck disable=SC2086 # one argument per unit
    out=$(systemd-analyze verify $units 2>&1) || status=1
    if [ -n "$out" ]; then
        printf '%s:\n%s\n' "$units" "$out" >&2
        status=1
    else
        echo "ok: $units"
    fi
done
exit $status
