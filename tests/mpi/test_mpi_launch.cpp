// `mpirun -np 2 upcycle train …` from the outside, as a user launches it: a data-parallel job
// trains with rank 0 alone printing; a rank that fails, or one that hangs, ends the whole job
// with a non-zero status and a message saying why, never a hang. (The ranks' numerics are
// tested in mpi_test_data_parallel.cpp.) Every launch runs under `timeout`, so a job that
// hung shows as status 124 instead of stalling the suite.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "kernels/comm/mpi_communicator.h"
#include "test_support.h"

namespace upcycle {
namespace {

using testing::CliResult;
using testing::run_shell;
using testing::TempDir;

// Open MPI as CI runs it: as root in a container, on 2 cores, one OpenMP thread per rank.
constexpr const char* kMpiEnvironment =
    "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 "
    "OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1";
// Long enough for any launch on a loaded machine; a hung job is cut here (status 124).
constexpr int kLaunchLimitSeconds = 120;
constexpr int kTimedOut = 124;

class MpiLaunch : public ::testing::Test {
protected:
    void SetUp() override {
        if (!mpi_available()) GTEST_SKIP() << "this build has no MPI";
        if (std::system("command -v mpirun > /dev/null 2>&1") != 0) {
            GTEST_SKIP() << "mpirun is not installed";
        }
        const char* bin = std::getenv("UPCYCLE_BIN");
        if (bin == nullptr) GTEST_SKIP() << "UPCYCLE_BIN is not set (run the tests through ctest)";
        bin_ = bin;
        std::ofstream(dir_ / "tiny.yaml") << R"(name: tiny
model: {context: 16, channels: 32, layers: 2, heads: 2}
data: {source: synthetic, synthetic_bytes: 65536}
train: {batch_size: 8, steps: 6, warmup_steps: 2, log_every: 2, lr: 0.003}
eval: {every: 3, max_windows: 32}
checkpoint: {every: 0}
)";
    }

    // `upcycle train tiny.yaml --out DIR/out ARGS` for one rank of an MPMD command line.
    std::string train_command(const std::string& args = "") const {
        return bin_ + " train " + (dir_ / "tiny.yaml").string() + " --out " +
               (dir_ / "out").string() + " " + args;
    }

    static std::string mpirun(const std::string& ranks) {
        return std::string("env ") + kMpiEnvironment + " timeout " +
               std::to_string(kLaunchLimitSeconds) + " mpirun " + ranks;
    }

    TempDir dir_;
    std::string bin_;
};

std::size_t occurrences(const std::string& text, const std::string& what) {
    std::size_t count = 0;
    for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) {
        ++count;
    }
    return count;
}

TEST_F(MpiLaunch, TrainsOnTwoRanksWithRankZeroAlonePrinting) {
    const CliResult r = run_shell(mpirun("-np 2 " + train_command()));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_EQ(occurrences(r.output, "2 ranks (mpi, ZeRO stage 0)"), 1u) << r.output;
    EXPECT_EQ(occurrences(r.output, "step      6/6"), 1u) << r.output;
    EXPECT_EQ(occurrences(r.output, "final validation loss"), 1u) << r.output;
    EXPECT_TRUE(std::filesystem::exists(dir_ / "out" / "checkpoint.safetensors"));
}

// Rank 1 cannot read its data (its command line names a file that is not there) after MPI
// is up, while rank 0 goes on into the first collective and waits for it there.
TEST_F(MpiLaunch, ARankThatFailsEndsTheJobWithItsError) {
    const std::string missing = (dir_ / "missing.txt").string();
    const CliResult r =
        run_shell(mpirun("-np 1 " + train_command() + " : -np 1 " +
                         train_command("--set data.source=text --set data.path=" + missing)));
    EXPECT_NE(r.exit_code, kTimedOut) << "the job hung:\n" << r.output;
    EXPECT_NE(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("upcycle: error: rank 1 of 2: " + missing), std::string::npos)
        << r.output;
}

// Rank 1 stops (SIGSTOP: alive, never calling the next collective) once training is under way
// (the first evaluation is in log.jsonl); rank 0's collective watchdog ends the job.
TEST_F(MpiLaunch, AHungRankEndsTheJobAtTheCollectiveTimeout) {
    const std::string pid_file = (dir_ / "rank1.pid").string();
    const std::string log = (dir_ / "out" / "log.jsonl").string();
    const std::string endless = "--set train.steps=1000000 --set eval.every=1";
    // rank 1 records its pid (exec keeps it) so the test can stop that rank
    const std::string job =
        mpirun("-np 1 " + train_command(endless) + " : -np 1 sh -c 'echo $$ > " + pid_file +
               "; exec " + train_command(endless) + "'");
    const auto script = dir_ / "hang.sh";
    std::ofstream(script) << "UPCYCLE_COLLECTIVE_TIMEOUT=2 " << job << " &\n"
                          << "job=$!\n"
                          << "for i in $(seq 600); do\n"
                          << "  [ -s " << log << " ] && [ -s " << pid_file << " ] && break\n"
                          << "  sleep 0.1\n"
                          << "done\n"
                          << "kill -STOP $(cat " << pid_file << ")\n"
                          << "wait $job\n";
    const CliResult r = run_shell("sh " + script.string());
    EXPECT_NE(r.exit_code, kTimedOut) << "the job hung:\n" << r.output;
    EXPECT_NE(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("for the other ranks (the collective timeout, "
                            "UPCYCLE_COLLECTIVE_TIMEOUT): a rank is dead or hung"),
              std::string::npos)
        << r.output;
}

}  // namespace
}  // namespace upcycle
