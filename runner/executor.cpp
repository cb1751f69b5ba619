#include "runner/executor.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <omp.h>

#include "core/checkpoint.h"
#include "core/errors.h"
#include "core/flops.h"
#include "core/process_liveness.h"
#include "core/sha256.h"
#include "core/surgery/continuation.h"
#include "core/sweep/sweep.h"
#include "core/task/task.h"
#include "core/train.h"
#include "core/train_log.h"
#include "core/train_policy.h"
#include "kernels/backend_factory.h"
#include "runner/collect.h"
#include "runner/format.h"
#include "runner/progress.h"
#include "runner/store/store.h"
#include "runner/trial_on_ranks.h"
#include "runner/trial_recorder.h"
#include "runner/trial_result.h"
#include "runner/trial_setup.h"
#include "runner/trial_spec.h"

namespace upcycle {

namespace {

// Submitted by `run --executor slurm`: its worker is "slurm:JOB".
bool held_by_slurm(const TrialRecord& t) { return t.worker.rfind("slurm:", 0) == 0; }

std::string host_name() {
    char host[256] = {0};
    if (gethostname(host, sizeof(host) - 1) != 0) return "unknown";
    return host;
}

// The latest progress of a running trial, set by the training thread at each logged step
// and read by the heartbeat thread, which writes it to trials.step/flops/seconds/tokens.
class SharedProgress {
public:
    void set(const TrialProgress& progress) {
        std::lock_guard<std::mutex> lock(mutex_);
        progress_ = progress;
    }
    std::optional<TrialProgress> get() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return progress_;
    }

private:
    mutable std::mutex mutex_;
    std::optional<TrialProgress> progress_;
};

// Writes the heartbeat (with the trial's progress) from its own thread and connection, so a
// long step cannot look like a dead worker. If the store says another worker has taken the
// trial, it asks training to stop.
class Heartbeat {
public:
    Heartbeat(const std::filesystem::path& db, int64_t trial, std::string worker, double period,
              const SharedProgress& progress, std::atomic<bool>& lost)
        : thread_([this, db, trial, worker = std::move(worker), period, &progress, &lost] {
              Store store(db, Store::Mode::ReadWrite);
              std::unique_lock<std::mutex> lock(mutex_);
              while (!done_) {
                  if (cv_.wait_for(lock, std::chrono::duration<double>(period),
                                   [&] { return done_; }))
                      break;
                  try {
                      if (!store.heartbeat(trial, worker, progress.get())) lost = true;
                  } catch (const std::exception&) {
                      // a busy database: try again next period
                  }
              }
          }) {}
    ~Heartbeat() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            done_ = true;
        }
        cv_.notify_all();
        thread_.join();
    }

private:
    std::mutex mutex_;
    std::condition_variable cv_;
    bool done_ = false;
    std::thread thread_;
};

class Worker {
public:
    Worker(const ExecutorOptions& options, int64_t sweep_id, std::string id,
           const std::atomic<bool>& stop)
        : options_(options),
          sweep_id_(sweep_id),
          id_(std::move(id)),
          host_(host_name()),
          stop_(stop),
          store_(options.db, Store::Mode::ReadWrite),
          backend_(make_backend(options.device)),
          progress_("[" + id_ + "] ") {}

    // Claims and runs trials until none is left, a stop is requested, or an internal error
    // on a device leaves this worker's device in doubt.
    void run() {
        while (!stop_.load()) {
            take_over_dead_local_workers();
            auto claimed = store_.claim_next(id_, host_, options_.stale_after_seconds, sweep_id_);
            if (!claimed) {
                const auto trials = store_.trials_of_sweep(sweep_id_);
                // a trial held by a SLURM job is not waited for: only `collect` ends its run
                const bool any_running = std::any_of(trials.begin(), trials.end(), [](auto& t) {
                    return t.status == TrialStatus::Running && !held_by_slurm(t);
                });
                if (!any_running) return;  // nothing runnable now or later
                say_what_is_awaited(trials);
                std::this_thread::sleep_for(std::chrono::seconds(1));  // wait for a parent
                continue;
            }
            awaited_.clear();
            if (run_claimed(*claimed) != Outcome::Finished) return;
        }
    }

private:
    enum class Outcome { Finished, DeviceInDoubt, StoreUnwritable };

    // Records the failure; false when the store cannot take it (the disk that failed the trial
    // may be full): this worker then stops, and since its process ends, the next run takes the
    // trial (still `running`) over at once.
    bool record_failure(const TrialRecord& record, const std::string& error) {
        try {
            store_.fail(record.id, error);
            return true;
        } catch (const std::exception& e) {
            log(fmt::format("worker {} stops: cannot record the failure of {} ({})", id_,
                            label_of(record), e.what()));
            return false;
        }
    }

