// The `upcycle` command line end to end: train → eval → inspect on a tiny synthetic run,
// and the one-line errors with non-zero exits that bad input gets.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "test_support.h"

namespace upcycle {
namespace {

using testing::run_cli;
using testing::run_cli_with_prefix;
using testing::TempDir;

void write(const std::filesystem::path& path, const std::string& text) {
    std::ofstream(path) << text;
}

const char* kTinyConfig = R"(name: cli_tiny
model: {vocab_size: 256, context: 16, channels: 32, layers: 2, heads: 2}
data: {source: synthetic, synthetic_bytes: 65536}
train: {batch_size: 8, steps: 12, lr: 0.003, warmup_steps: 2, log_every: 4}
eval: {every: 6, max_windows: 16}
checkpoint: {every: 6}
)";

class Cli : public ::testing::Test {
protected:
    void SetUp() override {
        if (!std::getenv("UPCYCLE_BIN")) GTEST_SKIP() << "UPCYCLE_BIN not set; run through ctest";
    }
};

// The vision path through the command line: a tiny ViT trained on a Fashion-MNIST subset,
// upcycled with expert-choice routing at capacity factor E (so the upcycled model is its
// dense parent's function), and evaluated: validation, test and probe metrics.
TEST_F(Cli, VitTrainUpcycleEval) {
    if (!testing::have_fashion_mnist()) {
        GTEST_SKIP() << "Fashion-MNIST not installed (dataset-fashion-mnist)";
    }
    TempDir dir;
    write(dir / "vit.yaml", R"(name: cli_vit
model: {arch: vit, patch: 7, channels: 16, layers: 2, heads: 2}
data: {source: fashion_mnist, train_images: 500, validation_images: 100}
train: {batch_size: 50, steps: 10, lr: 0.003, warmup_steps: 2, log_every: 5}
eval: {every: 0, probe_shots: [1, 5], probe_seeds: 2}
checkpoint: {every: 0}
)");
    const auto out = (dir / "run").string();
    const auto trained = run_cli("train " + (dir / "vit.yaml").string() + " --out " + out);
    ASSERT_EQ(trained.exit_code, 0) << trained.output;
    EXPECT_NE(trained.output.find("ViT L=2 C=16 H=2 patch=7 T=17"), std::string::npos)
        << trained.output;
    EXPECT_NE(trained.output.find("test_accuracy"), std::string::npos) << trained.output;

    const auto dense = out + "/checkpoint.safetensors";
    const auto moe = (dir / "moe.safetensors").string();
    const auto cut = run_cli("surgery --method upcycle --in " + dense + " --out " + moe +
                             " --experts 4 --layers all --router expert_choice --capacity-factor 4"
                             " --eval-capacity-factor 4 --optimizer-state copy");
    ASSERT_EQ(cut.exit_code, 0) << cut.output;

    auto eval_json = [&](const std::string& ckpt) {
        const auto r = run_cli("eval --ckpt " + ckpt + " --json --max-images 100");
        EXPECT_EQ(r.exit_code, 0) << r.output;
        return nlohmann::json::parse(r.output);
    };
    const auto a = eval_json(dense), b = eval_json(moe);
    EXPECT_EQ(a["images"], 100);
    for (const char* key : {"val_loss", "val_accuracy", "test_accuracy", "probe_1shot_accuracy",
                            "probe_5shot_accuracy"}) {
        ASSERT_TRUE(a.contains(key) && b.contains(key)) << key;
        EXPECT_NEAR(a[key].get<double>(), b[key].get<double>(), 1e-4) << key;
    }
    EXPECT_GT(a["test_accuracy"].get<double>(), 0.2);  // 10 steps: above chance (0.1)

    const auto text = run_cli("eval --ckpt " + dense + " --text " + (dir / "vit.yaml").string());
    EXPECT_EQ(text.exit_code, 2) << text.output;
    EXPECT_NE(text.output.find("only a GPT checkpoint"), std::string::npos) << text.output;
}

TEST_F(Cli, TrainEvalInspect) {
    TempDir dir;
    write(dir / "tiny.yaml", kTinyConfig);
    const auto out = (dir / "run").string();
    const auto trained = run_cli("train " + (dir / "tiny.yaml").string() + " --out " + out);
    ASSERT_EQ(trained.exit_code, 0) << trained.output;
    EXPECT_NE(trained.output.find("final validation loss"), std::string::npos) << trained.output;
    EXPECT_NE(trained.output.find("step     12/12"), std::string::npos) << trained.output;

    const auto ckpt = out + "/checkpoint.safetensors";
    const auto evaluated = run_cli("eval --ckpt " + ckpt + " --json");
    ASSERT_EQ(evaluated.exit_code, 0) << evaluated.output;
    const auto json = nlohmann::json::parse(evaluated.output);
    EXPECT_EQ(json["step"], 12);
    EXPECT_GT(json["val_loss"].get<double>(), 0.5);
    EXPECT_LT(json["val_loss"].get<double>(), 5.6);  // below ln(256): it learned something

    // --text: windows of T+1 = 17 bytes every 16 bytes; 100 bytes → 6 windows, 96 bytes
    write(dir / "sample.txt", std::string(100, 'a'));
    const auto on_text =
        run_cli("eval --ckpt " + ckpt + " --text " + (dir / "sample.txt").string() + " --json");
    ASSERT_EQ(on_text.exit_code, 0) << on_text.output;
    const auto text_json = nlohmann::json::parse(on_text.output);
    EXPECT_EQ(text_json["windows"], 6);
    EXPECT_EQ(text_json["tokens"], 96);

    const auto inspected = run_cli("inspect " + ckpt);
    ASSERT_EQ(inspected.exit_code, 0) << inspected.output;
    EXPECT_NE(inspected.output.find("blocks.1.mlp.proj.weight"), std::string::npos);
    EXPECT_NE(inspected.output.find("[32, 128]"), std::string::npos);
    EXPECT_NE(inspected.output.find("upcycle.provenance"), std::string::npos);
    EXPECT_NE(inspected.output.find("matches the data"), std::string::npos) << inspected.output;
    // inspect checks the data checksum like every other reader
    {
        std::ifstream in(ckpt, std::ios::binary);
        std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        bytes[bytes.size() - 3] ^= 0x10;
        write(dir / "flipped.safetensors", bytes);
    }
    const auto flipped = run_cli("inspect " + (dir / "flipped.safetensors").string());
    EXPECT_EQ(flipped.exit_code, 2) << flipped.output;
    EXPECT_NE(flipped.output.find("checksum mismatch"), std::string::npos) << flipped.output;

    // an output folder that cannot be made is the user's to fix (exit 2), not an internal error
    const auto blocked =
        run_cli("train " + (dir / "tiny.yaml").string() + " --out " + ckpt + "/inside-a-file");
    EXPECT_EQ(blocked.exit_code, 2) << blocked.output;
    EXPECT_NE(blocked.output.find("inside-a-file"), std::string::npos) << blocked.output;
    EXPECT_EQ(blocked.output.find("internal error"), std::string::npos) << blocked.output;

    // Running the same command again finds the finished checkpoint and does no training.
    const auto again = run_cli("train " + (dir / "tiny.yaml").string() + " --out " + out);
    ASSERT_EQ(again.exit_code, 0) << again.output;
    EXPECT_NE(again.output.find("resuming from"), std::string::npos) << again.output;
    EXPECT_EQ(again.output.find("step      4/12"), std::string::npos) << again.output;

    // a non-finite capacity factor is refused before a checkpoint is written
    for (const char* flag : {"--capacity-factor nan", "--capacity-factor inf",
                             "--eval-capacity-factor nan", "--aux-loss-coef -inf"}) {
        const auto moe = (dir / "moe.safetensors").string();
        const auto refused =
            run_cli("surgery --method upcycle --in " + ckpt + " --out " + moe + " " + flag);
        EXPECT_EQ(refused.exit_code, 2) << flag << "\n" << refused.output;
        EXPECT_NE(refused.output.find("expected a finite number"), std::string::npos)
            << refused.output;
        EXPECT_FALSE(std::filesystem::exists(moe)) << flag;
    }
}

// kill -9 in the middle of training: the same command again resumes from the last checkpoint
// and ends exactly where an uninterrupted run ends (same final loss, bit for bit).
TEST_F(Cli, KilledTrainingResumesToTheSameResult) {
    TempDir dir;
    write(dir / "tiny.yaml", std::string(kTinyConfig) + "# longer, checkpoint often\n");
    const std::string config = (dir / "tiny.yaml").string();
    const std::string overrides =
        " --set train.steps=400 --set checkpoint.every=20 --set train.log_every=10";
    const auto straight =
        run_cli("train " + config + overrides + " --out " + (dir / "straight").string());
    ASSERT_EQ(straight.exit_code, 0) << straight.output;

    const auto killed_dir = dir / "killed";
    const pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        const std::string command = std::string(std::getenv("UPCYCLE_BIN")) + " train " + config +
                                    overrides + " --out " + killed_dir.string() +
                                    " > /dev/null 2>&1";
        execl("/bin/sh", "sh", "-c", ("exec " + command).c_str(), static_cast<char*>(nullptr));
        _exit(127);
    }
    // wait until a checkpoint exists and training is past it, then kill without warning
    const auto ckpt = killed_dir / "checkpoint.safetensors";
    bool killed_mid_run = false;
    for (int i = 0; i < 2000; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        if (std::filesystem::exists(ckpt)) {
            std::this_thread::sleep_for(std::chrono::milliseconds(30));
            killed_mid_run = kill(child, SIGKILL) == 0;
            break;
        }
    }
    int status = 0;
    waitpid(child, &status, 0);
    ASSERT_TRUE(killed_mid_run) << "the run finished or never checkpointed";
    ASSERT_TRUE(WIFSIGNALED(status)) << "the run ended before the kill";

