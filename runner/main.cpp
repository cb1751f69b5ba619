// upcycle: sparse-upcycling experiments. `upcycle --help` lists the verbs.
#include <cstdio>
#include <exception>
#include <filesystem>
#include <map>

#include <CLI/CLI.hpp>

#include "core/errors.h"
#include "kernels/cpu/process_setup.h"
#include "runner/commands.h"

int main(int argc, char** argv) {
    // The OpenBLAS kernel set and the OpenMP wait policy are read when the libraries load:
    // this sets them and re-executes before anything else runs (kernels/cpu/process_setup.h).
    upcycle::prepare_process(argc, argv);

    CLI::App app{"upcycle: turn dense transformers into Mixture-of-Experts and compare"};
    app.require_subcommand(1);
    std::map<CLI::App*, upcycle::cli::Command> commands;
    auto add = [&](upcycle::cli::Command (*adder)(CLI::App&)) {
        const std::size_t before = app.get_subcommands({}).size();
        auto command = adder(app);
        commands[app.get_subcommands({}).at(before)] = std::move(command);
    };
    add(upcycle::cli::add_train_command);
    add(upcycle::cli::add_eval_command);
    add(upcycle::cli::add_inspect_command);
    add(upcycle::cli::add_bench_command);
    add(upcycle::cli::add_bench_moe_command);
    add(upcycle::cli::add_surgery_command);
    add(upcycle::cli::add_import_command);
    add(upcycle::cli::add_export_command);
    add(upcycle::cli::add_status_command);
    add(upcycle::cli::add_query_command);
    add(upcycle::cli::add_run_command);
    add(upcycle::cli::add_results_command);
    add(upcycle::cli::add_plot_command);
    add(upcycle::cli::add_run_trial_command);
    add(upcycle::cli::add_collect_command);

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        // --help and --version exit 0; a bad command line is a user error like any other (2),
        // not CLI11's own codes (105 for a missing file)
        return app.exit(e) == 0 ? 0 : 2;
    }
    try {
        for (const auto& [sub, command] : commands) {
            if (sub->parsed()) return command();
        }
    } catch (const upcycle::UserError& e) {
        std::fprintf(stderr, "upcycle: error: %s\n", e.what());
        return 2;
    } catch (const std::filesystem::filesystem_error& e) {
        // a folder that cannot be made, a full disk, permissions: the user's to fix; the
        // message names the path and the reason
        std::fprintf(stderr, "upcycle: error: %s\n", e.what());
        return 2;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "upcycle: internal error: %s\n", e.what());
        return 1;
    }
    return 0;
}