    void log(const std::string& text) { progress_.note(text); }

    static std::string label_of(const TrialRecord& t) {
        return to_string(t.method) + "-" + t.hash.substr(0, 12);
    }

    // A trial running on a worker of this host whose process is gone (killed, crashed) cannot
    // be heartbeating: it is taken over now rather than after the heartbeat timeout, which
    // stays the rule for workers on other hosts (their PIDs mean nothing here).
    void take_over_dead_local_workers() {
        for (const auto& t : store_.trials_of_sweep(sweep_id_)) {
            if (t.status != TrialStatus::Running || t.host != host_ || t.worker == id_) continue;
            const auto pid = trailing_pid(t.worker, ':');
            if (!pid || process_exists(*pid)) continue;
            if (store_.release(t.id, t.worker)) {
                log(
                    fmt::format("{}: its worker {} is gone (no process {} on this host); "
                                "taking it over",
                                label_of(t), t.worker, *pid));
            }
        }
    }

    // While nothing is claimable but trials run elsewhere, says once what is awaited (and
    // again when that changes), so a wait is never silent.
    void say_what_is_awaited(const std::vector<TrialRecord>& trials) {
        std::vector<std::string> running;
        for (const auto& t : trials) {
            if (t.status != TrialStatus::Running || t.worker == id_ || held_by_slurm(t)) continue;
            const std::string age =
                t.heartbeat_age_seconds
                    ? fmt::format(", heartbeat {:.0f} s ago", *t.heartbeat_age_seconds)
                    : "";
            running.push_back(fmt::format("{} (worker {}{})", label_of(t), t.worker, age));
        }
        std::string awaited;
        for (const auto& r : running) awaited += (awaited.empty() ? "" : ", ") + r;
        if (awaited == awaited_) return;
        awaited_ = awaited;
        log(
            fmt::format("waiting for {} trial(s) running on other workers: {}; a trial whose "
                        "worker stays silent for {:g} s is taken over",
                        running.size(), awaited, options_.stale_after_seconds));
    }

    Outcome run_claimed(const TrialRecord& record) {
        const std::string label = label_of(record);
        log(fmt::format("{} started (attempt {})", label, record.attempts));
        std::atomic<bool> lost{false};
        SharedProgress progress;
        try {
            Heartbeat heartbeat(options_.db, record.id, id_, options_.heartbeat_seconds, progress,
                                lost);
            const bool completed = run_trial(record, label, progress, lost);
            if (completed) {
                log(label + " done");
            } else if (lost.load()) {
                log(label + " was taken over by another worker; leaving it");
            } else {
                store_.release(record.id);
                log(label + " stopped; it resumes from its checkpoint next time");
            }
        } catch (const UserError& e) {
            // bad input: this trial fails, the sweep goes on with the others
            log(label + " FAILED: " + e.what());
            if (!record_failure(record, e.what())) return Outcome::StoreUnwritable;
        } catch (const std::exception& e) {
            log(label + " FAILED: " + e.what());
            if (!record_failure(record, e.what())) return Outcome::StoreUnwritable;
            // A failed CUDA call may leave the context unusable, and every later trial on it
            // would fail too: this worker stops, and its device's trials wait for the next run.
            if (backend_->kind() != DeviceKind::CPU) {
                log(
                    fmt::format("worker {} stops after an internal error on its device; run the "
                                "sweep again to go on with the remaining trials",
                                id_));
                return Outcome::DeviceInDoubt;
            }
        }
        return Outcome::Finished;
    }