    const auto resumed = run_cli("train " + config + overrides + " --out " + killed_dir.string());
    ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
    EXPECT_NE(resumed.output.find("resuming from"), std::string::npos) << resumed.output;
    auto final_line = [](const std::string& out) {
        const auto at = out.find("final validation loss");
        return at == std::string::npos ? std::string()
                                       : out.substr(at, out.find(" | ", at + 30) - at);
    };
    EXPECT_FALSE(final_line(straight.output).empty());
    EXPECT_EQ(final_line(straight.output), final_line(resumed.output));
}

TEST_F(Cli, BadInputGetsOneClearLineAndExitCode2) {
    TempDir dir;
    write(dir / "bad.yaml", "train:\n  stpes: 10\n");
    const auto bad =
        run_cli("train " + (dir / "bad.yaml").string() + " --out " + (dir / "o").string());
    EXPECT_EQ(bad.exit_code, 2) << bad.output;
    EXPECT_NE(bad.output.find("bad.yaml"), std::string::npos) << bad.output;
    EXPECT_NE(bad.output.find("train.stpes"), std::string::npos) << bad.output;
    EXPECT_NE(bad.output.find("did you mean 'steps'"), std::string::npos) << bad.output;

    write(dir / "ok.yaml", kTinyConfig);
    const auto bad_set = run_cli("train " + (dir / "ok.yaml").string() + " --set model.heads=3");
    EXPECT_EQ(bad_set.exit_code, 2) << bad_set.output;
    EXPECT_NE(bad_set.output.find("model.heads"), std::string::npos) << bad_set.output;

    // a missing or unreadable file named on the command line is a user error too (CLI11's own
    // exit code for it was 105)
    for (const std::string& what : {(dir / "nope.yaml").string(), dir.path().string()}) {
        const auto no_file = run_cli("run " + what + " --db " + (dir / "u.db").string());
        EXPECT_EQ(no_file.exit_code, 2) << no_file.output;
        EXPECT_NE(no_file.output.find(what), std::string::npos) << no_file.output;
    }

    const auto missing = run_cli("eval --ckpt " + (dir / "nope.safetensors").string());
    EXPECT_EQ(missing.exit_code, 2) << missing.output;
    EXPECT_NE(missing.output.find("nope.safetensors"), std::string::npos) << missing.output;

    write(dir / "short.safetensors", std::string("\x10\x00\x00", 3));
    const auto truncated = run_cli("inspect " + (dir / "short.safetensors").string());
    EXPECT_EQ(truncated.exit_code, 2) << truncated.output;
    EXPECT_NE(truncated.output.find("short.safetensors"), std::string::npos) << truncated.output;

    const auto device = run_cli("bench --model gpt-tiny --device tpu");
    EXPECT_EQ(device.exit_code, 2) << device.output;
    EXPECT_NE(device.output.find("--device"), std::string::npos) << device.output;

    const auto preset = run_cli("bench --model gpt-tyni");
    EXPECT_EQ(preset.exit_code, 2) << preset.output;
    EXPECT_NE(preset.output.find("did you mean 'gpt-tiny'"), std::string::npos) << preset.output;

    const auto k = run_cli("bench-moe --experts 4 --k 5");
    EXPECT_EQ(k.exit_code, 2) << k.output;
    EXPECT_NE(k.output.find("--k"), std::string::npos) << k.output;
}

