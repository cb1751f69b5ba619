#pragma once
// upcycle bench --plan: the communication plan of a preset model (core/parallel/
// communication_plan.h) printed for its dense form and its MoE form, side by side.
#include <string>

namespace upcycle::cli {

struct BenchPlanArgs {
    std::string model = "gpt-124m";
    int batch = 0;        // global; 0: the preset's batch per rank × ranks
    int micro_batch = 0;  // per rank; 0: the rank's whole share
    int ranks = 1;
    int expert_parallel = 1;
    int experts = 8;  // the MoE form's E (every other block), k, capacity factor
    int k = 2;
    double capacity_factor = 1.25;
    std::string router = "topk";
    double link_gbytes_per_second = 50;  // per rank, each direction
    double tflops = 400;                 // achieved per rank
    bool json = false;
};

int print_communication_plan(const BenchPlanArgs& args);

}  // namespace upcycle::cli
