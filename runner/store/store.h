#pragma once
// The results store: one SQLite file (WAL) with sweeps, trials, metric series, evaluations at
// budget milestones, artifacts and routing statistics. runner/store/SCHEMA.md documents every
// table for people who open the file with `sqlite3`.
//
// Concurrency: each process (worker) opens its own Store. A Store is one connection; use it
// from one thread at a time (a heartbeat thread opens a Store of its own). Every write runs in
// a BEGIN IMMEDIATE transaction under a 10 s busy timeout, so several workers share one file
// without "database is locked" failures, and claim_next hands each trial to exactly one worker.
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/choice.h"

namespace SQLite {
class Database;
class Statement;
}  // namespace SQLite

namespace upcycle {

// The schema this build writes; a database from a newer build is refused, an older one is
// migrated when opened for writing.
inline constexpr int kStoreSchemaVersion = 2;
inline constexpr const char* kDefaultDatabasePath = "results/upcycle.db";
inline constexpr int kStoreBusyTimeoutMs = 10'000;
// A running trial whose heartbeat is older than this is presumed dead and may be taken over.
// Workers should heartbeat several times within it.
inline constexpr double kDefaultStaleAfterSeconds = 120.0;

// Trial states are TrialStatus (core/choice.h); trials.status holds their names, and its CHECK
// constraint allows exactly those.

struct SweepRecord {
    int64_t id = 0;
    std::string name, yaml, yaml_hash, created_at;
    nlohmann::json provenance;  // null when none was given
};

struct TrialRecord {
    int64_t id = 0;
    std::string hash;
    Method method = Method::Pretrain;
    TrialStatus status = TrialStatus::Pending;
    std::string error;   // "" unless failed
    std::string host;    // the host of the worker that last claimed it ("" if never)
    std::string worker;  // the worker id that last claimed it ("" if never)
    nlohmann::json config;
    std::optional<int64_t> parent;  // parent trial id
    std::optional<std::string> parent_hash;
    int attempts = 0;               // how many times a worker has started it
    double flops = 0, seconds = 0;  // training FLOPs and wall seconds so far / in total
    int64_t tokens = 0, step = 0;
    std::string created_at, started_at, heartbeat_at, finished_at;  // ISO-8601 UTC, "" if unset
    std::optional<double> heartbeat_age_seconds;  // now − heartbeat_at, when there is one
    nlohmann::json provenance;                    // null when none was given
};

// Progress of a trial: written by heartbeat() (optional) and finish().
// A query stopped by its cancel flag.
struct QueryInterrupted : std::runtime_error {
    QueryInterrupted() : std::runtime_error("the query was interrupted") {}
};

struct TrialProgress {
    int64_t step = 0;
    double flops = 0;    // training FLOPs spent, cumulative
    double seconds = 0;  // training wall seconds, cumulative
    int64_t tokens = 0;  // training tokens seen, cumulative
};

// One point of a metric series. value may be NaN (kept as NaN, distinct from a missing row)
// or ±inf.
struct MetricRow {
    std::string key;
    int64_t step = 0;
    double flops = 0;
    double seconds = 0;
    double value = 0;
};

struct EvaluationRecord {
    int64_t trial_id = 0;
    std::string trial_hash;
    Method method = Method::Pretrain;
    double budget_percent = 0;  // extra compute as a percentage of the sunk cost
    int64_t step = 0;
    double flops = 0, seconds = 0;
    nlohmann::json metrics;  // {"val_loss": ..., "val_accuracy": ...}; non-finite values are null
};

struct ArtifactRecord {
    int64_t id = 0, trial_id = 0;
    std::string kind, path;
    int64_t bytes = 0;
    std::string sha256, created_at;
};

struct RoutingRow {
    int64_t step = 0;
    int layer = 0;                     // block index of the MoE layer
    nlohmann::json tokens_per_expert;  // JSON array, one count per expert
    double dropped_fraction = 0;
    double router_entropy = 0;
    double aux_loss = 0;
    double z_loss = 0;
};

// A trial's job on a SLURM cluster (`upcycle run --executor slurm`): while its outcome is
// empty the cluster holds the trial (status running, worker "slurm:JOB"), and no local worker
// takes it over.
struct SlurmJobRecord {
    std::string job_id;  // "ARRAYJOB_TASK", as squeue and sacct name an array task
    int64_t trial_id = 0;
    std::string trial_hash;
    std::string runs_dir;  // the runs folder the task writes the trial's folder in (absolute)
    std::string script;    // the sbatch script it was submitted with
    std::string output;    // the file SLURM writes the task's stdout and stderr to
    std::string submitted_at, updated_at;
    std::string state, reason, node;  // SLURM's, as last seen (state SUBMITTED until then)
    std::string outcome;              // "" while open; "result" (result.json recorded) or "died"
};

// A cell of a query result. text is how the value prints: integers in decimal, reals in the
// shortest form that reads back exactly, blobs as X'hex', NULL as "".
struct QueryCell {
    enum class Type { Null, Integer, Real, Text, Blob };
    Type type = Type::Null;
    std::string text;
};

struct QueryResult {
    std::vector<std::string> columns;
    std::vector<std::vector<QueryCell>> rows;
};

class Store {
public:
    enum class Mode { ReadWrite, ReadOnly };

