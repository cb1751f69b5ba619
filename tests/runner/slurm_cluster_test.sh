#!/usr/bin/env bash
# `upcycle run --executor slurm` on a real one-node SLURM cluster that this script starts and
# stops: munged with a key made here, slurmctld and slurmd in the foreground in the background
# (-D), every file (slurm.conf via SLURM_CONF, state, logs, the munge socket) in a temporary
# folder, free ports. A tiny sweep goes through real sbatch; one queued continuation is
# cancelled with scancel; `upcycle collect` records what finished and fails the cancelled one
# with SLURM's state; a second `run --executor slurm` resubmits only it; all five trials end
# done, with their evaluations. Then a second sweep (a pretraining and its upcycled
# continuation) runs with --ranks-per-trial 2: each trial is an `srun --ntasks=2 --mpi=pmix`
# step (the job script asks for SLURM's PMIx plugin; slurm.conf keeps Debian's MpiDefault=none)
# whose ranks train it together, one OpenMP thread each.
#
#   sudo bash tests/runner/slurm_cluster_test.sh build/upcycle
#
# Needs root and Debian's slurmctld, slurmd, munge and slurm-client (scripts/setup.sh installs
# them). Exits 77 (skipped, for CTest) saying why when it cannot start a cluster here.
set -uo pipefail

skip() {
  echo "SKIPPED: $*"
  exit 77
}
fail() {
  echo "FAILED: $*"
  exit 1
}

bin=${1:-${UPCYCLE_BIN:-}}
[ -n "$bin" ] && [ -x "$bin" ] || {
  echo "usage: $0 path/to/upcycle" >&2
  exit 2
}
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
[ "$(id -u)" = 0 ] || skip "not root (uid $(id -u)): slurmd must run as root to start jobs"
for program in munged munge slurmctld slurmd sbatch squeue sinfo scancel; do
  command -v "$program" > /dev/null ||
    skip "$program is not installed (Debian: munge slurmctld slurmd slurm-client; scripts/setup.sh installs them)"
done

T=$(mktemp -d /tmp/upcycle_slurm_cluster.XXXXXX)
chmod 700 "$T"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2> /dev/null; done
  [ -f "$T/munge/munged.pid" ] && kill "$(cat "$T/munge/munged.pid")" 2> /dev/null
  for pid in "${pids[@]}"; do wait "$pid" 2> /dev/null; done
  rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

