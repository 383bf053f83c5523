#!/bin/sh
# Run every fuzz target for FUZZ_SECONDS seconds (`make fuzz`), with
# cargo-fuzz (libFuzzer) on the stable toolchain through RUSTC_BOOTSTRAP=1,
# then print executions, speed, coverage and crashes per target.
#
#   FUZZ_SECONDS=600      seconds per target
#   FUZZ_TARGETS="..."    which targets (default: all five)
#   FUZZ_SANITIZER=none   none | address (the code under test is safe Rust;
#                         address halves the speed)
#   FUZZ_RSS_MB=2048      libFuzzer -rss_limit_mb (also the malloc limit)
#   FUZZ_TIMEOUT=10       seconds one input may take before it is a finding
#   FUZZ_FORK=1           keep going after a crash (libFuzzer -fork=1
#                         -ignore_crashes=1): each target runs its full time
#                         and every crash is saved; 0: stop at the first
#
# The committed seeds in fuzz/corpus/<target> are read, never written; new
# inputs go to fuzz/target/corpus/<target>, crash reproducers to
# fuzz/artifacts/<target>/, logs to fuzz/target/logs/<target>.log.
# Reproduce a crash: RUSTC_BOOTSTRAP=1 cargo fuzz run -s none <target> <file>
# Minimise it:       RUSTC_BOOTSTRAP=1 cargo fuzz tmin -s none <target> <file>
# then copy the minimised input into fuzz/corpus/<target>/ so that the stable
# replay (tests/tests/fuzz_corpus.rs) fails until the bug is fixed.

set -u
cd "$(dirname "$0")/.." || exit 1
root=$(pwd)

secs=${FUZZ_SECONDS:-600}
targets=${FUZZ_TARGETS:-"token sudo_argv su_argv config idp_responses"}
san=${FUZZ_SANITIZER:-none}
rss=${FUZZ_RSS_MB:-2048}
timeout=${FUZZ_TIMEOUT:-10}
fork=""
if [ "${FUZZ_FORK:-1}" = 1 ]; then
    fork="-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1"
fi
CARGO=${CARGO:-cargo}
export RUSTC_BOOTSTRAP=1

if ! $CARGO fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz (a few minutes)"
    $CARGO install cargo-fuzz --locked || exit 1
fi

echo "fuzz: building targets (sanitizer: $san)"
$CARGO fuzz build -s "$san" || exit 1

mkdir -p fuzz/target/logs
host=$(rustc -vV | sed -n 's/^host: //p')
bin=fuzz/target/$host/release
summary=""
failed=0
for t in $targets; do
    work=fuzz/target/corpus/$t
    arts=fuzz/artifacts/$t
    log=fuzz/target/logs/$t.log
    mkdir -p "$work" "$arts"
    stamp=fuzz/target/logs/$t.start
    touch "$stamp"
    dict=""
    [ -f "fuzz/dict/$t.dict" ] && dict="-dict=$root/fuzz/dict/$t.dict"
    echo "fuzz: $t for ${secs}s (log: $log)"
    $CARGO fuzz run -s "$san" "$t" "$work" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb="$rss" -timeout="$timeout" \
        -print_final_stats=1 $fork $dict >"$log" 2>&1
    rc=$?
    new=$(find "$arts" -type f -newer "$stamp" | sort)
    crashes=$(echo "$new" | grep -c .)
    # The last status line: "#N NEW cov: C ft: F corp: K/S ..." or, in
    # fork mode, "#N: cov: C ft: F corp: K exec/s: E ...".
    last=$(grep -E '^#[0-9]+' "$log" | grep 'cov:' | tail -n 1)
    cov=$(echo "$last" | sed -n 's/.* cov: \([0-9]*\).*/\1/p')
    ft=$(echo "$last" | sed -n 's/.* ft: \([0-9]*\).*/\1/p')
    corp=$(echo "$last" | sed -n 's/.* corp: \([0-9a-zA-Z\/]*\).*/\1/p')
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    if [ -n "$fork" ]; then
        execs=$(echo "$last" | sed -n 's/^#\([0-9]*\):.*/\1/p')
        # That line's exec/s is the last job's; report the average.
        took=$(echo "$last" | sed -n 's/.* time: \([0-9]*\)s.*/\1/p')
        [ -n "$execs" ] && [ "${took:-0}" -gt 0 ] && rate=$((execs / took))
    fi
    line=$(printf '%-14s execs %-11s exec/s %-7s cov %-6s ft %-7s corpus %-12s crashes %s' \
        "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$crashes")
    if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
        failed=1
        line="$line  FAILED (exit $rc), see $arts"
        # One line per kind of failure (where it panicked, and the message
        # up to its first colon): replay each new artifact.
        for a in $new; do
            "$bin/$t" -artifact_prefix=fuzz/target/logs/replay- "$a" 2>&1 |
                grep -A1 'panicked at' | tail -n 2 | paste -s -d ' ' - |
                sed -e 's/^.*panicked at \([^ ]*\): */\1 /' -e 's/\(.\): .*/\1/' |
                cut -c1-160
        done | sort | uniq -c | sort -rn | head -n 10
    fi
    echo "$line"
    summary="$summary$line
"
done

echo
echo "fuzz summary (${secs}s per target, sanitizer $san):"
printf '%s' "$summary"
exit $failed