    // ReadWrite creates the file, its parent directories and the schema (or migrates an older
    // schema). ReadOnly opens an existing file with SQLITE_OPEN_READONLY; a missing file is a
    // UserError naming it. A database written by a newer upcycle is refused in both modes.
    Store(const std::filesystem::path& db, Mode mode);
    ~Store();
    Store(Store&&) noexcept;
    Store& operator=(Store&&) noexcept;
    Store(const Store&) = delete;
    Store& operator=(const Store&) = delete;

    const std::filesystem::path& path() const { return path_; }
    int schema_version() const;

    // ---- sweeps and trials ----------------------------------------------------------------
    // Same name and YAML hash: returns the existing sweep's id.
    int64_t upsert_sweep(const std::string& name, const std::string& yaml_text,
                         const std::string& yaml_hash, const nlohmann::json& provenance);
    // Inserts the trial unless its hash exists (a trial shared by sweeps exists once) and makes
    // it a member of the sweep; returns the trial id. A parent must have been added first.
    int64_t add_trial(int64_t sweep_id, const std::string& hash, Method method,
                      const nlohmann::json& config, std::optional<std::string> parent_hash);

    // In one BEGIN IMMEDIATE transaction: the lowest-id trial that is pending with its parent
    // (if any) done, or running with a heartbeat older than stale_after_seconds (taken over);
    // marks it running for this worker (attempts + 1, heartbeat and started_at now).
    // sweep_id: only trials that belong to that sweep. max_attempts > 0: a stale trial that
    // has already been started that many times is marked failed instead of taken over.
    std::optional<TrialRecord> claim_next(const std::string& worker_id, const std::string& host,
                                          double stale_after_seconds,
                                          std::optional<int64_t> sweep_id = std::nullopt,
                                          int max_attempts = 0);
    // Refreshes the heartbeat (and the progress, if given). Returns false when this worker no
    // longer holds the trial (it was taken over, finished or released): stop working on it.
    bool heartbeat(int64_t trial, const std::string& worker_id,
                   const std::optional<TrialProgress>& progress = std::nullopt);
    // status done, finished_at now, the final totals; provenance (git revision, device, ...)
    // is stored when not null.
    void finish(int64_t trial, const TrialProgress& totals,
                const nlohmann::json& provenance = nullptr);
    // status failed with the error text; the other trials go on. Its pending descendants fail
    // too, as "blocked: its parent METHOD-HASH failed".
    void fail(int64_t trial, const std::string& error);
    // A running trial goes back to pending (e.g. on Ctrl-C); it resumes from its checkpoint
    // when claimed again. No effect on a trial that is not running.
    // With a worker id, only while that worker holds it. Returns whether it was released.
    bool release(int64_t trial, const std::optional<std::string>& worker = std::nullopt);
    // Failed trials of the sweep go back to pending; returns how many.
    int requeue_failed(int64_t sweep_id);

