#pragma once
// The `upcycle` verbs. Each registers its subcommand and options on the CLI11 app and
// returns the function that runs it (exit code).
#include <functional>

#include <CLI/CLI.hpp>

namespace upcycle::cli {

using Command = std::function<int()>;

Command add_train_command(CLI::App& app);
Command add_eval_command(CLI::App& app);
Command add_inspect_command(CLI::App& app);
Command add_bench_command(CLI::App& app);
Command add_bench_moe_command(CLI::App& app);
Command add_surgery_command(CLI::App& app);
Command add_import_command(CLI::App& app);
Command add_export_command(CLI::App& app);
Command add_status_command(CLI::App& app);
Command add_query_command(CLI::App& app);
Command add_run_command(CLI::App& app);
Command add_results_command(CLI::App& app);
Command add_plot_command(CLI::App& app);
Command add_run_trial_command(CLI::App& app);
Command add_collect_command(CLI::App& app);

}  // namespace upcycle::cli
