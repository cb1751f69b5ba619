#include "runner/executor.h"

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <omp.h>

#include "core/checkpoint.h"
#include "core/errors.h"
#include "core/surgery/scratch.h"
#include "core/surgery/upcycle.h"
#include "core/surgery/warmstart.h"
#include "core/sweep/sha256.h"
#include "core/sweep/sweep.h"
#include "core/train.h"
#include "kernels/backend_factory.h"
#include "runner/format.h"
#include "runner/progress.h"
#include "runner/store/store.h"

namespace upcycle {

namespace {

// Metric rows are written in batches of about this many (one transaction each).
constexpr std::size_t kMetricBatch = 256;
// A budget in seconds leaves train.steps at 0 in the plan; the run stops on its milestones.
constexpr int64_t kUnboundedSteps = int64_t{1} << 40;

std::string host_name() {
    char host[256] = {0};
    if (gethostname(host, sizeof(host) - 1) != 0) return "unknown";
    return host;
}

// An evaluation as stored: val_loss, val_accuracy and whatever else the task measured
// (a ViT's test_accuracy and few-shot probe accuracies at milestones and at the end).
nlohmann::json evaluation_metrics(const EvalResult& result) {
    nlohmann::json metrics{{"val_loss", result.loss}, {"val_accuracy", result.accuracy}};
    for (const auto& [key, value] : result.extra) metrics[key] = value;
    return metrics;
}

PlannedTrial planned_from(const TrialRecord& record) {
    PlannedTrial planned;
    planned.hash = record.hash;
    planned.method = record.method;
    planned.config = record.config;
    planned.parent_hash = record.parent_hash.value_or("");
    if (record.config.contains("budget")) {
        planned.milestones = record.config["budget"]["milestones"].get<std::vector<double>>();
        planned.horizon_percent = record.config["budget"]["horizon_percent"].get<double>();
    }
    return planned;
}

// Writes the heartbeat from its own thread and connection, so a long step cannot look like a
// dead worker. If the store says another worker has taken the trial, it asks training to stop.
class Heartbeat {
public:
    Heartbeat(const std::filesystem::path& db, int64_t trial, std::string worker, double period,
              std::atomic<bool>& lost)
        : thread_([this, db, trial, worker = std::move(worker), period, &lost] {
              Store store(db, Store::Mode::ReadWrite);
              std::unique_lock<std::mutex> lock(mutex_);
              while (!done_) {
                  if (cv_.wait_for(lock, std::chrono::duration<double>(period), [&] { return done_; })) break;
                  try {
                      if (!store.heartbeat(trial, worker)) lost = true;
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
    Worker(const ExecutorOptions& options, int64_t sweep_id, std::string id, const std::atomic<bool>& stop)
        : options_(options), sweep_id_(sweep_id), id_(std::move(id)), host_(host_name()), stop_(stop),
          store_(options.db, Store::Mode::ReadWrite), backend_(make_backend(options.device)),
          progress_("[" + id_ + "] ") {}

    // Claims and runs trials until none is left (or a stop is requested).
    void run() {
        while (!stop_.load()) {
            auto claimed = store_.claim_next(id_, host_, options_.stale_after_seconds, sweep_id_);
            if (!claimed) {
                const auto counts = count_states();
                if (counts.running == 0) return;  // nothing runnable now or later
                std::this_thread::sleep_for(std::chrono::seconds(1));  // wait for a parent
                continue;
            }
            run_claimed(*claimed);
        }
    }

    struct Counts {
        int64_t pending = 0, running = 0;
    };
    Counts count_states() {
        Counts c;
        for (const auto& t : store_.trials_of_sweep(sweep_id_)) {
            if (t.status == kPending) ++c.pending;
            if (t.status == kRunning) ++c.running;
        }
        return c;
    }

private:
    void log(const std::string& text) { progress_.note(text); }

    void run_claimed(const TrialRecord& record) {
        const std::string label = record.method + "-" + record.hash.substr(0, 12);
        log(fmt::format("{} started (attempt {})", label, record.attempts));
        std::atomic<bool> lost{false};
        try {
            Heartbeat heartbeat(options_.db, record.id, id_, options_.heartbeat_seconds, lost);
            const bool completed = run_trial(record, label, lost);
            if (completed) {
                log(label + " done");
            } else if (lost.load()) {
                log(label + " was taken over by another worker; leaving it");
            } else {
                store_.release(record.id);
                log(label + " stopped; it resumes from its checkpoint next time");
            }
        } catch (const std::exception& e) {
            store_.fail(record.id, e.what());
            log(label + " FAILED: " + e.what());
        }
    }

    // Returns whether the trial completed.
    bool run_trial(const TrialRecord& record, const std::string& label, std::atomic<bool>& lost) {
        const PlannedTrial planned = planned_from(record);
        RunConfig run = trial_run_config(planned);
        const auto dir = trial_directory(options_.runs_dir, record.hash);
        std::filesystem::create_directories(dir);

        TrainOptions train_options;
        train_options.out_dir = dir;
        // stop on Ctrl-C, or when another worker has taken the trial over
        std::atomic<bool> stop_training{false};
        train_options.stop_requested = &stop_training;
        TrainingState origin;  // the state the trial starts from: its own compute counts from here
        double sunk_flops = 0;  // the parent pretraining's FLOPs (for the budget display)

        if (record.method != "pretrain") {
            const auto parent = store_.trial(record.parent.value());
            UPCYCLE_ASSERT(parent.has_value(), "a continuation's parent is in the store");
            const PlannedTrial parent_planned = planned_from(*parent);
            sunk_flops = parent->flops;
            const auto parent_ckpt = checkpoint_path(trial_directory(options_.runs_dir, parent->hash));
            train_options.init_from = make_initial_checkpoint(record, planned, parent_ckpt, dir);
            origin = read_training_state(train_options.init_from);
            const std::string unit = planned.config["budget"]["unit"].get<std::string>();
            const int64_t base = restarts_step_counter(record.method) ? 0 : parent_planned.config["run"]["train"]["steps"].get<int64_t>();
            for (const double percent : planned.milestones) {
                Milestone m;
                m.percent = percent;
                if (unit == "seconds") {
                    m.seconds = percent / 100.0 * parent->seconds;
                } else {
                    m.step = base + steps_for_budget(planned, parent_planned, percent).value();
                }
                train_options.milestones.push_back(m);
            }
            if (unit == "seconds") {
                run.train.steps = kUnboundedSteps;
                train_options.stop_at_last_milestone = true;
            }
            train_options.seconds_origin = origin.seconds;
        }

        std::vector<MetricRow> pending;
        std::vector<RoutingRow> routing;
        auto flush = [&] {
            if (!pending.empty()) store_.add_metrics(record.id, pending);
            if (!routing.empty()) store_.add_routing(record.id, routing);
            pending.clear();
            routing.clear();
        };
        auto own = [&](double flops, double seconds) {
            return std::pair<double, double>{flops - origin.flops, seconds - origin.seconds};
        };
        TrainObserver observer;
        observer.on_message = [&](const std::string& text) { log(label + ": " + text); };
        observer.on_step = [&](const StepRecord& r) {
            if (stop_.load() || lost.load()) stop_training = true;
            const auto [flops, seconds] = own(r.flops, r.seconds);
            pending.push_back({"train_loss", r.step, flops, seconds, r.loss});
            pending.push_back({"lr", r.step, flops, seconds, r.lr});
            pending.push_back({"grad_norm", r.step, flops, seconds, r.grad_norm});
            if (!r.moe_layers.empty()) pending.push_back({"aux_loss", r.step, flops, seconds, r.aux_loss});
            for (std::size_t i = 0; i < r.routing.size(); ++i) {
                const auto& s = r.routing[i];
                routing.push_back({r.step, r.moe_layers[i], nlohmann::json(s.tokens_per_expert),
                                   s.dropped_fraction, s.router_entropy, s.aux_loss, s.z_loss});
            }
            if (pending.size() >= kMetricBatch) flush();
            const double remaining = static_cast<double>(r.total_steps - r.step) *
                                     (r.step > origin.step ? (r.seconds - origin.seconds) / static_cast<double>(r.step - origin.step) : 0);
            const bool bounded = r.total_steps < kUnboundedSteps;
            // the budget spent so far, as % of the sunk cost, when the trial has milestones
            std::string budget;
            if (!train_options.milestones.empty() && sunk_flops > 0) {
                budget = fmt::format(" | budget {:.0f}%", 100.0 * flops / sunk_flops);
            }
            progress_.update(fmt::format("{} step {}/{} | loss {:.4f}{} | {} tok/s{}", label, r.step,
                                         bounded ? std::to_string(r.total_steps) : std::string("?"),
                                         r.loss, budget, cli::format_count(r.tokens_per_second),
                                         bounded ? " | eta " + cli::format_duration(remaining) : ""));
        };
        // every metric of an evaluation, as a series point each
        auto push_eval_metrics = [&](const EvalRecord& r, double flops, double seconds) {
            const nlohmann::json metrics = evaluation_metrics(r.result);
            for (const auto& [key, value] : metrics.items()) {
                pending.push_back({key, r.step, flops, seconds, value.get<double>()});
            }
        };
        observer.on_eval = [&](const EvalRecord& r) {
            const auto [flops, seconds] = own(r.flops, r.seconds);
            push_eval_metrics(r, flops, seconds);
            flush();
        };
        observer.on_milestone = [&](const Milestone& m, const EvalRecord& r) {
            const auto [flops, seconds] = own(r.flops, r.seconds);
            store_.add_evaluation(record.id, m.percent, r.step, flops, seconds,
                                  evaluation_metrics(r.result));
            push_eval_metrics(r, flops, seconds);
            flush();
            log(fmt::format("{} budget {:g}% reached at step {}: val_loss {:.4f}", label, m.percent,
                            r.step, r.result.loss));
        };
        observer.on_checkpoint = [&](const std::filesystem::path&, int64_t) { flush(); };

        const TrainSummary summary = train(*backend_, run, train_options, observer);
        flush();
        if (!summary.completed) return false;
        const auto [flops, seconds] = own(summary.state.flops, summary.state.seconds);
        if (record.method == "pretrain") {
            const auto& e = *summary.final_eval;
            store_.add_evaluation(record.id, 0, summary.state.step, flops, seconds,
                                  evaluation_metrics(e));
        }
        const auto ckpt = checkpoint_path(dir);
        store_.add_artifact(record.id, "checkpoint", ckpt.string(),
                            static_cast<int64_t>(std::filesystem::file_size(ckpt)), sha256_file(ckpt));
        TrialProgress totals;
        totals.step = summary.state.step;
        totals.flops = flops;
        totals.seconds = seconds;
        totals.tokens = summary.state.tokens - origin.tokens;
        store_.finish(record.id, totals, nlohmann::json(make_provenance(*backend_)));
        return true;
    }

    // The checkpoint a continuation starts from: the parent's own for dense continuation, else
    // made once by surgery into the trial's directory (atomically, so a kill leaves none).
    std::filesystem::path make_initial_checkpoint(const TrialRecord& record, const PlannedTrial& planned,
                                                  const std::filesystem::path& parent_ckpt,
                                                  const std::filesystem::path& dir) {
        if (record.method == "dense") return parent_ckpt;
        const auto init = dir / "init.safetensors";
        if (std::filesystem::exists(init)) return init;
        const Checkpoint parent = read_checkpoint(parent_ckpt);
        const auto& o = planned.config["options"];
        Checkpoint made;
        if (record.method == "upcycle") {
            made = upcycle_checkpoint(parent, upcycle_options_from_json(o));
        } else if (record.method == "scratch") {
            const auto s = scratch_options_from_json(o);
            made = scratch_checkpoint(parent, s.moe, s.seed, *backend_);
        } else if (record.method == "warmstart") {
            const auto w = warmstart_options_from_json(o);
            made = warmstart_checkpoint(parent, w.depth_multiplier, w.tiling, w.optimizer_state);
        } else {
            throw UserError("", "method", "unknown continuation method '" + record.method + "'");
        }
        write_checkpoint(init, made, *backend_);
        return init;
    }

    const ExecutorOptions& options_;
    int64_t sweep_id_;
    std::string id_, host_;
    const std::atomic<bool>& stop_;
    Store store_;
    std::unique_ptr<Backend> backend_;
    cli::Progress progress_;
};

std::string read_file(const std::filesystem::path& path) {
    std::ifstream in(path);
    if (!in) throw UserError(path.string(), "", "cannot read the sweep file");
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

}  // namespace

std::filesystem::path trial_directory(const std::filesystem::path& runs_dir, const std::string& hash) {
    return runs_dir / hash.substr(0, 16);
}

ExecutorSummary run_sweep(const ExecutorOptions& options, const std::atomic<bool>& stop) {
    // Plan and register everything before any worker starts (and before any fork: no SQLite
    // connection or OpenMP pool may cross one).
    const SweepSpec spec = load_sweep(options.sweep_file, options.overrides);
    const auto trials = plan_sweep(spec);
    int64_t sweep_id = 0;
    {
        Store store(options.db, Store::Mode::ReadWrite);
        std::string yaml = read_file(options.sweep_file);
        for (const auto& o : options.overrides) yaml += "\n# --set " + o;
        sweep_id = store.upsert_sweep(spec.name, yaml, sha256_hex(yaml), nlohmann::json{{"host", host_name()}});
        for (const auto& t : trials) {
            store.add_trial(sweep_id, t.hash, t.method, t.config,
                            t.parent_hash.empty() ? std::nullopt : std::optional<std::string>(t.parent_hash));
        }
        if (options.retry_failed) store.requeue_failed(sweep_id);
    }
    fmt::print(stderr, "upcycle run: sweep {} | {} trials | {} worker(s) | db {}\n", spec.name,
               trials.size(), options.workers, options.db.string());

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

    ExecutorSummary summary;
    summary.sweep = spec.name;
    summary.interrupted = stop.load();
    Store store(options.db, Store::Mode::ReadOnly);
    for (const auto& t : store.trials_of_sweep(sweep_id)) {
        ++summary.trials;
        if (t.status == kDone) ++summary.done;
        else if (t.status == kFailed) ++summary.failed;
        else if (t.status == kRunning) ++summary.running;
        else ++summary.pending;
    }
    return summary;
}

}  // namespace upcycle
