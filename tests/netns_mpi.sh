#!/usr/bin/env bash
# netns_mpi.sh BUILD_DIR RECIPE [MPIRUN]: two "hosts" over a real network. Two network namespaces
# (A, B) joined by two veth pairs: a data link (MPI's TCP BTL; shaped to 1 Gbit/s with tbf on both
# ends) and a control link (mpirun <-> orted, OpenMPI's OOB), so the data link can be taken down
# while mpirun can still end the job. mpirun runs in A; it starts the orted of "host" B through an
# rsh agent that runs `ip netns exec B ...` (the host names given to --host are the namespace names).
# Checks:
#   1. sharded training across A and B equals the single-process trainer (mpi_train
#      ShardedTraining.MatchesSingleProcess: each rank also runs the single-process Trainer and
#      compares losses and adapters)
#   2. `frugal bench shard` over the shaped link (figures printed; exposed communication > 0)
#   3. the data link taken down mid-step (`ip link set ... down` in B) ends `frugal train` within
#      the collective timeout + 20 s, rank 0 naming rank 1 as not answering the liveness probe.
# Exits 77 (ctest SKIP_RETURN_CODE) where namespaces cannot be made. Namespaces are unique per run
# and removed on any exit.
set -u
BUILD=$1 RECIPE=$2 MPIRUN=${3:-mpirun}
skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*"; exit 1; }
[ "$(id -u)" = 0 ] || skip "not root (network namespaces need CAP_NET_ADMIN)"
command -v ip > /dev/null || skip "no ip (iproute2)"
command -v tc > /dev/null || skip "no tc (iproute2)"
TAG=$$
A=frugal-a$TAG B=frugal-b$TAG  # host names: letters, digits, hyphens (OpenMPI rejects "_")
DA=fda$TAG DB=fdb$TAG CA=fca$TAG CB=fcb$TAG  # veth names (<= 15 characters)
WORK=$(mktemp -d /tmp/frugal_netns.XXXXXX)
cleanup() {
  local pids
  pids=$(pgrep -f "$WORK" || true)
  [ -n "$pids" ] && kill -9 $pids 2> /dev/null
  ip netns pids $A 2> /dev/null | xargs -r kill -9 2> /dev/null
  ip netns pids $B 2> /dev/null | xargs -r kill -9 2> /dev/null
  ip netns del $A 2> /dev/null
  ip netns del $B 2> /dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
ip netns add $A 2> /dev/null || skip "cannot create a network namespace (ip netns add failed)"
ip netns add $B || skip "cannot create a second network namespace"
ip link add $DA type veth peer name $DB || skip "cannot create a veth pair"
ip link add $CA type veth peer name $CB || fail "cannot create the control veth pair"
ip link set $DA netns $A && ip link set $CA netns $A && ip link set $DB netns $B && ip link set $CB netns $B ||
  fail "cannot move the veths into the namespaces"
ip -n $A addr add 10.77.0.1/24 dev $DA && ip -n $B addr add 10.77.0.2/24 dev $DB || fail "data addresses"
ip -n $A addr add 10.78.0.1/24 dev $CA && ip -n $B addr add 10.78.0.2/24 dev $CB || fail "control addresses"
for ns in $A $B; do ip -n $ns link set lo up; done
ip -n $A link set $DA up && ip -n $B link set $DB up && ip -n $A link set $CA up && ip -n $B link set $CB up ||
  fail "links up"
shape() {  # shape RATE: tbf on both ends of the data link
  ip netns exec $A tc qdisc replace dev $DA root tbf rate "$1" burst 512kb latency 50ms &&
    ip netns exec $B tc qdisc replace dev $DB root tbf rate "$1" burst 512kb latency 50ms
}
shape 1gbit || skip "tc tbf not available"

# Each "host" also gets its own UTS namespace whose host name is the namespace name: OpenMPI keys its
# session directory (/tmp/ompi.HOST.UID/jf.N) on the host name, and two daemons of one job sharing
# it collide ("mkdir ... File exists", orte_session_dir failed); it also lets mpirun see A as local.
command -v unshare > /dev/null || skip "no unshare (util-linux)"
unshare --uts true 2> /dev/null || skip "cannot create a UTS namespace"
cat > "$WORK/agent.sh" << AGENT
#!/bin/sh
# rsh agent: the "host" is a namespace name; run the rest in it (as ssh would, through a shell).
ns=\$1; shift
exec ip netns exec "\$ns" unshare --uts /bin/sh -c "hostname \$ns && \$*"
AGENT
chmod +x "$WORK/agent.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
unset OMPI_MCA_btl  # the ctest environment selects shared memory; here it must be TCP
mpirun2() {  # rank 0 in A, rank 1 in B
  ip netns exec $A unshare --uts /bin/sh -c 'hostname "$0" && exec "$@"' $A "$MPIRUN" --bind-to none --oversubscribe -np 2 --host $A,$B \
    --mca plm_rsh_agent "$WORK/agent.sh" --mca pml ob1 --mca btl tcp,self \
    --mca btl_tcp_if_include 10.77.0.0/24 --mca oob_tcp_if_include 10.78.0.0/24 "$@"
}

echo "== 1. sharded training across the namespaces equals one process (1 Gbit/s link)"
mpirun2 "$BUILD/mpi_train" --gtest_filter=ShardedTraining.MatchesSingleProcess --gtest_color=no > "$WORK/train.log" 2>&1
RC=$?
cat "$WORK/train.log" | grep -E '^\[ *(OK|FAILED|PASSED|RUN) *\]|Failure|error' | head -20
[ $RC = 0 ] && grep -q '\[  PASSED  \] 1 test' "$WORK/train.log" || { head -40 "$WORK/train.log"; fail "mpi_train across the namespaces"; }

bench() {  # bench LABEL
  echo "== 2. frugal bench shard, $1"
  mpirun2 "$BUILD/frugal" bench shard --preset tiny --seq-len 128 --micro-batch 4 --steps 3 --dir "$WORK/bench" \
    > "$WORK/bench.log" 2>&1 || { cat "$WORK/bench.log"; fail "bench shard ($1)"; }
  grep -E '^(frugal bench shard|per step|all-gathered|reduce-scattered|step seconds|exposed)' "$WORK/bench.log"
}
bench "data link shaped to 1 Gbit/s"
EXPOSED=$(grep 'exposed comm s (max over ranks)' "$WORK/bench.log" | awk '{print $(NF-1)}')
awk -v e="$EXPOSED" 'BEGIN { exit !(e > 0) }' || fail "no exposed communication reported ($EXPOSED)"
if [ "${FRUGAL_NETNS_UNSHAPED:-1}" = 1 ]; then
  ip netns exec $A tc qdisc del dev $DA root && ip netns exec $B tc qdisc del dev $DB root
  bench "data link unshaped (veth)"
  shape 1gbit || fail "re-shaping"
fi

echo "== 3. data link down mid-step"
export FRUGAL_COMM_TIMEOUT=6
mpirun2 -x FRUGAL_COMM_TIMEOUT "$BUILD/frugal" train "$RECIPE" --set model.path="$WORK/model" \
  --set train.output_dir="$WORK/down" --set train.steps=40 --set data.seq_len=128 --set train.micro_batch=8 \
  --set train.grad_accum=8 --set checkpoint.every=0 > "$WORK/down.log" 2>&1 &
JOB=$!
for _ in $(seq 1 2400); do
  [ -f "$WORK/down/metrics.jsonl" ] && [ "$(wc -l < "$WORK/down/metrics.jsonl")" -ge 2 ] && break
  kill -0 $JOB 2> /dev/null || { cat "$WORK/down.log"; fail "the run ended before step 2"; }
  sleep 0.05
done
T0=$(date +%s.%N)
ip -n $B link set $DB down || fail "cannot take the data link down"
BOUND_S=$((FRUGAL_COMM_TIMEOUT + 20))
ENDED=0
for _ in $(seq 1 $((BOUND_S * 20))); do
  kill -0 $JOB 2> /dev/null || { ENDED=1; break; }
  sleep 0.05
done
ELAPSED=$(echo "$(date +%s.%N) - $T0" | bc)
grep -E 'frugal: rank|^step ' "$WORK/down.log"
[ $ENDED = 1 ] || fail "the job still runs ${BOUND_S} s after the link went down"
echo "job ended ${ELAPSED} s after the link went down"
grep -Eq 'frugal: rank 0/2: .*rank 1 did not answer a liveness probe' "$WORK/down.log" ||
  { cat "$WORK/down.log"; fail "rank 0 did not name rank 1 as unreachable"; }
echo "PASS: two namespaces: training equal, bench shard exposed ${EXPOSED} s at 1 Gbit/s, link down ended the job in ${ELAPSED} s"
