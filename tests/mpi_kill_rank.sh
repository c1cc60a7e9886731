#!/usr/bin/env bash
# mpi_kill_rank.sh FRUGAL RECIPE NP MODE [MPIRUN]: `kill -9` of one rank mid-step under
# `mpirun -np NP frugal train` ends the whole job in bounded time with a message naming the lost
# rank, leaves no frugal process behind, and `--resume auto` then finishes the run exactly as an
# uninterrupted one (the same per-step loss and grad norm, bit for bit: same-W resume is exact).
#   MODE mpirun    plain mpirun: OpenMPI notices the death and kills the others ("mpirun noticed
#                  that process rank 1 ... exited on signal 9").
#   MODE recovery  mpirun --enable-recovery: mpirun lets the survivors run on, so only frugal's own
#                  collective timeout (FRUGAL_COMM_TIMEOUT) can end them; their liveness probe must
#                  name rank 1 ("rank 1 did not answer a liveness probe").
# Truth: an uninterrupted run of the same recipe at the same NP (metrics.jsonl, step by step).
# The rank is killed right after step 3 is logged (checkpoints every 2 steps, each step ~0.3 s),
# so it dies computing step 4 and the run resumes from step 2.
set -u
FRUGAL=$1 RECIPE=$2 NP=$3 MODE=$4 MPIRUN=${5:-mpirun}
TIMEOUT_S=${FRUGAL_COMM_TIMEOUT:-6}
export FRUGAL_COMM_TIMEOUT=$TIMEOUT_S
BOUND_S=$((TIMEOUT_S + 20))  # timeout, then the abort reaching every rank (generous on 2 cores)
WORK=$(mktemp -d /tmp/frugal_kill_rank.XXXXXX)
fail() { echo "FAIL: $*"; exit 1; }
cleanup() {
  # Anything of this run still alive (matched by the unique work dir on its command line).
  local pids
  pids=$(pgrep -f "$WORK" || true)
  [ -n "$pids" ] && kill -9 $pids 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

case $MODE in
  mpirun) LAUNCH=("$MPIRUN" --bind-to none --oversubscribe -np "$NP") ;;
  recovery) LAUNCH=("$MPIRUN" --enable-recovery --bind-to none --oversubscribe -np "$NP") ;;
  *) fail "unknown MODE '$MODE' (mpirun | recovery)" ;;
esac
train() {  # train OUTPUT_DIR [args...]
  local out=$1; shift
  "${LAUNCH[@]}" "$FRUGAL" train "$RECIPE" --set model.path="$WORK/model" --set train.output_dir="$out" \
    --set train.steps=8 --set data.seq_len=128 --set train.micro_batch=8 --set train.grad_accum=8 \
    --set checkpoint.every=2 --set checkpoint.keep=0 "$@"
}
# step loss grad_norm of every logged step
steps_of() { sed -E 's/^\{"step":([0-9]+),"loss":([^,]+),"lr":[^,]+,"grad_norm":([^,]+),.*/\1 \2 \3/' "$1"; }

echo "== reference: uninterrupted run, np $NP"
train "$WORK/ref" -q > "$WORK/ref.log" 2>&1 || { cat "$WORK/ref.log"; fail "reference run failed"; }

echo "== run to be killed"
train "$WORK/kill" > "$WORK/kill.log" 2>&1 &
JOB=$!
for _ in $(seq 1 2400); do  # up to 120 s for step 3
  [ -f "$WORK/kill/metrics.jsonl" ] && [ "$(wc -l < "$WORK/kill/metrics.jsonl")" -ge 3 ] && break
  kill -0 $JOB 2>/dev/null || { cat "$WORK/kill.log"; fail "the run ended before step 3"; }
  sleep 0.05
done
VICTIM=""
for pid in $(pgrep -f "$WORK/kill"); do
  if tr '\0' '\n' < /proc/$pid/environ 2>/dev/null | grep -qx 'OMPI_COMM_WORLD_RANK=1'; then VICTIM=$pid; fi
done
[ -n "$VICTIM" ] || fail "no rank-1 process found"
T0=$(date +%s.%N)
kill -9 "$VICTIM"
echo "killed rank 1 (pid $VICTIM) after step $(wc -l < "$WORK/kill/metrics.jsonl")"
ENDED=0
for _ in $(seq 1 $((BOUND_S * 20))); do
  kill -0 $JOB 2>/dev/null || { ENDED=1; break; }
  sleep 0.05
done
ELAPSED=$(echo "$(date +%s.%N) - $T0" | bc)
cat "$WORK/kill.log"
[ $ENDED = 1 ] || fail "the job still runs ${BOUND_S} s after the kill (a rank hangs)"
wait $JOB
RC=$?
echo "job ended ${ELAPSED} s after the kill, mpirun exit status $RC"
[ "$MODE" = mpirun ] && [ $RC = 0 ] && fail "mpirun exited 0 after a rank was killed"
grep -q 'frugal train: [0-9]* steps in' "$WORK/kill.log" && fail "the killed run claims to have finished"
if [ "$MODE" = mpirun ]; then
  grep -Eq 'process rank 1 .*signal 9|rank 1 did not answer a liveness probe' "$WORK/kill.log" ||
    fail "the output does not name rank 1"
else
  grep -Eq 'frugal: rank [0-9]+/'"$NP"': .*rank 1 did not answer a liveness probe' "$WORK/kill.log" ||
    fail "no survivor named rank 1 as not answering"
  grep -Eq 'frugal: rank [0-9]+/'"$NP"': .*rank [02-9] did not answer' "$WORK/kill.log" &&
    fail "a live rank was named as not answering"
fi
sleep 1  # mpirun has returned; give the kernel a moment to reap
LEFT=$(pgrep -f "$WORK/kill" || true)
[ -z "$LEFT" ] || { ps -o pid,stat,args -p $LEFT; fail "frugal processes remain: $LEFT"; }

LATEST=$(cat "$WORK/kill/checkpoints/latest")
LAST=$(echo "$LATEST" | sed -E 's/^step-([0-9]+)\.h5$/\1/')
echo "== resume (latest checkpoint $LATEST)"
train "$WORK/kill" --resume auto > "$WORK/resume.log" 2>&1 || { cat "$WORK/resume.log"; fail "resume failed"; }
grep -E 'resumed from|steps in' "$WORK/resume.log"
grep -q "resumed from .*$LATEST at step $LAST\$" "$WORK/resume.log" || fail "did not resume from $LATEST"
[ "$LAST" -ge 2 ] && [ "$LAST" -lt 8 ] || fail "resumed at step $LAST, expected a checkpoint before the kill"
steps_of "$WORK/ref/metrics.jsonl" > "$WORK/ref.steps"
steps_of "$WORK/kill/metrics.jsonl" > "$WORK/kill.steps"
[ "$(wc -l < "$WORK/ref.steps")" = 8 ] || fail "reference logged $(wc -l < "$WORK/ref.steps") steps, not 8"
diff "$WORK/ref.steps" "$WORK/kill.steps" || fail "killed + resumed run differs from the uninterrupted run"
echo "PASS: rank 1 killed, job ended in ${ELAPSED} s (bound ${BOUND_S} s), resumed at step $LAST, final: $(tail -1 "$WORK/kill.steps")"