    // Returns whether the trial completed.
    bool run_trial(const TrialRecord& record, const std::string& label, SharedProgress& progress,
                   std::atomic<bool>& lost) {
        const PlannedTrial planned = planned_trial(record.hash, record.config);
        const auto dir = trial_directory(options_.runs_dir, record.hash);
        if (const auto from = parent_checkpoint(planned)) {
            log(fmt::format("{}: the parent is {} (pretrain.from, sunk cost {}): evaluating it",
                            label, from->path, format_flops(from->sunk_flops)));
            const TrainSummary summary =
                adopt_parent_checkpoint(*from, trial_run_config(planned), dir, *backend_);
            TrialRecorder recorder(store_, record.id, TrainingState{},
                                   [&](const std::string& text) { log(label + " " + text); });
            recorder.finish(summary, true, summary.checkpoint,
                            nlohmann::json(make_provenance(*backend_)));
            return true;
        }
        if (options_.ranks_per_trial > 1) return run_on_ranks(record, lost);

        std::optional<TrialParent> parent;
        if (planned.method != Method::Pretrain) {
            const auto p = store_.trial(record.parent.value());
            UPCYCLE_ASSERT(p.has_value(), "a continuation's parent is in the store");
            parent = TrialParent{planned_trial(p->hash, p->config),
                                 checkpoint_path(trial_directory(options_.runs_dir, p->hash)),
                                 p->flops, p->seconds};
        }
        TrialSetup setup = prepare_trial(planned, parent, dir, *backend_);
        TrainOptions& train_options = setup.options;
        const TrainingState& origin = setup.origin;
        // stop on Ctrl-C, or when another worker has taken the trial over
        std::atomic<bool> stop_training{false};
        train_options.stop_requested = &stop_training;

        TrialRecorder recorder(store_, record.id, origin,
                               [&](const std::string& text) { log(label + " " + text); });
        take_back_records(record, setup, recorder, label);
        TrainObserver observer = recorder.observer();
        observer.on_message = [&](const std::string& text) { log(label + ": " + text); };
        observer.on_step = [&, record_step = observer.on_step](const StepRecord& r) {
            if (stop_.load() || lost.load()) stop_training = true;
            record_step(r);
            progress.set({r.step, recorder.own_flops(r.flops), recorder.own_seconds(r.seconds),
                          r.tokens - origin.tokens});
            progress_.update(step_line(label, r, setup));
        };

        const TrainSummary summary = train(*backend_, setup.run, train_options, observer);
        recorder.flush();
        if (!summary.completed) return false;
        recorder.finish(summary, planned.method == Method::Pretrain, checkpoint_path(dir),
                        nlohmann::json(make_provenance(*backend_)));
        return true;
    }

    // --ranks-per-trial N: the trial runs as `mpirun -np N upcycle run-trial` from the trial.json
    // written into its folder, as on a cluster; its log and result.json are recorded here when
    // it ends (its progress prints as it goes). Returns whether it completed.
    bool run_on_ranks(const TrialRecord& record, const std::atomic<bool>& lost) {
        const auto dir = trial_directory(options_.runs_dir, record.hash);
        std::optional<TrialRecord> parent;
        if (record.parent) parent = store_.trial(*record.parent);
        write_trial_spec(dir, trial_spec_of(record, parent, options_.runs_dir));
        std::error_code ignored;
        std::filesystem::remove(trial_result_path(dir), ignored);  // an earlier attempt's
        // this worker's share of the cores, split among its ranks
        const LocalRanks ranks{options_.ranks_per_trial,
                               std::max(1, omp_get_max_threads() / options_.ranks_per_trial),
                               options_.device};
        const int status = run_trial_on_local_ranks(record.hash, options_.runs_dir, ranks,
                                                    [&] { return stop_.load() || lost.load(); });
        if (!std::filesystem::exists(trial_result_path(dir))) {
            if (stop_.load() || lost.load()) return false;  // stopped at a checkpoint
            throw std::runtime_error(fmt::format(
                "its {} ranks ended without a result (mpirun exit status {}); their output is "
                "above",
                ranks.ranks, status));
        }
        const TrialResult result = read_trial_result(dir);
        if (!result.done) throw UserError(trial_result_path(dir).string(), "", result.error);
        // its ranks said how it went; run_claimed says it is done
        return record_trial_result(store_, record, dir, [](const std::string&) {});
    }

    // The trial's directory may hold a checkpoint whose rows this store lacks: the database
    // was deleted or is another one on the same runs folder, or a kill fell between a
    // checkpoint and its rows. The log beside it gives them back. A checkpoint that its log
    // does not cover (a logged step or a budget evaluation missing) cannot be trusted for
    // what it would skip: its checkpoint and log are removed and the trial starts over.
    void take_back_records(const TrialRecord& record, const TrialSetup& setup,
                           TrialRecorder& recorder, const std::string& label) {
        const auto found = find_resumable_checkpoint(setup);
        if (!found) return;
        if (!found->missing.empty()) {
            log(
                fmt::format("{}: {} is at step {} but {} {}; a checkpoint is trusted only with "
                            "its records, so the trial starts over",
                            label, found->checkpoint.string(), found->at.step, found->log.string(),
                            found->missing));
            std::filesystem::remove(found->checkpoint);
            std::filesystem::remove(found->log);
            return;
        }
        const auto stored = store_.metrics(record.id, "train_loss").size();
        recorder.ingest(found->contents);
        if (stored < found->contents.steps.size()) {
            log(
                fmt::format("{}: the store lacked {} of the {} logged steps up to its checkpoint "
                            "(step {}); taken back from {}",
                            label, found->contents.steps.size() - stored,
                            found->contents.steps.size(), found->at.step, found->log.string()));
        }
    }

