// `upcycle run --executor slurm` against stand-ins for sbatch, squeue and sacct (written here
// into a temporary folder put first on PATH) that run each array task at once, on this
// machine, in submission order: dependencies are honoured (a task whose parent's task did not
// complete is cancelled, as with --kill-on-invalid-dep), the first task run is killed at its
// first checkpoint (a node failure) and the third is sent SIGTERM there (a time limit). Runs
// of `run --executor slurm` resubmit what died until every trial is done exactly once, and
// the store then holds what a local run of the same sweep records. A stand-in srun runs a
// job's ranks with mpirun: a sweep with --ranks-per-trial 2 trains each trial on 2 ranks once,
// and records what one process records, to rounding. Bad input gets one line.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>

#include <fmt/format.h>

#include "kernels/comm/mpi_communicator.h"
#include "runner/store/store.h"
#include "test_support.h"

namespace upcycle {
namespace {

using testing::run_cli;
using testing::run_cli_with_prefix;
using testing::TempDir;

// Long enough that a task killed at its first checkpoint (step 20) is still training.
constexpr int kPretrainSteps = 300;

// sbatch: each array task runs now; its state goes to $FAKE_SLURM_STATE/jobs/ID, and a line
// "JOB RUN EXIT STATE" to $FAKE_SLURM_STATE/runs. Run number $FAKE_SLURM_KILL_RUN is killed
// (SIGKILL: NODE_FAIL) and $FAKE_SLURM_TIMEOUT_RUN stopped (SIGTERM: TIMEOUT) once its output
// says it wrote a checkpoint.
const char* kSbatch = R"SH(#!/bin/bash
set -u
state="${FAKE_SLURM_STATE:?}"
mkdir -p "$state/jobs"
array=""; dependency=""; script=""
for arg in "$@"; do
  case "$arg" in
    --parsable) ;;
    --array=*) array="${arg#--array=}" ;;
    --dependency=*) dependency="${arg#--dependency=}" ;;
    -*) echo "sbatch (stand-in): unexpected option $arg" >&2; exit 1 ;;
    *) script="$arg" ;;
  esac
done
[ -r "$script" ] || { echo "sbatch: error: Unable to open file $script" >&2; exit 1; }
[ -n "$array" ] || { echo "sbatch (stand-in): expected --array" >&2; exit 1; }
id=$(cat "$state/next_id" 2>/dev/null || echo 1000)
echo $((id + 1)) > "$state/next_id"
output=$(sed -n "s/^#SBATCH --output=//p" "$script" | tr -d "'")
satisfied=1
if [ -n "$dependency" ]; then
  case "$dependency" in afterok:*) ;; *) echo "sbatch (stand-in): unexpected $dependency" >&2; exit 1 ;; esac
  for d in $(echo "${dependency#afterok:}" | tr ':' ' '); do
    [ "$(cut -d'|' -f1 "$state/jobs/$d" 2>/dev/null)" = COMPLETED ] || satisfied=0
  done
fi
echo "$id"
for task in $(echo "${array%%\%*}" | tr ',' ' '); do
  job="${id}_${task}"
  if [ $satisfied = 0 ]; then
    echo "CANCELLED|DependencyNeverSatisfied|" > "$state/jobs/$job"
    continue
  fi
  run=$(( $(cat "$state/run_count" 2>/dev/null || echo 0) + 1 ))
  echo $run > "$state/run_count"
  out="${output//%A/$id}"; out="${out//%a/$task}"
  echo "RUNNING||fakenode" > "$state/jobs/$job"
  SLURM_ARRAY_JOB_ID=$id SLURM_ARRAY_TASK_ID=$task SLURM_JOB_ID=$((id * 100 + task)) \
    bash "$script" > "$out" 2>&1 < /dev/null &
  pid=$!
  signal=""
  [ "$run" = "${FAKE_SLURM_KILL_RUN:-}" ] && signal=KILL
  [ "$run" = "${FAKE_SLURM_TIMEOUT_RUN:-}" ] && signal=TERM
  faulted=""
  if [ -n "$signal" ]; then
    until grep -q "checkpoint written at step" "$out" 2>/dev/null || ! kill -0 $pid 2>/dev/null; do
      sleep 0.01
    done
    kill -$signal $pid 2>/dev/null && faulted=$signal
  fi
  wait $pid 2> /dev/null
  rc=$?
  case "$faulted:$rc" in
    KILL:*) final="NODE_FAIL|NodeDown|fakenode" ;;
    TERM:*) final="TIMEOUT|TimeLimit|fakenode" ;;
    *:0) final="COMPLETED||fakenode" ;;
    *) final="FAILED|NonZeroExitCode|fakenode" ;;
  esac
  echo "$final" > "$state/jobs/$job"
  echo "$job $run $rc ${final%%|*}" >> "$state/runs"
