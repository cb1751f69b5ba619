#include "runner/collect.h"

#include <unistd.h>

#include <set>

#include <fmt/format.h>

#include "core/errors.h"
#include "core/train.h"
#include "core/train_log.h"
#include "runner/executor.h"
#include "runner/trial_recorder.h"
#include "runner/trial_result.h"

namespace upcycle {

namespace {

std::string label_of(const TrialRecord& t) {
    return to_string(t.method) + "-" + t.hash.substr(0, 12);
}

}  // namespace

bool record_trial_result(Store& store, const TrialRecord& trial, const std::filesystem::path& dir,
                         const std::function<void(const std::string&)>& say) {
    const TrialResult result = read_trial_result(dir);
    const auto file = trial_result_path(dir);
    if (result.hash != trial.hash) {
        throw UserError(file.string(), "hash",
                        fmt::format("belongs to trial {}, not to {} whose folder this is",
                                    result.hash.substr(0, 12), trial.hash.substr(0, 12)));
    }
    if (!result.host.empty()) store.set_trial_host(trial.id, result.host);
    if (!result.done) {
        store.fail(trial.id, result.error);
        say(fmt::format("{} FAILED{}: {}", label_of(trial),
                        result.host.empty() ? "" : " on " + result.host, result.error));
        return false;
    }
    const FinishedTrial& f = result.finished;
    std::error_code ec;
    const auto bytes = std::filesystem::file_size(f.checkpoint, ec);
    if (ec || static_cast<int64_t>(bytes) != f.checkpoint_bytes) {
        throw UserError(
            file.string(), "checkpoint",
            fmt::format("names {} of {} bytes, but {}", f.checkpoint.string(), f.checkpoint_bytes,
                        ec ? "it is not there" : fmt::format("it has {}", bytes)));
    }
    TrialRecorder recorder(store, trial.id, result.origin, [&](const std::string&) {});
    recorder.ingest(read_train_log(log_path(dir), f.end.step));
    recorder.finish(f);
    say(fmt::format("{} done{} (step {})", label_of(trial),
                    result.host.empty() ? "" : " on " + result.host, f.end.step));
    return true;
}

namespace {

// The error of a trial whose job ended without a result.
std::string died_error(const Store& store, const TrialRecord& trial, const SlurmJobRecord& job,
                       const SlurmJobState& state) {
    if (trial.parent) {
        const auto parent = store.trial(*trial.parent);
        if (parent && parent->status == TrialStatus::Failed) {
            return "blocked: its parent " + label_of(*parent) + " failed";
        }
    }
    return fmt::format(
        "{}{} ended {}{}{} without a result (its output: {}); `upcycle run --executor slurm` "
        "submits it again, resuming from its checkpoint",
        kSlurmJobDied, job.job_id, state.state,
        state.reason.empty() ? "" : " (" + state.reason + ")",
        state.node.empty() ? "" : " on " + state.node, job.output);
}

}  // namespace

CollectSummary collect_results(Store& store, const std::optional<std::string>& sweep_name,
                               const std::filesystem::path& runs_dir,
                               const std::function<void(const std::string&)>& say) {
    CollectSummary summary;
    const auto jobs = store.open_slurm_jobs(sweep_name);
    std::vector<std::string> ids;
    for (const auto& j : jobs) ids.push_back(j.job_id);
    // SLURM first, the folders second: a job that has left the queue wrote its result before
    const SlurmJobStates states = query_slurm_jobs(ids);
    for (const auto& note : states.notes) say(note);

    std::set<int64_t> held_now;
    for (const auto& job : jobs) {
        const auto trial = store.trial(job.trial_id);
        UPCYCLE_ASSERT(trial.has_value(), "a job's trial is in the store");
        const auto dir = trial_directory(job.runs_dir, trial->hash);
        const auto known = states.jobs.find(job.job_id);
        if (std::filesystem::exists(trial_result_path(dir))) {
            const std::string state = known != states.jobs.end() ? known->second.state : "";
            try {
                if (record_trial_result(store, *trial, dir, say))
                    ++summary.done;
                else
                    ++summary.failed;
            } catch (const UserError& e) {
                store.fail(trial->id, e.what());
                say(fmt::format("{} FAILED: {}", label_of(*trial), e.what()));
                ++summary.failed;
            }
            store.end_slurm_job(job.job_id, "result", state.empty() ? "ENDED" : state,
                                known != states.jobs.end() ? known->second.reason : "");
            continue;
        }
        if (known != states.jobs.end() && slurm_state_is_active(known->second.state)) {
            store.update_slurm_job(job.job_id, known->second.state, known->second.reason,
                                   known->second.node);
            summary.active.emplace_back(job, known->second);
            held_now.insert(job.trial_id);
            ++summary.held;
            continue;
        }
        if (!states.squeue_found) {  // cannot tell here whether it still runs
            summary.active.emplace_back(job, SlurmJobState{job.state, job.reason, job.node});
            held_now.insert(job.trial_id);
            ++summary.held;
            continue;
        }
        const SlurmJobState ended =
            known != states.jobs.end()
                ? known->second
                : SlurmJobState{"UNKNOWN",
                                fmt::format("no record left in SLURM, last seen {}: cancelled "
                                            "while pending, or ended before SLURM's MinJobAge "
                                            "and there is no accounting",
                                            job.state),
                                job.node};
        const std::string error = died_error(store, *trial, job, ended);
        store.fail(trial->id, error);
        store.end_slurm_job(job.job_id, "died", ended.state, ended.reason);
        say(fmt::format("{} FAILED: {}", label_of(*trial), error));
        ++summary.died;
    }

    // Finished folders of trials the store does not have done (a deleted database, a result
    // that came after its job was given up): the result is the trial's, whoever ran it.
    for (const auto& trial : store.trials(sweep_name)) {
        if (trial.status == TrialStatus::Done || held_now.count(trial.id)) continue;
        const auto job = store.latest_slurm_job(trial.id);
        const auto dir =
            trial_directory(job ? std::filesystem::path(job->runs_dir) : runs_dir, trial.hash);
        if (!std::filesystem::exists(trial_result_path(dir))) continue;
        try {
            const TrialResult result = read_trial_result(dir);
            if (!result.done || result.hash != trial.hash) continue;
            if (record_trial_result(store, trial, dir, say)) ++summary.done;
        } catch (const UserError& e) {
            say(fmt::format("{}: not taken in: {}", label_of(trial), e.what()));
        }
    }
    return summary;
}

void collect_if_cluster_jobs(const std::filesystem::path& db,
                             const std::optional<std::string>& sweep_name) {
    {
        const Store reader(db, Store::Mode::ReadOnly);
        if (reader.open_slurm_jobs(sweep_name).empty()) return;
    }
    const auto folder = db.has_parent_path() ? db.parent_path() : std::filesystem::path(".");
    if (::access(db.c_str(), W_OK) != 0 || ::access(folder.c_str(), W_OK) != 0) {
        fmt::print(stderr,
                   "upcycle: the database is read-only here: results of SLURM jobs are not "
                   "collected (run `upcycle collect` where it can be written)\n");
        return;
    }
    Store store(db, Store::Mode::ReadWrite);
    collect_results(store, sweep_name, folder / "runs",
                    [](const std::string& line) { fmt::print(stderr, "collect: {}\n", line); });
}

}  // namespace upcycle
