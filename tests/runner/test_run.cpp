// `upcycle run` end to end on a tiny synthetic sweep: every method, rerun does no work, a
// worker killed with SIGKILL is taken over and its trial resumes from its checkpoint without
// duplicated rows, and several workers run every trial exactly once.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <thread>

#include "runner/store/store.h"
#include "test_support.h"

namespace upcycle {
namespace {

using testing::run_cli;
using testing::TempDir;

const char* kTinySweep = R"(name: tiny
model: {vocab_size: 256, context: 16, channels: 32, layers: 2, heads: 2}
data: {source: synthetic, synthetic_bytes: 65536}
train: {batch_size: 8, lr: 0.003, warmup_steps: 5, log_every: 10}
eval: {every: 0, max_windows: 16}
checkpoint: {every: 20}
pretrain: {steps: 40}
continue:
  budgets: [50, 100]
  methods:
    dense: {}
    upcycle: {experts: 4, k: 2}
    scratch: {}
    warmstart: {depth_multiplier: 2}
)";

class Run : public ::testing::Test {
protected:
    void SetUp() override {
        if (!std::getenv("UPCYCLE_BIN")) GTEST_SKIP() << "UPCYCLE_BIN not set; run through ctest";
        sweep_ = dir_.path() / "tiny.yaml";
        std::ofstream(sweep_) << kTinySweep;
        db_ = dir_.path() / "results" / "u.db";
    }
    std::string run_args(const std::string& extra = "") const {
        return "run " + sweep_.string() + " --db " + db_.string() + " " + extra;
    }
    TempDir dir_;
    std::filesystem::path sweep_, db_;
};

TEST_F(Run, RunsEveryMethodAndARerunDoesNoWork) {
    const auto first = run_cli(run_args());
    ASSERT_EQ(first.exit_code, 0) << first.output;
    EXPECT_NE(first.output.find("5 trials | 5 done"), std::string::npos) << first.output;

    Store store(db_, Store::Mode::ReadOnly);
    const auto trials = store.trials("tiny");
    ASSERT_EQ(trials.size(), 5u);
    for (const auto& t : trials) {
        EXPECT_EQ(to_string(t.status), "done") << t.method;
        EXPECT_EQ(t.attempts, 1) << t.method;
        const auto evals = store.evaluations_of_trial(t.id);
        if (t.method == Method::Pretrain) {
            ASSERT_EQ(evals.size(), 1u);
            EXPECT_EQ(evals[0].budget_percent, 0);
        } else if (t.method == Method::Scratch) {
            ASSERT_EQ(evals.size(), 3u);  // 50, 100 and 200 (max + 100: no sunk cost)
            EXPECT_EQ(evals[2].budget_percent, 200);
        } else {
            ASSERT_EQ(evals.size(), 2u) << t.method;
            // the continuation's own compute at the 100% milestone is about the sunk cost
            const auto& parent = store.trial(*t.parent);
            EXPECT_GE(evals[1].flops, parent->flops) << t.method;
            EXPECT_LT(evals[1].flops, 1.2 * parent->flops) << t.method;
        }
        for (const auto& e : evals) EXPECT_GT(e.metrics["val_loss"].get<double>(), 0.5);
        EXPECT_EQ(store.artifacts(t.id).size(), 1u);
        if (t.method == Method::Upcycle || t.method == Method::Scratch) {
            EXPECT_FALSE(store.routing(t.id).empty()) << t.method;
        }
    }

    const auto second = run_cli(run_args());
    ASSERT_EQ(second.exit_code, 0) << second.output;
    EXPECT_EQ(second.output.find("started"), std::string::npos) << second.output;
}

TEST_F(Run, AKilledWorkersTrialIsTakenOverAndResumedWithoutDuplicates) {
    // a longer pretraining so the kill lands mid-trial, after a checkpoint
    std::ofstream(sweep_, std::ios::app) << "";
    const std::string args = run_args("--set pretrain.steps=400 --heartbeat 0.2 --stale-after 1");
    const pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        const std::string command =
            std::string(std::getenv("UPCYCLE_BIN")) + " " + args + " > /dev/null 2>&1";
        execl("/bin/sh", "sh", "-c", ("exec " + command).c_str(), static_cast<char*>(nullptr));
        _exit(127);
    }
    bool killed = false;
    for (int i = 0; i < 4000 && !killed; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        const auto runs = db_.parent_path() / "runs";
        std::error_code ec;
        for (const auto& d : std::filesystem::directory_iterator(runs, ec)) {
            if (std::filesystem::exists(d.path() / "checkpoint.safetensors")) {
                std::this_thread::sleep_for(std::chrono::milliseconds(40));
                killed = kill(child, SIGKILL) == 0;
                break;
            }
        }
    }
    int status = 0;
    waitpid(child, &status, 0);
    ASSERT_TRUE(killed && WIFSIGNALED(status)) << "the worker was not killed mid-run";
    {
        Store store(db_, Store::Mode::ReadOnly);
        const auto trials = store.trials("tiny");
        ASSERT_FALSE(trials.empty());
        EXPECT_EQ(to_string(trials[0].status), "running");  // left behind by the dead worker
    }

    const auto rerun = run_cli(args);
    ASSERT_EQ(rerun.exit_code, 0) << rerun.output;
    EXPECT_NE(rerun.output.find("resuming from"), std::string::npos) << rerun.output;
    Store store(db_, Store::Mode::ReadOnly);
    const auto trials = store.trials("tiny");
    ASSERT_EQ(trials.size(), 5u);
    for (const auto& t : trials) EXPECT_EQ(to_string(t.status), "done") << t.method;
    EXPECT_EQ(to_string(trials[0].method), "pretrain");
    EXPECT_EQ(trials[0].attempts, 2);
    // one train_loss row per logged step (every 10 of 400), none missing, none twice
    const auto losses = store.metrics(trials[0].id, "train_loss");
    ASSERT_EQ(losses.size(), 40u);
    for (std::size_t i = 0; i < losses.size(); ++i)
        EXPECT_EQ(losses[i].step, static_cast<int64_t>(10 * (i + 1)));
}

TEST_F(Run, TwoWorkersRunEveryTrialExactlyOnce) {
    const auto result = run_cli(run_args("--workers 2"));
    ASSERT_EQ(result.exit_code, 0) << result.output;
    EXPECT_EQ(result.output.find("database is locked"), std::string::npos) << result.output;
    Store store(db_, Store::Mode::ReadOnly);
    const auto trials = store.trials("tiny");
    ASSERT_EQ(trials.size(), 5u);
    for (const auto& t : trials) {
        EXPECT_EQ(to_string(t.status), "done") << t.method;
        EXPECT_EQ(t.attempts, 1) << t.method;
    }
}

}  // namespace
}  // namespace upcycle
