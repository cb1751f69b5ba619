// Checkpoint validation on a safetensors file already read: the stored config decides which
// tensors are expected, so a forged config must be refused before it makes us build anything.
#include "core/checkpoint.h"

#include <gtest/gtest.h>

#include <string>

#include "core/errors.h"
#include "core/tensor.h"

namespace upcycle {
namespace {

RunConfig tiny_config() {
    RunConfig c;
    c.name = "tiny";
    c.model.context = 4;
    c.model.channels = 4;
    c.model.layers = 2;
    c.model.heads = 1;
    c.data.source = DataSource::Synthetic;
    return c;
}

// A checkpoint file holding (zero) weights for `weights_of` and `stored` as its config.
SafetensorsFile checkpoint_file(const RunConfig& stored, const ModelConfig& weights_of) {
    SafetensorsFile file;
    for (const auto& [name, shape] : expected_checkpoint_tensors(weights_of, false)) {
        file.order.push_back(name);
        file.tensors[name] = HostTensor{shape, std::vector<float>(shape_numel(shape))};
    }
    file.metadata = {{"upcycle.config", to_json(stored).dump()},
                     {"upcycle.step", "3"},
                     {"upcycle.rng.data", "1 2 3 4"},
                     {"upcycle.tokens", "24"},
                     {"upcycle.flops", "1000"},
                     {"upcycle.seconds", "0.5"}};
    return file;
}

std::string error_of(const SafetensorsFile& file) {
    try {
        checkpoint_from_safetensors(file, "ckpt.safetensors");
    } catch (const UserError& e) {
        return e.what();
    }
    return "";
}

TEST(Checkpoint, FromSafetensorsReadsConfigStateAndTensors) {
    const RunConfig config = tiny_config();
    const Checkpoint ckpt =
        checkpoint_from_safetensors(checkpoint_file(config, config.model), "ckpt.safetensors");
    EXPECT_EQ(to_json(ckpt.config), to_json(config));
    EXPECT_EQ(ckpt.state.step, 3);
    EXPECT_EQ(ckpt.state.tokens, 24);
    EXPECT_FALSE(ckpt.has_optimizer);
    EXPECT_EQ(ckpt.file.order.size(), expected_checkpoint_tensors(config.model, false).size());
}

// Found with fuzz/fuzz_safetensors.cpp: a config stored in a small file claiming a million
// experts made loading build a four-million-entry tensor layout before it found the mismatch
// (a huge model: out of memory or a hang); channels near 2^31 overflowed int64 tensor sizes
// (UBSan). Both are refused first, by parameter count against the floats in the file.
TEST(Checkpoint, ConfigWithMoreParametersThanTheFileIsRefusedFirst) {
    const RunConfig real = tiny_config();
    RunConfig experts = real;
    experts.model.moe.experts = 1000000;
    experts.model.moe.k = 1;
    const auto e = error_of(checkpoint_file(experts, real.model));
    EXPECT_NE(e.find("ckpt.safetensors: 'upcycle.config': describes a model of"), std::string::npos)
        << e;
    EXPECT_NE(e.find("E=1000000"), std::string::npos) << e;
    EXPECT_NE(e.find("but the file holds"), std::string::npos) << e;

    RunConfig channels = real;
    channels.model.channels = 2147483647;
    const auto c = error_of(checkpoint_file(channels, real.model));
    EXPECT_NE(c.find("'upcycle.config': describes a model of"), std::string::npos) << c;
    EXPECT_NE(c.find("C=2147483647"), std::string::npos) << c;
}

TEST(Checkpoint, ConfigOfADifferentModelOfTheSameSizeStillNamesTheTensors) {
    const RunConfig real = tiny_config();
    RunConfig other = real;
    other.model.layers = 1;  // fewer parameters than the file: passes the count, not the names
    const auto e = error_of(checkpoint_file(other, real.model));
    EXPECT_NE(e.find("checkpoint tensors do not match the model"), std::string::npos) << e;
    EXPECT_NE(e.find("unexpected: blocks.1."), std::string::npos) << e;
}

}  // namespace
}  // namespace upcycle