    const ExecutorOptions& options_;
    int64_t sweep_id_;
    std::string id_, host_;
    const std::atomic<bool>& stop_;
    Store store_;
    std::unique_ptr<Backend> backend_;
    cli::Progress progress_;
    std::string awaited_;  // what say_what_is_awaited last said
};

std::string read_file(const std::filesystem::path& path) {
    std::ifstream in(path);
    if (!in) throw UserError(path.string(), "", "cannot read the sweep file");
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

}  // namespace

std::filesystem::path trial_directory(const std::filesystem::path& runs_dir,
                                      const std::string& hash) {
    return runs_dir / hash.substr(0, 16);
}

RegisteredSweep register_sweep(const ExecutorOptions& options) {
    const SweepSpec spec = load_sweep(options.sweep_file, options.overrides);
    const auto trials = plan_sweep(spec);
    RegisteredSweep registered{spec.name, 0, static_cast<int64_t>(trials.size())};
    Store store(options.db, Store::Mode::ReadWrite);
    std::string yaml = read_file(options.sweep_file);
    for (const auto& o : options.overrides) yaml += "\n# --set " + o;
    registered.sweep_id = store.upsert_sweep(spec.name, yaml, sha256_hex(yaml),
                                             nlohmann::json{{"host", host_name()}});
    for (const auto& t : trials) {
        store.add_trial(
            registered.sweep_id, t.hash, t.method, t.config,
            t.parent_hash.empty() ? std::nullopt : std::optional<std::string>(t.parent_hash));
    }
    if (options.retry_failed) store.requeue_failed(registered.sweep_id);
    return registered;
}

ExecutorSummary summarize_sweep(const std::filesystem::path& db, const RegisteredSweep& sweep) {
    ExecutorSummary summary;
    summary.sweep = sweep.name;
    Store store(db, Store::Mode::ReadOnly);
    for (const auto& t : store.trials_of_sweep(sweep.sweep_id)) {
        ++summary.trials;
        if (t.status == TrialStatus::Done)
            ++summary.done;
        else if (t.status == TrialStatus::Failed)
            ++summary.failed;
        else if (t.status == TrialStatus::Running)
            ++summary.running;
        else
            ++summary.pending;
    }
    return summary;
}

ExecutorSummary run_sweep(const ExecutorOptions& options, const std::atomic<bool>& stop) {
    if (options.ranks_per_trial < 1) {
        throw UserError("", "--ranks-per-trial",
                        fmt::format("expected 1 or more, got {}", options.ranks_per_trial));
    }
    // Plan and register everything before any worker starts (and before any fork: no SQLite
    // connection or OpenMP pool may cross one).
    const RegisteredSweep registered = register_sweep(options);
    const int64_t sweep_id = registered.sweep_id;
    fmt::print(stderr, "upcycle run: sweep {} | {} trials | {} worker(s) | db {}\n",
               registered.name, registered.trials, options.workers, options.db.string());

    // workers share the cores: each gets its share of OpenMP threads
    const int threads = std::max(1, omp_get_num_procs() / std::max(1, options.workers));
    std::vector<pid_t> children;
    for (int w = 1; w < options.workers; ++w) {
        const pid_t pid = fork();
        if (pid < 0) throw std::runtime_error("fork failed");
        if (pid == 0) {
            int code = 0;
            try {
                omp_set_num_threads(threads);
                Worker worker(options, sweep_id, fmt::format("{}:{}", host_name(), getpid()), stop);
                worker.run();
            } catch (const std::exception& e) {
                fmt::print(stderr, "worker {}: {}\n", getpid(), e.what());
                code = 1;
            }
            _exit(code);
        }
        children.push_back(pid);
    }
    omp_set_num_threads(threads);
    {
        Worker worker(options, sweep_id, fmt::format("{}:{}", host_name(), getpid()), stop);
        worker.run();
    }
    for (const pid_t pid : children) {
        int status = 0;
        waitpid(pid, &status, 0);
    }

    ExecutorSummary summary = summarize_sweep(options.db, registered);
    summary.interrupted = stop.load();
    return summary;
}

}  // namespace upcycle