// OpenMP threads wait passively unless the environment says otherwise: spinning waiters made
// two processes on 2 cores slow each other by more than 2× (kernels/cpu/process_setup.h).
TEST_F(Cli, OpenMpWaitsPassivelyUnlessTheEnvironmentChooses) {
    const auto ours = run_cli_with_prefix("env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT",
                                          "bench --model gpt-tiny --steps 1 --warmup 0");
    ASSERT_EQ(ours.exit_code, 0) << ours.output;
    EXPECT_NE(ours.output.find("OpenMP waiting passive (upcycle's default)"), std::string::npos)
        << ours.output;
    const auto theirs = run_cli_with_prefix("env OMP_WAIT_POLICY=active",
                                            "bench --model gpt-tiny --steps 1 --warmup 0");
    ASSERT_EQ(theirs.exit_code, 0) << theirs.output;
    EXPECT_NE(theirs.output.find("OpenMP waiting active (OMP_WAIT_POLICY from the environment)"),
              std::string::npos)
        << theirs.output;
}

// bench-moe times every phase of one MoE layer; the shares add up to the layer, the expert
// phases report their achieved rate, and a tight capacity drops assignments.
TEST_F(Cli, BenchMoeTimesEveryPhaseOfTheLayer) {
    const auto r = run_cli(
        "bench-moe --tokens 256 --channels 32 --experts 4 --k 2 "
        "--capacity-factor 0.5 --steps 2 --warmup 1 --json");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const auto json = nlohmann::json::parse(r.output);
    const auto& phases = json.at("phases");
    ASSERT_EQ(phases.size(), 8u);
    double share = 0, seconds = 0;
    for (const auto& p : phases) {
        EXPECT_GT(p.at("median_seconds").get<double>(), 0.0) << p.dump();
        share += p.at("share").get<double>();
        seconds += p.at("median_seconds").get<double>();
    }
    EXPECT_NEAR(share, 1.0, 1e-9);
    EXPECT_NEAR(seconds, json.at("layer_seconds").get<double>(), 1e-12);
    EXPECT_EQ(phases[2].at("phase"), "experts forward");
    EXPECT_GT(phases[2].at("tflops").get<double>(), 0.0);
    // capacity ⌈2·256·0.5/4⌉ = 64 per expert: at most 256 of the 512 wanted assignments kept
    EXPECT_LE(json.at("assignments_kept").get<int>(), 256);
    EXPECT_GE(json.at("dropped_fraction").get<double>(), 0.5);
}

}  // namespace
}  // namespace upcycle