    // ---- SLURM jobs ------------------------------------------------------------------------
    // In one transaction: the job's row (job.trial_id, job_id, runs_dir, script, output), and
    // the trial running, held by it (worker "slurm:JOB", no host yet, attempts + 1).
    void record_slurm_submission(const SlurmJobRecord& job);
    // Jobs are found by job_id among the open ones (SLURM may count ids again after a reset).
    // SLURM's state of an open job as squeue or sacct show it; the trial's heartbeat is
    // refreshed, and its host set to the node once it has one.
    void update_slurm_job(const std::string& job_id, const std::string& state,
                          const std::string& reason, const std::string& node);
    // The job no longer holds its trial: outcome "result" (its result.json was recorded) or
    // "died" (it ended without one).
    void end_slurm_job(const std::string& job_id, const std::string& outcome,
                       const std::string& state, const std::string& reason);
    // The host a trial ran on, as its task reported it.
    void set_trial_host(int64_t trial, const std::string& host);
    // The open jobs (by submission), of the trials of every sweep with this name or of all.
    std::vector<SlurmJobRecord> open_slurm_jobs(const std::optional<std::string>& sweep_name) const;
    // A trial's latest job, if it was ever submitted.
    std::optional<SlurmJobRecord> latest_slurm_job(int64_t trial) const;
    // The sweep's failed trials whose latest job died (a time limit, a node failure, out of
    // memory, cancelled) go back to pending, with the trials their failure blocked; how many.
    int requeue_died_on_cluster(int64_t sweep_id);

    // ---- results --------------------------------------------------------------------------
    // One transaction per batch; (trial, key, step) is unique and re-adding replaces the row,
    // so a resumed trial that logs a step again never duplicates it.
    void add_metrics(int64_t trial, const std::vector<MetricRow>& rows);
    // Upserts by (trial, budget_percent).
    void add_evaluation(int64_t trial, double budget_percent, int64_t step, double flops,
                        double seconds, const nlohmann::json& metrics);
    // Upserts by (trial, kind, path).
    void add_artifact(int64_t trial, const std::string& kind, const std::string& path,
                      int64_t bytes, const std::string& sha256_hex);
    // Upserts by (trial, step, layer); the batch form writes one transaction.
    void add_routing(int64_t trial, int64_t step, int layer,
                     const nlohmann::json& tokens_per_expert, double dropped_fraction,
                     double router_entropy, double aux_loss, double z_loss);
    void add_routing(int64_t trial, const std::vector<RoutingRow>& rows);

    // ---- readers --------------------------------------------------------------------------
    std::vector<SweepRecord> sweeps() const;  // by id
    std::optional<SweepRecord> find_sweep(const std::string& name,
                                          const std::string& yaml_hash) const;
    std::optional<TrialRecord> trial(int64_t id) const;
    std::optional<TrialRecord> find_trial(const std::string& hash) const;
    // Trials of every sweep with this name (all its YAML versions), shared trials included,
    // by id; nullopt: every trial in the store. An unknown name is a UserError.
    std::vector<TrialRecord> trials(const std::optional<std::string>& sweep_name) const;
    std::vector<TrialRecord> trials_of_sweep(int64_t sweep_id) const;
    // Trial counts by status (all four keys present), for a sweep name or the whole store.
    std::map<TrialStatus, int64_t> status_counts(
        const std::optional<std::string>& sweep_name) const;
    // A trial's metric series ordered by key then step; key "" means every key.
    std::vector<MetricRow> metrics(int64_t trial, const std::string& key = "") const;
    // Evaluations of the sweep's trials (or of every trial), by trial id then budget.
    std::vector<EvaluationRecord> evaluations(const std::optional<std::string>& sweep_name) const;
    std::vector<EvaluationRecord> evaluations_of_trial(int64_t trial) const;
    std::vector<ArtifactRecord> artifacts(int64_t trial) const;  // by id
    std::vector<RoutingRow> routing(int64_t trial) const;        // by step then layer

    // One read-only SQL statement; anything that would write (sqlite3_stmt_readonly false)
    // or a second statement is a UserError, as is an SQL error. When *cancel becomes true
    // (Ctrl-C) the statement stops within a few thousand SQLite steps: QueryInterrupted.
    QueryResult query(const std::string& sql, const std::atomic<bool>* cancel = nullptr) const;

private:
    // SELECT of trials with this WHERE/ORDER BY tail; bind fills its parameters.
    std::vector<TrialRecord> select_trials(
        const std::string& tail, const std::function<void(SQLite::Statement&)>& bind) const;
    std::vector<EvaluationRecord> select_evaluations(
        const std::string& tail, const std::function<void(SQLite::Statement&)>& bind) const;
    std::vector<int64_t> sweep_ids_named(const std::string& name) const;
    void create_or_migrate();
    void check_version() const;

    std::filesystem::path path_;
    Mode mode_ = Mode::ReadWrite;
    std::unique_ptr<SQLite::Database> db_;
};

// The current time as ISO-8601 UTC with milliseconds: 2024-05-01T12:34:56.789Z.
std::string utc_now_iso();

}  // namespace upcycle
