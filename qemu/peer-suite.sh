#!/bin/sh
# Runs one suite written by others, for guest-run.sh.
#
# usage: peer-suite.sh LOG DIR COMMAND
# Runs COMMAND (split on blanks) in DIR with its output in LOG, streams
# LOG to stdout while it runs, and exits with COMMAND's status.
#
# The suite writes to a file, not to a pipe: a test that a timeout left
# behind (or one stuck in the kernel) keeps its output open, and a pipe's
# reader would wait for that end forever. The suite runs in the
# foreground: a background job of a non-interactive shell ignores SIGINT,
# the signal runtests.sh's timeout sends first.
set -u
log=$1
dir=$2
command=$3

: > "$log"
tail -n +1 -f "$log" &
follower=$!
(cd "$dir" && $command) > "$log" 2>&1
rc=$?
sleep 1 # tail prints what it has not printed yet
kill "$follower"
wait "$follower" 2>/dev/null
exit "$rc"
