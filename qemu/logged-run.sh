#!/bin/sh
# Runs one test binary or suite for guest-run.sh, its output in a file.
#
# usage: logged-run.sh LOG DIR COMMAND [ARG...]
# Runs COMMAND with its ARGs in DIR with its output in LOG, streams LOG to
# stdout while it runs, and exits with COMMAND's status. The host reads
# LOG, not the console, where kernel messages can land in the middle of a
# line.
#
# The command writes to a file, not to a pipe: a test that a timeout left
# behind (or one stuck in the kernel) keeps its output open, and a pipe's
# reader would wait for that end forever. The command runs in the
# foreground: a background job of a non-interactive shell ignores SIGINT,
# the signal runtests.sh's timeout sends first.
set -u
log=$1
dir=$2
shift 2

: > "$log"
tail -s 0.2 -n +1 -f "$log" &
follower=$!
(cd "$dir" && "$@") > "$log" 2>&1
rc=$?
sleep 0.5 # tail prints what it has not printed yet
kill "$follower"
wait "$follower" 2>/dev/null
exit "$rc"
