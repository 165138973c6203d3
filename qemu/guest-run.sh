#!/bin/sh
# Runs inside the virtme-ng guest, started by `cargo xtask vm-test`.
#
# usage: guest-run.sh OUTDIR [TEST-ARGS...]
#   OUTDIR/env    KEY=value lines exported to the tests
#   OUTDIR/tests  test binaries (host paths; the guest shares the host's root)
#   OUTDIR/peers  suites written by others: name, directory, judge, command
# Writes OUTDIR/results/BINARY.log (each test binary's output), for each
# suite OUTDIR/peer-NAME.log and OUTDIR/peer-NAME.status (its exit status),
# OUTDIR/dmesg.txt, OUTDIR/kmemleak.txt, OUTDIR/gcov/*.gcda, and last
# OUTDIR/status (the host treats a missing status file as a crashed or hung
# guest).
set -u
out=$1
shift

echo "sendzc-guest: started on Linux $(uname -r), $(nproc) CPUs," \
	"$(sed -n 's/^MemTotal: *//p' /proc/meminfo)"
mount -t debugfs none /sys/kernel/debug 2>/dev/null
ulimit -l unlimited
# 2 MiB huge pages for the tests' hugetlb-backed registered buffers.
echo 16 > /proc/sys/vm/nr_hugepages

while IFS= read -r kv; do
	[ -n "$kv" ] && export "$kv"
done < "$out/env"

# Kernel problems logged before this line are boot problems (see xtask).
echo "sendzc-guest: tests start" > /dev/kmsg
status=0
run=$(dirname "$0")/logged-run.sh
mkdir -p "$out/results"
while IFS= read -r bin; do
	[ -n "$bin" ] || continue
	name=$(basename "$bin")
	echo "sendzc-guest: running $name"
	"$run" "$out/results/$name.log" . "$bin" --color never "$@" \
		< /dev/null || status=1
done < "$out/tests"

# Suites written by others: name, directory, judge and command (split on
# blanks, not globbed), separated by tabs. judge "exit": the exit status is
# the verdict; "host": the host judges the log (liburing's runtests.sh
# fails on the base kernel too; xtask compares).
tab=$(printf '\t')
while IFS="$tab" read -r name dir judge command; do
	[ -n "$name" ] || continue
	echo "sendzc-guest: running peer suite $name"
	set -f
	# shellcheck disable=SC2086 # the command's words are its arguments
	"$run" "$out/peer-$name.log" "$dir" $command < /dev/null
	rc=$?
	set +f
	echo "$rc" > "$out/peer-$name.status"
	if [ "$rc" = 0 ]; then
		echo "peer-result: $name ok"
	else
		echo "peer-result: $name FAILED (exit $rc)"
		[ "$judge" = host ] || status=1
	fi
done < "$out/peers"

# gcov counts of the io_uring files the series changes (the debug kernel
# profiles only those); the host maps them onto the patches' added lines.
gcov=/sys/kernel/debug/gcov
if [ -d "$gcov" ]; then
	mkdir -p "$out/gcov"
	find "$gcov" -path '*/io_uring/*.gcda' | while IFS= read -r data; do
		cat "$data" > "$out/gcov/$(basename "$data")"
	done
fi

# kmemleak reports objects unreferenced for at least 5 s on two scans.
leaks=/sys/kernel/debug/kmemleak
if [ -w "$leaks" ]; then
	echo scan > "$leaks"
	sleep 6
	echo scan > "$leaks"
	cat "$leaks" > "$out/kmemleak.txt"
else
	echo "kmemleak not available" > "$out/kmemleak.txt"
fi
dmesg > "$out/dmesg.txt"
echo "$status" > "$out/status"
echo "sendzc-guest: finished, status $status"