done
)SH";

// squeue: only what still waits or runs (SLURM forgets ended jobs after MinJobAge).
const char* kSqueue = R"SH(#!/bin/bash
state="${FAKE_SLURM_STATE:?}"
for f in "$state"/jobs/*; do
  [ -e "$f" ] || continue
  IFS='|' read -r s reason node < "$f"
  case "$s" in PENDING|RUNNING) echo "$(basename "$f")|$s|${reason:-None}|$node" ;; esac
done
)SH";

// sacct: the accounting of every job, as --parsable2 with JobID,State,ExitCode,NodeList.
const char* kSacct = R"SH(#!/bin/bash
state="${FAKE_SLURM_STATE:?}"
for f in "$state"/jobs/*; do
  [ -e "$f" ] || continue
  IFS='|' read -r s reason node < "$f"
  case "$s" in
    CANCELLED) echo "$(basename "$f")|CANCELLED by 0|0:0|None assigned" ;;
    NODE_FAIL) echo "$(basename "$f")|NODE_FAIL|0:9|$node" ;;
    TIMEOUT) echo "$(basename "$f")|TIMEOUT|0:15|$node" ;;
    FAILED) echo "$(basename "$f")|FAILED|2:0|$node" ;;
    *) echo "$(basename "$f")|$s|0:0|$node" ;;
  esac
done
)SH";

// srun: the job's ranks, started here by Open MPI's mpirun (as root, on few cores, as ctest
// runs the MPI tests). It takes the options a job script gives it and notes them, with the
// OpenMP threads the script set, as "ntasks=N cpus=C mpi=M omp=T" in $FAKE_SLURM_STATE/srun.
const char* kSrun = R"SH(#!/bin/bash
set -u
ntasks=1; cpus=""; mpi=""; kill_on_bad_exit=0
while [ $# -gt 0 ]; do
  case "$1" in
    --ntasks=*) ntasks="${1#--ntasks=}" ;;
    --cpus-per-task=*) cpus="${1#--cpus-per-task=}" ;;
    --mpi=*) mpi="${1#--mpi=}" ;;
    --kill-on-bad-exit=1) kill_on_bad_exit=1 ;;  # mpirun ends the job when a rank fails
    -*) echo "srun (stand-in): unexpected option $1" >&2; exit 1 ;;
    *) break ;;
  esac
  shift
done
[ $# -gt 0 ] || { echo "srun (stand-in): expected a program" >&2; exit 1; }
echo "ntasks=$ntasks cpus=$cpus mpi=$mpi omp=${OMP_NUM_THREADS:-} kill=$kill_on_bad_exit" \
  >> "${FAKE_SLURM_STATE:?}/srun"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
  OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1
exec mpirun --oversubscribe -np "$ntasks" "$@"
)SH";

std::string this_host() {
    char host[256] = {0};
    gethostname(host, sizeof(host) - 1);
    return host;
}

class SlurmExecutor : public ::testing::Test {
protected:
    void SetUp() override {
        if (!std::getenv("UPCYCLE_BIN")) GTEST_SKIP() << "UPCYCLE_BIN not set; run through ctest";
        std::filesystem::create_directories(dir_ / "bin");
        write_program("sbatch", kSbatch);
        write_program("squeue", kSqueue);
        write_program("sacct", kSacct);
        write_program("srun", kSrun);
        std::ofstream(dir_ / "tiny.yaml") << testing::tiny_sweep_yaml(kPretrainSteps);
    }
    void write_program(const std::string& name, const char* text) {
        const auto path = dir_ / "bin" / name;
        std::ofstream(path) << text;
        std::filesystem::permissions(path, std::filesystem::perms::owner_all);
    }
    // The command line's environment: the stand-ins first on PATH, their state, the faults.
    std::string slurm_env(const std::string& faults = "") const {
        return fmt::format("env PATH={}:$PATH FAKE_SLURM_STATE={} {}", (dir_ / "bin").string(),
                           (dir_ / "slurm_state").string(), faults);
    }
    std::string run_args(const std::filesystem::path& db, const std::string& extra = "") const {
        return fmt::format("run {} --db {} {}", (dir_ / "tiny.yaml").string(), db.string(), extra);
    }
    // "JOB RUN EXIT STATE" lines of every task the stand-in ran
    std::vector<std::vector<std::string>> task_runs() const {
        std::vector<std::vector<std::string>> runs;
        std::ifstream in(dir_ / "slurm_state" / "runs");
        std::string line;
        while (std::getline(in, line)) {
            std::istringstream words(line);
            std::vector<std::string> fields;
            for (std::string w; words >> w;) fields.push_back(w);
            runs.push_back(fields);
        }
        return runs;
    }
    TempDir dir_;
};

// What the store holds about the sweep's trials that must not depend on where they ran:
// totals, metric series, budget evaluations, routing statistics, the checkpoint artifact.
std::vector<std::string> recorded_rows(const std::filesystem::path& db) {
    Store store(db, Store::Mode::ReadOnly);
    std::vector<std::string> rows;
    for (const auto& t : store.trials("tiny")) {
        const std::string who = to_string(t.method) + " " + t.hash.substr(0, 12) + " ";
        rows.push_back(who + to_string(t.status) +
                       fmt::format(" step {} flops {} tokens {}", t.step, t.flops, t.tokens));
        for (const auto& m : store.metrics(t.id)) {
            rows.push_back(who + fmt::format("metric {} step {} flops {} value {}", m.key, m.step,
                                             m.flops, m.value));
        }
        for (const auto& e : store.evaluations_of_trial(t.id)) {
            rows.push_back(who + fmt::format("eval {}% step {} flops {} {}", e.budget_percent,
                                             e.step, e.flops, e.metrics.dump()));
        }
        for (const auto& r : store.routing(t.id)) {
            rows.push_back(who + fmt::format("routing step {} layer {} {} {} {}", r.step, r.layer,
                                             r.tokens_per_expert.dump(), r.router_entropy,
                                             r.dropped_fraction));
        }
        for (const auto& a : store.artifacts(t.id)) {
            rows.push_back(who + "artifact " + a.kind +
                           (std::filesystem::exists(a.path) ? " present" : " missing"));
        }
    }
    return rows;
}

TEST_F(SlurmExecutor, KilledAndTimedOutTasksAreResubmittedAndTheStoreEqualsALocalRun) {
    const auto db = dir_ / "cluster" / "u.db";
    const std::string faults = "FAKE_SLURM_KILL_RUN=1 FAKE_SLURM_TIMEOUT_RUN=3";

    // 1: the pretraining's task dies (node failure); its continuations can never start
    auto result = run_cli_with_prefix(slurm_env(faults), run_args(db, "--executor slurm"));
    EXPECT_EQ(result.exit_code, 0) << result.output;
    EXPECT_NE(result.output.find("submitted wave 1"), std::string::npos) << result.output;
    auto status = run_cli_with_prefix(slurm_env(), "status tiny --db " + db.string());
    ASSERT_EQ(status.exit_code, 0) << status.output;
    EXPECT_NE(status.output.find("ended NODE_FAIL (exit code 0:9) on fakenode without a result"),
              std::string::npos)
        << status.output;
    EXPECT_NE(status.output.find("blocked: its parent pretrain-"), std::string::npos)
        << status.output;

    // 2: everything again; the pretraining resumes, the first continuation hits its time limit
    result = run_cli_with_prefix(slurm_env(faults), run_args(db, "--executor slurm"));
    EXPECT_EQ(result.exit_code, 0) << result.output;
    EXPECT_NE(result.output.find("5 trial(s) whose SLURM job ended without a result are "
                                 "submitted again"),
              std::string::npos)
        << result.output;
    // 3: only the timed-out continuation, resuming from its checkpoint
    result = run_cli_with_prefix(slurm_env(faults), run_args(db, "--executor slurm"));
    EXPECT_EQ(result.exit_code, 0) << result.output;
    EXPECT_NE(result.output.find("1 trial(s) whose SLURM job ended without a result"),
              std::string::npos)
        << result.output;
    // 4: nothing left to submit; collect records the last result
    result = run_cli_with_prefix(slurm_env(), run_args(db, "--executor slurm"));
    EXPECT_EQ(result.exit_code, 0) << result.output;
    EXPECT_NE(result.output.find("5 trials | 5 done"), std::string::npos) << result.output;
    EXPECT_NE(result.output.find("nothing to submit"), std::string::npos) << result.output;

    // every trial's task completed exactly once; the two faults landed where asked
    const auto runs = task_runs();
    ASSERT_EQ(runs.size(), 7u);  // 1 killed, 5 (one timed out), 1 resumed
    EXPECT_EQ(runs[0][3], "NODE_FAIL");
    EXPECT_EQ(runs[2][3], "TIMEOUT");
    std::map<std::string, int> completed_by_trial;
    Store store(db, Store::Mode::ReadOnly);
    for (const auto& t : store.trials("tiny")) {
        EXPECT_EQ(t.status, TrialStatus::Done) << t.method << ": " << t.error;
        EXPECT_EQ(t.host, this_host());
    }
    int completed = 0;
    for (const auto& r : runs) completed += r[3] == "COMPLETED";
    EXPECT_EQ(completed, 5);
    // the resumed tasks resumed: the killed pretraining and the timed-out continuation
    int resumed = 0;
    for (const auto& entry : std::filesystem::recursive_directory_iterator(dir_ / "cluster")) {
        if (entry.path().extension() != ".out") continue;
        std::ifstream in(entry.path());
        const std::string text((std::istreambuf_iterator<char>(in)), {});
        resumed += text.find("resuming from") != std::string::npos;
    }
    EXPECT_EQ(resumed, 2);

    // the same sweep on this machine's workers records the same rows
    const auto local_db = dir_ / "local" / "u.db";
    result = run_cli(run_args(local_db, "--executor local"));
    ASSERT_EQ(result.exit_code, 0) << result.output;
    const auto cluster_rows = recorded_rows(db), local_rows = recorded_rows(local_db);
    ASSERT_GT(local_rows.size(), 100u);
    EXPECT_EQ(cluster_rows, local_rows);

    // collect again changes nothing
    result = run_cli_with_prefix(slurm_env(), "collect tiny --db " + db.string());
    EXPECT_EQ(result.exit_code, 0) << result.output;
    EXPECT_NE(result.output.find("collected: 0 done | 0 failed"), std::string::npos)
        << result.output;
    EXPECT_EQ(recorded_rows(db), cluster_rows);
}

// |a − b| ≤ relative · |b|
bool relatively_close(double a, double b, double relative) {
    return std::abs(a - b) <= relative * std::abs(b);
}

// Each array task is `srun --ntasks=2` (here mpirun -np 2): every trial of the sweep trains on
// 2 ranks, once, and the store records what one process records. The sweep sets
// train.micro_batch = 4 (half the batch) so that one process accumulates the same two
// micro-batches the 2 ranks take one each: an MoE layer routes and applies its capacity per
// micro-batch, so without it the upcycle and scratch trials would compute something else on
// 2 ranks (measured: up to 9e-4 apart in val_loss), not just round differently. What is left
// is the order of the sums: the ranks' gradients are added in another order than one
// process's accumulation (float rounding, ~1e-7), which training carries on. So, as in
// tests/mpi/mpi_test_data_parallel.cpp: losses and evaluations agree to a relative 1e-5
// (measured: 4e-8 after these ~80 steps), gradient norms to 1e-4 (measured: 6e-6); steps,
// tokens, FLOPs and the learning rate exactly. Routing statistics are not compared: a step
// records rank 0's last micro-batch, the first half of the batch on 2 ranks but the second
// on one process.
TEST_F(SlurmExecutor, TrialsOnTwoRanksThroughSrunRecordWhatOneProcessRecords) {
    if (!mpi_available()) GTEST_SKIP() << "this build has no MPI (UPCYCLE_MPI=OFF or not found)";
    if (std::system("command -v mpirun > /dev/null 2>&1") != 0) {
        GTEST_SKIP() << "mpirun is not on PATH (Debian: openmpi-bin)";
    }
    const std::string sets = "--set pretrain.steps=40 --set train.micro_batch=4";
    const auto db = dir_ / "cluster" / "u.db";
    auto result = run_cli_with_prefix(slurm_env(),
                                      run_args(db, "--executor slurm --ranks-per-trial 2 " + sets));
    ASSERT_EQ(result.exit_code, 0) << result.output;
    // again: collects every result, submits nothing
    result = run_cli_with_prefix(slurm_env(),
                                 run_args(db, "--executor slurm --ranks-per-trial 2 " + sets));
    ASSERT_EQ(result.exit_code, 0) << result.output;
    EXPECT_NE(result.output.find("5 trials | 5 done"), std::string::npos) << result.output;
    EXPECT_NE(result.output.find("nothing to submit"), std::string::npos) << result.output;

    // one task per trial, each one srun step of 2 ranks with one OpenMP thread each
    const auto runs = task_runs();
    ASSERT_EQ(runs.size(), 5u);
    for (const auto& r : runs) EXPECT_EQ(r[3], "COMPLETED") << r[0];
    std::ifstream srun_log(dir_ / "slurm_state" / "srun");
    std::vector<std::string> steps;
    for (std::string line; std::getline(srun_log, line);) steps.push_back(line);
    EXPECT_EQ(steps, std::vector<std::string>(5, "ntasks=2 cpus=1 mpi=pmix omp=1 kill=1"));

    const auto local_db = dir_ / "local" / "u.db";
    result = run_cli(run_args(local_db, "--executor local " + sets));
    ASSERT_EQ(result.exit_code, 0) << result.output;
    Store ranks_store(db, Store::Mode::ReadOnly), local_store(local_db, Store::Mode::ReadOnly);
    const auto trials = ranks_store.trials("tiny");
    const auto alone = local_store.trials("tiny");
    ASSERT_EQ(trials.size(), 5u);
    ASSERT_EQ(alone.size(), 5u);
    constexpr double kLossRelative = 1e-5, kGradNormRelative = 1e-4;
    std::size_t compared = 0;
    for (std::size_t i = 0; i < trials.size(); ++i) {
        const auto &t = trials[i], &a = alone[i];
        const std::string who = to_string(t.method);
        ASSERT_EQ(t.hash, a.hash) << who;  // the ranks are not part of a trial's identity
        EXPECT_EQ(t.status, TrialStatus::Done) << who << ": " << t.error;
        EXPECT_EQ(t.provenance.value("ranks", 1), 2) << who << ": " << t.provenance.dump();
        EXPECT_EQ(t.step, a.step) << who;
        EXPECT_EQ(t.tokens, a.tokens) << who;
        EXPECT_EQ(t.flops, a.flops) << who;
        const auto m = ranks_store.metrics(t.id), ma = local_store.metrics(a.id);
        ASSERT_EQ(m.size(), ma.size()) << who;
        for (std::size_t j = 0; j < m.size(); ++j) {
            ASSERT_EQ(m[j].key, ma[j].key) << who;
            EXPECT_EQ(m[j].step, ma[j].step) << who << " " << m[j].key;
            EXPECT_EQ(m[j].flops, ma[j].flops) << who << " " << m[j].key;
            const double relative = m[j].key == "grad_norm" ? kGradNormRelative
                                    : m[j].key == "lr"      ? 0
                                                            : kLossRelative;
            EXPECT_TRUE(relatively_close(m[j].value, ma[j].value, relative))
                << who << " " << m[j].key << " at step " << m[j].step << ": " << m[j].value
                << " on 2 ranks, " << ma[j].value << " on one";
            ++compared;
        }
        const auto e = ranks_store.evaluations_of_trial(t.id);
        const auto ea = local_store.evaluations_of_trial(a.id);
        ASSERT_EQ(e.size(), ea.size()) << who;
        for (std::size_t j = 0; j < e.size(); ++j) {
            EXPECT_EQ(e[j].budget_percent, ea[j].budget_percent) << who;
            EXPECT_EQ(e[j].step, ea[j].step) << who;
            EXPECT_EQ(e[j].flops, ea[j].flops) << who;
            for (const auto& [key, value] : ea[j].metrics.items()) {
                ASSERT_TRUE(e[j].metrics.contains(key)) << who << " " << key;
                EXPECT_TRUE(relatively_close(e[j].metrics[key].get<double>(), value.get<double>(),
                                             kLossRelative))
                    << who << " eval " << key << ": " << e[j].metrics[key] << " on 2 ranks, "
                    << value << " on one";
            }
        }
        EXPECT_EQ(ranks_store.routing(t.id).size(), local_store.routing(a.id).size()) << who;
    }
    EXPECT_GT(compared, 50u);
}

TEST_F(SlurmExecutor, BadInputGetsOneLine) {
    const auto db = dir_ / "u.db";
    auto result = run_cli(run_args(db, "--executor kubernetes"));
    EXPECT_EQ(result.exit_code, 2) << result.output;
    EXPECT_NE(result.output.find("'--executor': expected local (worker processes on this "
                                 "machine) or slurm"),
              std::string::npos)
        << result.output;

    result = run_cli(run_args(db, "--partition gpu"));
    EXPECT_EQ(result.exit_code, 2) << result.output;
    EXPECT_NE(result.output.find("'--partition': a SLURM option: add --executor slurm"),
              std::string::npos)
        << result.output;

    // no sbatch on PATH (an empty folder as the whole PATH)
    std::filesystem::create_directories(dir_ / "empty");
    result = run_cli_with_prefix("env PATH=" + (dir_ / "empty").string(),
                                 run_args(db, "--executor slurm"));
    EXPECT_EQ(result.exit_code, 2) << result.output;
    EXPECT_NE(result.output.find("sbatch is not on PATH"), std::string::npos) << result.output;

    // a result.json that lacks a key fails its trial, naming the file and the key
    result =
        run_cli_with_prefix(slurm_env("FAKE_SLURM_KILL_RUN=1"), run_args(db, "--executor slurm"));
    ASSERT_EQ(result.exit_code, 0) << result.output;
    Store store(db, Store::Mode::ReadOnly);
    const auto pretraining = store.trials("tiny").at(0);
    const auto result_file =
        db.parent_path() / "runs" / pretraining.hash.substr(0, 16) / "result.json";
    std::ofstream(result_file) << R"({"format": "upcycle result 1", "hash": ")" << pretraining.hash
                               << R"(", "host": "x", "status": "done", "origin": {"step": 0}})";
    result = run_cli_with_prefix(slurm_env(), "collect tiny --db " + db.string());
    EXPECT_EQ(result.exit_code, 0) << result.output;
    const std::string expected =
        result_file.string() + ": 'origin.tokens': missing; expected an integer";
    EXPECT_NE(result.output.find(expected), std::string::npos) << result.output;
    EXPECT_EQ(Store(db, Store::Mode::ReadOnly).trials("tiny").at(0).error, expected);
}

}  // namespace
}  // namespace upcycle