show_logs() {
  for f in "$T"/munge/munged.log "$T"/slurmctld.log "$T"/slurmd.log "$T"/*.out \
    "$T"/work/results/slurm/*/*/logs/*.out; do
    [ -f "$f" ] && { echo "--- $f (last lines)"; tail -n 15 "$f"; }
  done
}

# a TCP port nobody listens on
free_port() {
  local port
  for _ in $(seq 100); do
    port=$((20000 + RANDOM % 20000))
    (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null || {
      echo "$port"
      return
    }
  done
  return 1
}

# ---- munge: its own key and socket ------------------------------------------------------------
mkdir -p "$T/munge" "$T/state" "$T/spool" "$T/work"
chmod 700 "$T/munge"
dd if=/dev/urandom of="$T/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$T/munge/munge.key"
munged --force --key-file="$T/munge/munge.key" --socket="$T/munge/munge.socket" \
  --pid-file="$T/munge/munged.pid" --log-file="$T/munge/munged.log" \
  --seed-file="$T/munge/munged.seed" ||
  { show_logs; skip "munged refused to start here"; }
munge -n --socket="$T/munge/munge.socket" | unmunge --socket="$T/munge/munge.socket" > /dev/null ||
  { show_logs; skip "munged does not answer on its socket"; }

# ---- slurm.conf: this host as the one node, with its real CPUs and memory ---------------------
host=$(hostname -s)
node=$(slurmd -C 2> /dev/null | head -n 1)
[[ "$node" == NodeName=* ]] || skip "slurmd -C cannot describe this machine: $node"
ctld_port=$(free_port) && slurmd_port=$(free_port) || skip "no free TCP port"
export SLURM_CONF="$T/slurm.conf"
cat > "$SLURM_CONF" << EOF
ClusterName=upcycletest
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$T/munge/munge.socket
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd.pid
SlurmctldLogFile=$T/slurmctld.log
SlurmdLogFile=$T/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=600
$node State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

slurmctld -D -f "$SLURM_CONF" > "$T/slurmctld.out" 2>&1 &
pids+=($!)
slurmd -D -f "$SLURM_CONF" > "$T/slurmd.out" 2>&1 &
pids+=($!)
up=0
for _ in $(seq 60); do
  if sinfo --noheader --format=%T 2> /dev/null | grep -q idle; then
    up=1
    break
  fi
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2> /dev/null || { show_logs; skip "a SLURM daemon exited at start (logs above)"; }
  done
  sleep 0.5
done
[ $up = 1 ] || { show_logs; skip "the node did not become idle within 30 s (logs above)"; }
echo "cluster up: $host, slurmctld port $ctld_port"

# ---- the sweep --------------------------------------------------------------------------------
cd "$T/work"
cat > tiny.yaml << 'EOF'
name: tiny
model: {vocab_size: 256, context: 16, channels: 32, layers: 2, heads: 2}
data: {source: synthetic, synthetic_bytes: 65536}
train: {batch_size: 8, lr: 0.003, warmup_steps: 5, log_every: 10}
eval: {every: 0, max_windows: 16}
checkpoint: {every: 20}
pretrain: {steps: 60}
continue:
  budgets: [50, 100]
  methods:
    dense: {}
    upcycle: {experts: 4, k: 2}
    scratch: {}
    warmstart: {depth_multiplier: 2}
EOF
db="$T/work/results/u.db"
query() { "$bin" query "$1" --db "${2:-$db}" --format csv | tail -n 1; }
# collects sweep $1 (tiny) of database $2 ($db) until no job holds a trial (at most 3 minutes)
wait_for_jobs() {
  for _ in $(seq 90); do
    out=$("$bin" collect "${1:-tiny}" --db "${2:-$db}") || fail "collect: $out"
    echo "$out" | grep -q "| 0 queued or running" && return 0
    sleep 2
  done
  show_logs
  fail "jobs still queued or running after 3 minutes: $out"
}

"$bin" run tiny.yaml --db "$db" --executor slurm --max-parallel 2 --time 10 ||
  { show_logs; fail "run --executor slurm"; }
# the last continuation waits for the pretraining (Dependency): cancel it
cancelled=$(query "SELECT job_id FROM slurm_jobs ORDER BY id DESC LIMIT 1")
scancel "$cancelled" || fail "scancel $cancelled"
wait_for_jobs
status=$("$bin" status tiny --db "$db")
echo "$status"
# a pending array task that is cancelled leaves no record in SLURM (without accounting)
echo "$status" | grep -q "slurm job $cancelled ended UNKNOWN (no record left in SLURM, last seen" ||
  fail "status does not show the cancelled job $cancelled as failed with what SLURM said"
[ "$(query "SELECT count(*) FROM trials WHERE status = 'done'")" = 4 ] || fail "expected 4 trials done"

# again: only the cancelled trial is submitted
"$bin" run tiny.yaml --db "$db" --executor slurm 2>&1 | tee "$T/rerun.txt" ||
  { show_logs; fail "second run --executor slurm"; }
grep -q "1 trial(s) whose SLURM job ended without a result are submitted again" "$T/rerun.txt" ||
  fail "the second run did not resubmit exactly the cancelled trial"
wait_for_jobs

[ "$(query "SELECT count(*) FROM trials WHERE status = 'done'")" = 5 ] || {
  "$bin" status tiny --db "$db"
  show_logs
  fail "not every trial is done"
}
[ "$(query "SELECT count(*) FROM slurm_jobs")" = 6 ] || fail "expected 6 jobs (5 and 1 resubmitted)"
# pretraining 1, dense 2, upcycle 2, scratch 3 (its 200 %), warmstart 2 budget evaluations
[ "$(query "SELECT count(*) FROM evaluations")" = 10 ] || fail "expected 10 evaluations"
[ "$(query "SELECT count(DISTINCT host) FROM trials WHERE host = '$(hostname)'")" = 1 ] ||
  fail "trials do not name the host they ran on"
"$bin" results tiny --db "$db" || fail "results"
echo "PASSED: a tiny sweep ran through SLURM (jobs: $(query "SELECT group_concat(job_id || ' ' || state, ', ') FROM slurm_jobs"))"

# ---- the same on 2 ranks per trial, through srun ----------------------------------------------
srun --mpi=list 2>&1 | grep -qw pmix ||
  skip "the 1-rank sweep passed; 2 ranks per trial need SLURM's PMIx plugin (mpi/pmix), which srun does not list: $(srun --mpi=list 2>&1 | tr '\n' ' ')"
cat > ranks.yaml << 'EOF'
name: ranks
model: {vocab_size: 256, context: 16, channels: 32, layers: 2, heads: 2}
data: {source: synthetic, synthetic_bytes: 65536}
train: {batch_size: 8, lr: 0.003, warmup_steps: 5, log_every: 10}
eval: {every: 0, max_windows: 16}
checkpoint: {every: 20}
pretrain: {steps: 40}
continue:
  budgets: [100]
  methods:
    upcycle: {experts: 4, k: 2}
EOF
db2="$T/work/results/ranks.db"
# no single-copy shared memory between the ranks (CMA needs ptrace rights a container may lack)
OMPI_MCA_btl_vader_single_copy_mechanism=none \
  "$bin" run ranks.yaml --db "$db2" --executor slurm --ranks-per-trial 2 --time 10 ||
  { show_logs; fail "run --executor slurm --ranks-per-trial 2"; }
grep -q "^exec srun --ntasks=2 " "$T"/work/results/slurm/ranks/*/wave-0.sbatch ||
  fail "the 2-rank job script does not start its trial with srun --ntasks=2"
wait_for_jobs ranks "$db2"
[ "$(query "SELECT count(*) FROM trials WHERE status = 'done'" "$db2")" = 2 ] || {
  "$bin" status ranks --db "$db2"
  show_logs
  fail "not every 2-rank trial is done"
}
# each trial ran once, on 2 ranks of 1 OpenMP thread each (the one CPU SLURM gave each rank)
[ "$(query "SELECT count(*) FROM slurm_jobs WHERE state = 'COMPLETED'" "$db2")" = 2 ] ||
  fail "expected 2 completed jobs: $(query "SELECT group_concat(job_id || ' ' || state) FROM slurm_jobs" "$db2")"
[ "$(query "SELECT count(*) FROM trials WHERE json_extract(provenance, '$.ranks') = 2
            AND json_extract(provenance, '$.backend') LIKE '%, 1 threads,%'" "$db2")" = 2 ] ||
  fail "the trials' provenance does not say 2 ranks of 1 thread: $(query "SELECT group_concat(provenance) FROM trials" "$db2")"
grep -q "on 2 ranks (mpi)" "$T"/work/results/slurm/ranks/*/logs/*.out ||
  fail "no job log says it trained on 2 ranks"
[ "$(query "SELECT count(*) FROM evaluations" "$db2")" = 2 ] || fail "expected 2 evaluations"
"$bin" results ranks --db "$db2" > /dev/null || fail "results ranks"
echo "PASSED: a sweep ran with 2 ranks per trial through srun (jobs: $(query "SELECT group_concat(job_id || ' ' || state, ', ') FROM slurm_jobs" "$db2"))"
