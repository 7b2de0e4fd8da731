#!/bin/bash
# What baton weighs (docs/benchmarks.md, "What baton weighs"): baton's
# resident set with one worker under it, 5 s after the first worker is
# ready and again 3 s after 10 more reloads. Prints VmRSS, RssAnon and
# RssFile (/proc/PID/status), Pss (/proc/PID/smaps_rollup) in kB, and the
# threads; with SMAPS=FILE, copies /proc/PID/smaps at the end to FILE.
#   cargo build --profile dist -p baton && cargo build --release -p test-worker
#   benches/rss.sh target/dist/baton target/release/test-worker [LABEL]
set -eu
baton=$1 worker=$2 label=${3:-baton}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$baton" run --listen http=127.0.0.1:0 --ready notify --control none -- "$worker" 2>"$dir/log" &
pid=$!
wait_for() { # wait for a log line, 30 s at most
    for _ in $(seq 300); do
        grep -q "$1" "$dir/log" && return 0
        sleep 0.1
    done
    echo "no '$1' in 30 s:" >&2
    cat "$dir/log" >&2
    kill "$pid"
    exit 1
}
read_rss() {
    awk '/^(VmRSS|RssAnon|RssFile|Threads):/ { printf "%s %s  ", $1, $2 }' "/proc/$pid/status"
    awk '/^Pss:/ { printf "Pss: %s", $2 }' "/proc/$pid/smaps_rollup"
    echo
}
wait_for "ready generation=1"
sleep 5
echo "$label idle:       $(read_rss)"
for n in $(seq 2 11); do
    kill -HUP "$pid"
    wait_for "ready generation=$n"
done
sleep 3
echo "$label 10 reloads: $(read_rss)"
[ -z "${SMAPS:-}" ] || cp "/proc/$pid/smaps" "$SMAPS"
kill -TERM "$pid"
wait "$pid" || true
