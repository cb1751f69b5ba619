// upcycle run-trial HASH --runs DIR [--device cpu|cuda[:N]]: runs one trial of a sweep in its
// folder DIR/HASH/ without the results database — what each array task of a SLURM job does.
// The folder's trial.json (written by `upcycle run --executor slurm`) says what to run; the
// trial's checkpoints and log.jsonl go beside it, and result.json, written last and atomically,
// says how it ended, for `upcycle collect` on the submitting host. A checkpoint already there
// is resumed; SIGTERM (SLURM's time limit, scancel) or SIGUSR1 (which mpirun passes on to its
// ranks) checkpoints and stops. Started as several
// ranks (`srun -n N`, `mpirun -np N`), the ranks train the trial together (data parallel, and
// expert parallel where the config asks): rank 0 prepares the folder, prints and writes.
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdlib>

#include <fmt/format.h>

#include "core/checkpoint.h"
#include "core/comm.h"
#include "core/errors.h"
#include "kernels/backend_factory.h"
#include "kernels/comm_factory.h"
#include "runner/commands.h"
#include "runner/executor.h"
#include "runner/progress.h"
#include "runner/trial_result.h"
#include "runner/trial_setup.h"
#include "runner/trial_spec.h"

namespace upcycle::cli {

namespace {

// 128 + SIGTERM, as a shell reports a process ended by it: SLURM sees a stopped task
constexpr int kStoppedExitCode = 143;
constexpr std::size_t kShortHash = 16;

std::atomic<bool> g_stop_trial{false};
extern "C" void request_trial_stop(int) { g_stop_trial.store(true); }

struct RunTrialArgs {
    std::string hash;
    std::filesystem::path runs_dir;
    std::string device = "cpu";
};

std::string host_name() {
    char host[256] = {0};
    if (gethostname(host, sizeof(host) - 1) != 0) return "unknown";
    return host;
}

std::string env_or_empty(const char* name) {
    const char* value = std::getenv(name);
    return value ? value : "";
}

// The SLURM job this task is, "ARRAYJOB_TASK" ("" outside SLURM).
std::string slurm_job() {
    const std::string array = env_or_empty("SLURM_ARRAY_JOB_ID");
    if (!array.empty()) return array + "_" + env_or_empty("SLURM_ARRAY_TASK_ID");
    return env_or_empty("SLURM_JOB_ID");
}

// The parent's FLOPs and seconds: from the spec when it had finished at submission, else from
// its result.json (its task finished before this one could start: afterok).
TrialParent trial_parent(const TrialSpecParent& p, const std::filesystem::path& dir) {
    const auto checkpoint = (dir / p.checkpoint).lexically_normal();
    TrialParent parent{planned_trial(p.hash, p.config), checkpoint, p.flops.value_or(0),
                       p.seconds.value_or(0)};
    if (!p.flops || !p.seconds) {
        const auto parent_dir = checkpoint.parent_path();
        if (!std::filesystem::exists(trial_result_path(parent_dir))) {
            throw UserError(trial_result_path(parent_dir).string(), "",
                            fmt::format("the parent trial {} has not finished (no result here)",
                                        p.hash.substr(0, 12)));
        }
        const TrialResult result = read_trial_result(parent_dir);
        if (!result.done) {
            throw UserError(trial_result_path(parent_dir).string(), "status",
                            "the parent trial failed: " + result.error);
        }
        parent.flops = result.finished.end.flops - result.origin.flops;
        parent.seconds = result.finished.end.seconds - result.origin.seconds;
    }
    if (!std::filesystem::exists(checkpoint)) {
        throw UserError(checkpoint.string(), "parent.checkpoint",
                        "the parent's checkpoint is not there");
    }
    return parent;
}

int run_trial_in_folder(const TrialSpec& spec, const std::filesystem::path& dir, Backend& backend,
                        Communicator& ranks, cli::Progress& progress) {
    const PlannedTrial planned = planned_trial(spec.hash, spec.config);
    const std::string label = to_string(planned.method) + "-" + spec.hash.substr(0, 12);
    const bool lead = ranks.rank() == 0;
    const auto note = [&](const std::string& line) {
        if (lead) progress.note(line);
    };
    nlohmann::json provenance(make_provenance(backend));
    if (ranks.size() > 1) provenance["ranks"] = ranks.size();
    if (!slurm_job().empty()) provenance["slurm_job"] = slurm_job();
    TrialResult result;
    result.hash = spec.hash;
    result.host = host_name();

    if (const auto from = parent_checkpoint(planned)) {
        if (!lead) return 0;  // one evaluation, on rank 0
        note(fmt::format("{}: the parent is {} (pretrain.from): evaluating it", label, from->path));
        const TrainSummary summary =
            adopt_parent_checkpoint(*from, trial_run_config(planned), dir, backend);
        result.done = true;
        result.finished = finished_trial(summary, true, summary.checkpoint, provenance);
        write_trial_result(dir, result);
        note(label + " done");
        return 0;
    }

    std::optional<TrialParent> parent;
    if (planned.method != Method::Pretrain) {
        if (!spec.parent) {
            throw UserError(trial_spec_path(dir).string(), "parent",
                            "missing; a continuation needs its parent");
        }
        parent = trial_parent(*spec.parent, dir);
    }
    // rank 0 makes the folder's files (the surgery's init checkpoint, an untrusted checkpoint
    // removed) before the other ranks read them
    std::optional<TrialSetup> prepared;
    if (lead) {
        prepared = prepare_trial(planned, parent, dir, backend);
        if (const auto found = find_resumable_checkpoint(*prepared);
            found && !found->missing.empty()) {
            note(
                fmt::format("{}: {} is at step {} but {} {}; a checkpoint is trusted only "
                            "with its records, so the trial starts over",
                            label, found->checkpoint.string(), found->at.step, found->log.string(),
                            found->missing));
            std::filesystem::remove(found->checkpoint);
            std::filesystem::remove(found->log);
        }
    }
    ranks.barrier();
    if (!lead) prepared = prepare_trial(planned, parent, dir, backend);
    TrialSetup& setup = *prepared;
    setup.options.stop_requested = &g_stop_trial;
    setup.options.communicator = &ranks;
    TrainObserver observer;
    observer.on_message = [&](const std::string& text) { progress.note(label + ": " + text); };
    observer.on_step = [&](const StepRecord& r) { progress.update(step_line(label, r, setup)); };
    observer.on_checkpoint = [&](const std::filesystem::path&, int64_t step) {
        progress.note(fmt::format("{}: checkpoint written at step {}", label, step));
    };
    observer.on_milestone = [&](const Milestone& m, const EvalRecord& r) {
        progress.note(fmt::format("{} budget {:g}% reached at step {}: val_loss {:.4f}", label,
                                  m.percent, r.step, r.result.loss));
    };
    note(fmt::format(
        "{} started on {}{}{}", label, result.host,
        slurm_job().empty() ? "" : " (slurm job " + slurm_job() + ")",
        ranks.size() > 1 ? fmt::format(" on {} ranks ({})", ranks.size(), ranks.name()) : ""));
    const TrainSummary summary = train(backend, setup.run, setup.options, observer);
    if (!summary.completed) {
        note(fmt::format("{} stopped at step {}: submitted again, it resumes from its checkpoint",
                         label, summary.state.step));
        return kStoppedExitCode;
    }
    if (!lead) return 0;
    result.done = true;
    result.origin = setup.origin;
    result.finished = finished_trial(summary, planned.method == Method::Pretrain,
                                     checkpoint_path(dir), provenance);
    write_trial_result(dir, result);
    note(label + " done");
    return 0;
}

int run_run_trial(const RunTrialArgs& args) {
    if (args.hash.size() < kShortHash ||
        args.hash.find_first_not_of("0123456789abcdef") != std::string::npos) {
        throw UserError("", "HASH",
                        fmt::format("expected a trial's hash (at least {} hex digits), got '{}'",
                                    kShortHash, args.hash));
    }
    const auto dir = trial_directory(args.runs_dir, args.hash);
    const TrialSpec spec = read_trial_spec(dir);
    if (spec.hash.rfind(args.hash, 0) != 0) {
        throw UserError(trial_spec_path(dir).string(), "hash",
                        fmt::format("is {}, not the trial {} asked for", spec.hash, args.hash));
    }
    // the launcher's ranks (one without a launcher), over the transport of this backend
    auto backend = make_backend(args.device);
    const auto ranks = make_communicator(*backend, launch_environment());
    const bool lead = ranks->rank() == 0;
    cli::Progress progress("");
    // every rank reads the same verdict before rank 0 may remove an earlier failure's result
    const bool already_done = [&] {
        if (!std::filesystem::exists(trial_result_path(dir))) return false;
        const TrialResult previous = read_trial_result(dir);
        return previous.done && previous.hash == spec.hash;
    }();
    if (already_done) {
        if (lead) {
            progress.note(fmt::format("trial {} is already done ({}); nothing to do",
                                      spec.hash.substr(0, 12), trial_result_path(dir).string()));
        }
        return 0;
    }
    ranks->barrier();
    if (lead) std::filesystem::remove(trial_result_path(dir));  // an earlier failure: try again
    std::signal(SIGTERM, request_trial_stop);
    std::signal(SIGINT, request_trial_stop);
    std::signal(SIGUSR1, request_trial_stop);
    auto record_failure = [&](const std::string& error) {
        TrialResult failed;
        failed.hash = spec.hash;
        failed.host = host_name();
        failed.error = error;
        write_trial_result(dir, failed);
    };
    try {
        return run_trial_in_folder(spec, dir, *backend, *ranks, progress);
    } catch (const std::exception& e) {
        record_failure(ranks->size() == 1 ? e.what()
                                          : fmt::format("rank {} of {}: {}", ranks->rank(),
                                                        ranks->size(), e.what()));
        if (ranks->size() == 1) throw;     // main reports it
        end_job_after_failure(*ranks, e);  // the others may wait for this rank in a collective
    }
}

}  // namespace

Command add_run_trial_command(CLI::App& app) {
    auto args = std::make_shared<RunTrialArgs>();
    auto* sub = app.add_subcommand(
        "run-trial",
        "Run one trial in its folder without the database (what a SLURM array task does)");
    sub->add_option("hash", args->hash, "the trial's hash (or its first 16 hex digits)")
        ->required();
    sub->add_option("--runs", args->runs_dir, "the runs folder holding the trial's folder")
        ->required();
    sub->add_option("--device", args->device, "cpu | cuda[:N]")->capture_default_str();
    return [args] { return run_run_trial(*args); };
}

}  // namespace upcycle::cli
