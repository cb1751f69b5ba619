#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/config.h"
#include "core/errors.h"
#include "core/flops.h"
#include "core/parallel/communication_plan.h"
#include "runner/bench_plan.h"

namespace upcycle::cli {

namespace {

std::string megabytes(double bytes) { return fmt::format("{:.1f} MB", bytes / 1e6); }
std::string milliseconds(double seconds) { return fmt::format("{:.2f} ms", seconds * 1e3); }

nlohmann::json to_json(const CommunicationPlan& p) {
    return {{"parameters", p.parameters},
            {"examples_per_rank", p.examples_per_rank},
            {"passes_per_step", p.passes_per_step},
            {"moe_layers", p.moe_layers},
            {"compute_seconds", p.compute_seconds},
            {"all_reduce_bytes", p.all_reduce_bytes},
            {"all_reduce_seconds", p.all_reduce_seconds},
            {"expert_parameters", p.expert_parameters},
            {"sharded_all_reduce_bytes", p.sharded_all_reduce_bytes},
            {"all_to_all_bytes", p.all_to_all_bytes},
            {"all_to_all_seconds", p.all_to_all_seconds},
            {"step_over_compute", p.step_over_compute()}};
}

}  // namespace

int print_communication_plan(const BenchPlanArgs& args) {
    const ModelPreset& preset = find_model_preset(args.model);
    if (args.link_gbytes_per_second <= 0 || args.tflops <= 0) {
        throw UserError("", args.tflops <= 0 ? "--tflops" : "--link-gbps",
                        "expected a positive rate");
    }
    CommunicationPlanInput dense;
    dense.model = preset.model;
    dense.ranks = args.ranks;
    dense.global_batch = args.batch > 0 ? args.batch : preset.batch_size * args.ranks;
    dense.micro_batch = args.micro_batch;
    dense.link_bytes_per_second = args.link_gbytes_per_second * 1e9;
    dense.compute_flops_per_second = args.tflops * 1e12;
    CommunicationPlanInput moe = dense;
    moe.model.moe.experts = args.experts;
    moe.model.moe.k = args.k;
    moe.model.moe.capacity_factor = args.capacity_factor;
    moe.model.moe.eval_capacity_factor = args.capacity_factor;
    moe.model.moe.router = parse_choice<RouterKind>(args.router, "", "--router");
    moe.expert_parallel = args.expert_parallel;
    const CommunicationPlan dense_plan = plan_communication(dense);
    const CommunicationPlan moe_plan = plan_communication(moe);

    if (args.json) {
        nlohmann::json out{{"model", preset.name},
                           {"ranks", args.ranks},
                           {"expert_parallel", args.expert_parallel},
                           {"global_batch", dense.global_batch},
                           {"link_gbytes_per_second", args.link_gbytes_per_second},
                           {"tflops_per_rank", args.tflops},
                           {"dense", to_json(dense_plan)},
                           {"moe", to_json(moe_plan)}};
        out["moe"]["experts"] = args.experts;
        out["moe"]["router"] = args.router;
        out["moe"]["k"] = args.k;
        fmt::print("{}\n", out.dump(2));
        return 0;
    }
    fmt::print(
        "plan for {} ({}): global batch {} over {} rank(s), {} example(s) per rank in {} "
        "pass(es); expert-parallel size {}\n",
        preset.name, describe_model(preset.model), dense.global_batch, args.ranks,
        dense_plan.examples_per_rank, dense_plan.passes_per_step, args.expert_parallel);
    fmt::print(
        "rates: links {:g} GB/s per rank each way (--link-gbps), compute {:g} TFLOP/s achieved "
        "per rank (--tflops; an assumption, not a measurement: use a bench figure)\n\n",
        args.link_gbytes_per_second, args.tflops);
    const std::string moe_label =
        fmt::format("MoE E{} {}{} ({} blocks)", args.experts, args.router,
                    args.router == "topk" ? fmt::format(" k={}", args.k) : "", moe_plan.moe_layers);
    fmt::print("{:<28} {:>10} {:>12} {:>22} {:>22} {:>13}\n", "model", "parameters", "compute",
               "DP all-reduce", "EP all-to-all", "step/compute");
    for (const auto& [label, plan] :
         {std::pair{std::string("dense"), dense_plan}, std::pair{moe_label, moe_plan}}) {
        fmt::print("{:<28} {:>9.1f}M {:>12} {:>22} {:>22} {:>12.2f}×\n", label,
                   static_cast<double>(plan.parameters) / 1e6, milliseconds(plan.compute_seconds),
                   megabytes(plan.all_reduce_bytes) + " " + milliseconds(plan.all_reduce_seconds),
                   megabytes(plan.all_to_all_bytes) + " " + milliseconds(plan.all_to_all_seconds),
                   plan.step_over_compute());
    }
    if (args.expert_parallel > 1) {
        fmt::print(
            "with the experts sharded (each rank holding {} of {}; not built yet: today every rank "
            "keeps all of them), the MoE all-reduce would move {} ({})\n",
            args.experts / args.expert_parallel, args.experts,
            megabytes(moe_plan.sharded_all_reduce_bytes),
            milliseconds(moe_plan.sharded_all_reduce_bytes / dense.link_bytes_per_second));
    }
    fmt::print(
        "\nbytes are sent per rank per optimizer step: DP all-reduce = 2·(N−1)/N · parameters · 4 "
        "(ring, float32 gradients, experts included; ZeRO-1 moves the same); EP all-to-all = 4 "
        "per MoE block per pass · routed rows (tokens · k) · (M−1)/M · C · 4. Time = bytes / "
        "link rate; compute = training FLOPs (3 × forward, {}) / compute rate; no overlap "
        "assumed.\n",
        "core/flops.h");
    return 0;
}

}  // namespace upcycle::cli
