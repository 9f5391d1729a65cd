#!/bin/sh
# run_benchmarks.sh - every run behind the tables in docs/benchmarks.md.
#
#   bench/run_benchmarks.sh [BUILD_DIR] [OUT_DIR] [SECTIONS]
#
# BUILD_DIR is a release build (default build-bench: meson setup build-bench
# --buildtype=release); each run's full output goes to OUT_DIR (default
# /var/tmp/allot-bench-results) as one .txt file, whose last lines are the
# "median [min-max]" summary the docs quote. SECTIONS (default all: "writes
# nodelay snapshot fsm side") picks the parts below; about 40 minutes in
# all. Each run starts and stops its own clusters on 127.0.0.1 and exits non-zero if
# any write failed; this script stops at the first failure.
set -eu

build=${1:-build-bench}
out=${2:-/var/tmp/allot-bench-results}
sections=${3:-writes nodelay snapshot fsm side}
bw="$build/bench/bench_writes"
bs="$build/bench/bench_snapshot"
mkdir -p "$out"

# "median [min-max]" of the numbers given.
med() {
    n=$#
    first=$1
    eval "mid=\${$(((n + 1) / 2))}"
    eval "last=\${$n}"
    echo "$mid [$first-$last]"
}

# Per level: ops/s (column 2) and p99 (column 5) over the per-run rows of
# the files given.
summarize() {
    rows=$(cat "$@" | awk '$1 ~ /^[0-9]+$/ && $3 ~ /^[0-9.]+$/ { print $1, $2, $5 }')
    for lvl in $(echo "$rows" | cut -d' ' -f1 | sort -nu); do
        ops=$(echo "$rows" | awk -v l="$lvl" '$1 == l { print $2 }' | sort -n)
        p99=$(echo "$rows" | awk -v l="$lvl" '$1 == l { print $3 }' | sort -n)
        # shellcheck disable=SC2086
        echo "inflight $lvl: ops/s $(med $ops)  p99_ms $(med $p99)"
    done
}

run() {
    name=$1
    shift
    echo "== $name: $*"
    "$@" >"$out/$name.txt" 2>&1 || {
        echo "failed: see $out/$name.txt" >&2
        exit 1
    }
    tail -n 5 "$out/$name.txt"
}

{
    echo "nproc: $(nproc)"
    grep -m1 'model name' /proc/cpuinfo
    uname -srm
    df -hT /var/tmp | tail -n 1
    uptime
} >"$out/machine.txt"

# 1. Writes/s at 1, 16, 64 in flight, all connections on the leader, then
#    spread over the three nodes (followers forward).
want() {
    case " $sections " in *" $1 "*) return 0 ;; esac
    return 1
}

if want writes; then
    run writes-leader "$bw" --repeat 3
    run writes-all "$bw" --repeat 3 --target all
fi

# 2. The same with TCP_NODELAY forced on allotd's sockets (diagnostic: what
#    setting it on raft's transport would give).
if want nodelay; then
    run writes-leader-nodelay "$bw" --repeat 3 --raft-nodelay
fi

# 3. Snapshot threshold at 64 in flight, 30 s windows so that even 16384
#    takes a snapshot or two. allotd refuses trailing > threshold, so 1024
#    runs with trailing 1024 (canonical/raft's own default is 1024/2048).
if want snapshot; then
    for t in 1024 4096 8192 16384; do
        trail=2048
        if [ "$t" -lt 2048 ]; then trail=$t; fi
        args="--snapshot-threshold $t --snapshot-trailing $trail"
        run "snapshot-$t" "$bw" --inflight 64 --seconds 30 --repeat 3 \
            --verbose --allotd-args "$args"
        run "snapshot-$t-nodelay" "$bw" --inflight 64 --seconds 30 --repeat 3 \
            --verbose --raft-nodelay --allotd-args "$args"
    done
fi

# 4. Time of one snapshot / restore of the state machine itself.
if want fsm; then
    run fsm-snapshot "$bs" --quotas 1000,10000,100000 --repeat 7
fi

# 5. Side by side with etcd 3.4 (Debian's etcd-server; skipped when it is
#    not installed). The runs alternate allot / etcd / allot with nodelay so
#    that both systems see the same background load on a shared machine.
if want side && [ -x /usr/bin/etcd ]; then
    be="$build/bench/bench_etcd"
    for i in 1 2 3; do
        run "side-allot-$i" "$bw"
        run "side-etcd-$i" "$be"
        run "side-allot-nodelay-$i" "$bw" --raft-nodelay
    done
    for sys in allot etcd allot-nodelay; do
        echo "== side by side, $sys: median [min-max] of 3 runs"
        summarize "$out"/side-"$sys"-[123].txt
    done | tee "$out/side-summary.txt"
fi
