// The SQLite results store: schema, idempotent trials, claiming with parents and stale
// heartbeats, metric upserts, NaN round trips, read-only queries, schema versions; several
// worker processes on one file; a worker killed with SIGKILL mid-trial; and the `status` and
// `query` verbs end to end.
#include <gtest/gtest.h>

#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <set>
#include <thread>

#include "core/errors.h"
#include "core/sha256.h"
#include "runner/store/store.h"
#include "test_support.h"

namespace upcycle {
namespace {

using testing::TempDir;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kFresh = 3600.0;  // a stale_after under which nothing is ever stale here

nlohmann::json config_for(int i) { return {{"name", "t" + std::to_string(i)}, {"seed", i}}; }

void sleep_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

// Runs SQL on the file directly (what a user with `sqlite3` could do).
void raw_exec(const std::filesystem::path& db, const std::string& sql) {
    sqlite3* handle = nullptr;
    ASSERT_EQ(sqlite3_open(db.c_str(), &handle), SQLITE_OK);
    char* error = nullptr;
    const int rc = sqlite3_exec(handle, sql.c_str(), nullptr, nullptr, &error);
    const std::string message = error ? error : "";
    sqlite3_free(error);
    sqlite3_close(handle);
    ASSERT_EQ(rc, SQLITE_OK) << message;
}

// The first column of the first row, read on the file directly.
std::string raw_scalar(const std::filesystem::path& db, const std::string& sql) {
    sqlite3* handle = nullptr;
    sqlite3_open_v2(db.c_str(), &handle, SQLITE_OPEN_READONLY, nullptr);
    sqlite3_stmt* stmt = nullptr;
    std::string out = "(error)";
    if (sqlite3_prepare_v2(handle, sql.c_str(), -1, &stmt, nullptr) == SQLITE_OK &&
        sqlite3_step(stmt) == SQLITE_ROW) {
        out = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
    }
    sqlite3_finalize(stmt);
    sqlite3_close(handle);
    return out;
}

int64_t count(const Store& store, const std::string& sql) {
    const auto result = store.query(sql);
    return std::stoll(result.rows.at(0).at(0).text);
}

template <class F>
std::string user_error_of(F&& f) {
    try {
        f();
    } catch (const UserError& e) {
        return e.what();
    }
    return "(no UserError)";
}

TEST(Store, CreatesTheSchemaAndReopens) {
    TempDir dir;
    const auto db = dir / "nested/results/upcycle.db";  // parent directories are created
    int64_t sweep = 0;
    {
        Store store(db, Store::Mode::ReadWrite);
        EXPECT_EQ(store.schema_version(), kStoreSchemaVersion);
        EXPECT_EQ(raw_scalar(db, "PRAGMA journal_mode"), "wal");  // WAL is kept in the file
        EXPECT_EQ(store.query("PRAGMA foreign_keys").rows.at(0).at(0).text, "1");
        sweep = store.upsert_sweep("quick", "base: {}\n", "h1", {{"git", "abc"}});
        EXPECT_EQ(store.upsert_sweep("quick", "base: {}\n", "h1", nullptr), sweep);
        EXPECT_NE(store.upsert_sweep("quick", "base: {x: 1}\n", "h2", nullptr), sweep);
        for (const char* table : {"schema_version", "sweeps", "trials", "sweep_trials", "metrics",
                                  "evaluations", "artifacts", "routing"}) {
            EXPECT_EQ(count(store, std::string("SELECT count(*) FROM sqlite_master WHERE "
                                               "type = 'table' AND name = '") +
                                       table + "'"),
                      1)
                << table;
        }
    }
    Store again(db, Store::Mode::ReadWrite);
    EXPECT_EQ(again.schema_version(), kStoreSchemaVersion);
    EXPECT_EQ(count(again, "SELECT count(*) FROM schema_version"), 1);
    const Store reader(db, Store::Mode::ReadOnly);
    const auto sweeps = reader.sweeps();
    ASSERT_EQ(sweeps.size(), 2u);
    EXPECT_EQ(sweeps[0].id, sweep);
    EXPECT_EQ(sweeps[0].yaml, "base: {}\n");
    EXPECT_EQ(sweeps[0].provenance["git"], "abc");
    EXPECT_TRUE(sweeps[1].provenance.is_null());
    ASSERT_TRUE(reader.find_sweep("quick", "h2"));
    EXPECT_EQ(reader.find_sweep("quick", "h2")->id, sweeps[1].id);
}

TEST(Store, ReadOnlyRefusesAMissingFileNamingIt) {
    TempDir dir;
    const auto db = dir / "absent.db";
    const std::string message = user_error_of([&] { Store(db, Store::Mode::ReadOnly); });
    EXPECT_NE(message.find(db.string()), std::string::npos) << message;
    EXPECT_FALSE(std::filesystem::exists(db));
}

TEST(Store, RefusesANewerSchemaVersionAndForeignDatabases) {
    TempDir dir;
    const auto db = dir / "upcycle.db";
    { Store store(db, Store::Mode::ReadWrite); }
    raw_exec(db, "UPDATE schema_version SET version = 99");
    for (auto mode : {Store::Mode::ReadWrite, Store::Mode::ReadOnly}) {
        const std::string message = user_error_of([&] { Store(db, mode); });
        EXPECT_NE(message.find(db.string()), std::string::npos) << message;
        EXPECT_NE(message.find("schema version 99"), std::string::npos) << message;
        EXPECT_NE(message.find("newer"), std::string::npos) << message;
    }
    const auto other = dir / "other.db";
    raw_exec(other, "CREATE TABLE notes (text TEXT)");
    const std::string message = user_error_of([&] { Store(other, Store::Mode::ReadWrite); });
    EXPECT_NE(message.find("not an upcycle results database"), std::string::npos) << message;
}

TEST(Store, TrialsAreIdempotentByHashAndSharedBetweenSweeps) {
    TempDir dir;
    Store store(dir / "upcycle.db", Store::Mode::ReadWrite);
    const int64_t a = store.upsert_sweep("a", "a", "ha", nullptr);
    const int64_t b = store.upsert_sweep("b", "b", "hb", nullptr);
    const int64_t dense = store.add_trial(a, "dense", Method::Dense, config_for(0), std::nullopt);
    EXPECT_EQ(store.add_trial(a, "dense", Method::Dense, config_for(0), std::nullopt), dense);
    const int64_t shared = store.add_trial(a, "shared", Method::Upcycle, config_for(1), "dense");
    EXPECT_EQ(store.add_trial(b, "shared", Method::Upcycle, config_for(1), "dense"), shared);
    store.add_trial(b, "only_b", Method::Scratch, config_for(2), std::nullopt);

    EXPECT_EQ(count(store, "SELECT count(*) FROM trials"), 3);
    EXPECT_EQ(count(store, "SELECT count(*) FROM sweep_trials"), 4);
    const auto in_a = store.trials(std::string("a"));
    ASSERT_EQ(in_a.size(), 2u);
    EXPECT_EQ(in_a[0].hash, "dense");
    EXPECT_EQ(in_a[1].hash, "shared");
    EXPECT_EQ(in_a[1].parent, dense);
    EXPECT_EQ(in_a[1].parent_hash, "dense");
    EXPECT_EQ(in_a[1].config, config_for(1));
    EXPECT_EQ(in_a[1].status, TrialStatus::Pending);
    EXPECT_EQ(in_a[1].attempts, 0);
    EXPECT_FALSE(in_a[1].created_at.empty());
    EXPECT_EQ(store.trials(std::string("b")).size(), 2u);
    EXPECT_EQ(store.trials_of_sweep(b).size(), 2u);
    EXPECT_EQ(store.trials(std::nullopt).size(), 3u);
    EXPECT_EQ(store.status_counts(std::string("b")).at(TrialStatus::Pending), 2);
    EXPECT_EQ(store.status_counts(std::nullopt).at(TrialStatus::Done), 0);
    const std::string message = user_error_of([&] { store.trials(std::string("nope")); });
    EXPECT_NE(message.find("no sweep named 'nope'"), std::string::npos) << message;
    EXPECT_NE(message.find("a, b"), std::string::npos) << message;
}

TEST(Store, AChildIsClaimableOnlyOnceItsParentIsDone) {
    TempDir dir;
    Store store(dir / "upcycle.db", Store::Mode::ReadWrite);
    const int64_t sweep = store.upsert_sweep("s", "s", "h", nullptr);
    const int64_t parent = store.add_trial(sweep, "p", Method::Dense, config_for(0), std::nullopt);
    const int64_t child = store.add_trial(sweep, "c", Method::Upcycle, config_for(1), "p");
    const int64_t orphan_parent =
        store.add_trial(sweep, "q", Method::Dense, config_for(2), std::nullopt);
    const int64_t orphan = store.add_trial(sweep, "o", Method::Upcycle, config_for(3), "q");
    const int64_t grandchild = store.add_trial(sweep, "g", Method::Dense, config_for(4), "o");

    auto first = store.claim_next("w1", "hostA", kFresh, sweep);
    ASSERT_TRUE(first);
    EXPECT_EQ(first->id, parent);
    EXPECT_EQ(first->status, TrialStatus::Running);
    EXPECT_EQ(first->attempts, 1);
    EXPECT_EQ(first->worker, "w1");
    EXPECT_EQ(first->host, "hostA");
    EXPECT_FALSE(first->started_at.empty());
    auto second = store.claim_next("w2", "hostB", kFresh, sweep);
    ASSERT_TRUE(second);
    EXPECT_EQ(second->id, orphan_parent);  // the child waits; the next free trial is taken
    EXPECT_FALSE(store.claim_next("w3", "hostC", kFresh, sweep));

    store.fail(orphan_parent, "diverged at step 7");
    EXPECT_FALSE(store.claim_next("w3", "hostC", kFresh, sweep));  // a failed parent blocks
    store.finish(parent, {100, 1e12, 3.5, 6400}, {{"device", "cpu"}});
    auto third = store.claim_next("w3", "hostC", kFresh, sweep);
    ASSERT_TRUE(third);
    EXPECT_EQ(third->id, child);
    EXPECT_FALSE(store.claim_next("w4", "hostD", kFresh, sweep));

    const auto done = store.trial(parent);
    EXPECT_EQ(done->status, TrialStatus::Done);
    EXPECT_EQ(done->step, 100);
    EXPECT_DOUBLE_EQ(done->flops, 1e12);
    EXPECT_DOUBLE_EQ(done->seconds, 3.5);
    EXPECT_EQ(done->tokens, 6400);
    EXPECT_EQ(done->provenance["device"], "cpu");
    EXPECT_FALSE(done->finished_at.empty());
    const auto failed = store.trial(orphan_parent);
    EXPECT_EQ(failed->status, TrialStatus::Failed);
    EXPECT_EQ(failed->error, "diverged at step 7");
    // its descendants can never run: they fail as blocked, naming the failed parent
    EXPECT_EQ(store.trial(orphan)->status, TrialStatus::Failed);
    EXPECT_EQ(store.trial(orphan)->error, "blocked: its parent dense-q failed");
    EXPECT_EQ(store.trial(orphan)->attempts, 0);
    EXPECT_EQ(store.trial(grandchild)->status, TrialStatus::Failed);
    EXPECT_EQ(store.trial(grandchild)->error, "blocked: its parent dense-q failed");
    EXPECT_EQ(store.trial(child)->status, TrialStatus::Running);  // another parent's: untouched

    // another sweep's trials are not claimed by a worker of this one
    const int64_t other = store.upsert_sweep("other", "o", "ho", nullptr);
    store.add_trial(other, "x", Method::Dense, config_for(9), std::nullopt);
    EXPECT_FALSE(store.claim_next("w4", "hostD", kFresh, sweep));
    EXPECT_TRUE(store.claim_next("w4", "hostD", kFresh, other));

    // failed trials, the blocked ones too, can be queued again
    EXPECT_EQ(store.requeue_failed(sweep), 3);
    EXPECT_EQ(store.trial(orphan_parent)->status, TrialStatus::Pending);
    EXPECT_EQ(store.trial(orphan_parent)->error, "");
    EXPECT_EQ(store.trial(grandchild)->status, TrialStatus::Pending);
}

TEST(Store, AStaleHeartbeatIsTakenOverAndAFreshOneIsNot) {
    TempDir dir;
    Store store(dir / "upcycle.db", Store::Mode::ReadWrite);
    const int64_t sweep = store.upsert_sweep("s", "s", "h", nullptr);
    const int64_t id = store.add_trial(sweep, "t", Method::Dense, config_for(0), std::nullopt);
    ASSERT_TRUE(store.claim_next("w1", "hostA", kFresh));
    EXPECT_TRUE(store.heartbeat(id, "w1", TrialProgress{42, 1e9, 2.0, 1000}));
    EXPECT_EQ(store.trial(id)->step, 42);
    EXPECT_TRUE(store.heartbeat(id, "w1"));  // no progress: the step stays
    EXPECT_EQ(store.trial(id)->step, 42);
    ASSERT_TRUE(store.trial(id)->heartbeat_age_seconds);
    EXPECT_LT(*store.trial(id)->heartbeat_age_seconds, 60.0);

    EXPECT_FALSE(store.claim_next("w2", "hostB", kFresh));  // fresh heartbeat: not taken over
    sleep_ms(30);
    const auto taken = store.claim_next("w2", "hostB", 0.01);
    ASSERT_TRUE(taken);
    EXPECT_EQ(taken->id, id);
    EXPECT_EQ(taken->attempts, 2);
    EXPECT_EQ(taken->worker, "w2");
    EXPECT_EQ(taken->host, "hostB");
    EXPECT_EQ(taken->step, 42);               // progress of the last attempt is kept
    EXPECT_FALSE(store.heartbeat(id, "w1"));  // the old worker learns it lost the trial
    EXPECT_TRUE(store.heartbeat(id, "w2"));

    // Ctrl-C: released trials go back to pending and are claimed again
    store.release(id);
    EXPECT_EQ(store.trial(id)->status, TrialStatus::Pending);
    EXPECT_FALSE(store.heartbeat(id, "w2"));
    const auto again = store.claim_next("w3", "hostC", kFresh);
    ASSERT_TRUE(again);
    EXPECT_EQ(again->attempts, 3);

    // a trial whose workers keep dying is failed after max_attempts instead of retried forever
    sleep_ms(30);
    EXPECT_FALSE(store.claim_next("w4", "hostD", 0.01, std::nullopt, 3));
    const auto abandoned = store.trial(id);
    EXPECT_EQ(abandoned->status, TrialStatus::Failed);
    EXPECT_NE(abandoned->error.find("abandoned"), std::string::npos) << abandoned->error;
}

// A trial submitted to SLURM is the cluster's: running, held by its job, never taken over by
// a local worker however old its heartbeat; a job that died puts it (and what its failure
// blocked) back to pending, a job whose trial failed by its own error does not.
TEST(Store, ATrialHeldByASlurmJobIsNotTakenOverAndADiedOneIsRequeued) {
    TempDir dir;
    Store store(dir / "upcycle.db", Store::Mode::ReadWrite);
    const int64_t sweep = store.upsert_sweep("s", "s", "h", nullptr);
    const int64_t parent = store.add_trial(sweep, "p", Method::Pretrain, config_for(0), {});
    const int64_t child = store.add_trial(sweep, "c", Method::Dense, config_for(1), "p");
    SlurmJobRecord job;
    job.job_id = "7_0";
    job.trial_id = parent;
    job.runs_dir = "/runs";
    job.script = "/s/wave-0.sbatch";
    job.output = "/s/logs/wave-0-7_0.out";
    store.record_slurm_submission(job);
    auto held = store.trial(parent);
    EXPECT_EQ(held->status, TrialStatus::Running);
    EXPECT_EQ(held->worker, "slurm:7_0");
    EXPECT_EQ(held->attempts, 1);
    sleep_ms(30);
    EXPECT_FALSE(store.claim_next("w1", "hostA", 0.01));  // stale, but the cluster's
    EXPECT_FALSE(store.claim_next("w1", "hostA", 0.01, std::nullopt, 1));
    EXPECT_EQ(store.trial(parent)->status, TrialStatus::Running);

    store.update_slurm_job("7_0", "RUNNING", "", "node3");
    EXPECT_EQ(store.trial(parent)->host, "node3");
    ASSERT_EQ(store.open_slurm_jobs("s").size(), 1u);
    EXPECT_EQ(store.open_slurm_jobs("s")[0].trial_hash, "p");

    // the job dies: the trial fails (its pending child blocked) and is requeued with it
    store.fail(parent, "slurm job 7_0 ended TIMEOUT");
    store.end_slurm_job("7_0", "died", "TIMEOUT", "TimeLimit");
    EXPECT_TRUE(store.open_slurm_jobs("s").empty());
    EXPECT_EQ(store.trial(child)->status, TrialStatus::Failed);
    EXPECT_EQ(store.latest_slurm_job(parent)->outcome, "died");
    EXPECT_EQ(store.requeue_died_on_cluster(sweep), 2);
    EXPECT_EQ(store.trial(parent)->status, TrialStatus::Pending);
    EXPECT_EQ(store.trial(child)->status, TrialStatus::Pending);

    // a failure of the trial's own (its result said so) stays
    job.job_id = "8_0";
    store.record_slurm_submission(job);
    store.fail(parent, "training diverged at step 3");
    store.end_slurm_job("8_0", "result", "FAILED", "");
    EXPECT_EQ(store.requeue_died_on_cluster(sweep), 0);
    EXPECT_EQ(store.trial(parent)->status, TrialStatus::Failed);
    EXPECT_EQ(store.trial(parent)->attempts, 2);
}

// A database of schema 1 (before slurm_jobs) is migrated when opened for writing, its rows kept.
TEST(Store, MigratesSchemaOneToTwo) {
    TempDir dir;
    const auto db = dir / "upcycle.db";
    {
        Store store(db, Store::Mode::ReadWrite);
        const int64_t sweep = store.upsert_sweep("s", "s", "h", nullptr);
        store.add_trial(sweep, "t", Method::Pretrain, config_for(0), std::nullopt);
    }
    raw_exec(db, "DROP TABLE slurm_jobs; UPDATE schema_version SET version = 1");
    EXPECT_THROW(Store(db, Store::Mode::ReadOnly), UserError);  // "open it once for writing"
    Store store(db, Store::Mode::ReadWrite);
    EXPECT_EQ(store.schema_version(), 2);
    EXPECT_EQ(store.trials("s").size(), 1u);
    EXPECT_TRUE(store.open_slurm_jobs(std::nullopt).empty());
}

TEST(Store, ReaddingAMetricStepReplacesIt) {
    TempDir dir;
    Store store(dir / "upcycle.db", Store::Mode::ReadWrite);
    const int64_t sweep = store.upsert_sweep("s", "s", "h", nullptr);
    const int64_t id = store.add_trial(sweep, "t", Method::Dense, config_for(0), std::nullopt);
    store.add_metrics(
        id, {{"loss", 1, 10, 0.5, 3.0}, {"loss", 2, 20, 1.0, 2.5}, {"lr", 1, 10, 0.5, 1e-3}});
    store.add_metrics(id, {{"loss", 2, 21, 1.1, 2.0}, {"loss", 3, 30, 1.5, 1.8}});
    EXPECT_EQ(count(store, "SELECT count(*) FROM metrics"), 4);
    const auto loss = store.metrics(id, "loss");
    ASSERT_EQ(loss.size(), 3u);
    EXPECT_EQ(loss[1].step, 2);
    EXPECT_DOUBLE_EQ(loss[1].value, 2.0);
    EXPECT_DOUBLE_EQ(loss[1].flops, 21);
    EXPECT_DOUBLE_EQ(loss[1].seconds, 1.1);
    EXPECT_EQ(store.metrics(id).size(), 4u);
    EXPECT_EQ(store.metrics(id).front().key, "loss");  // ordered by key then step
}

TEST(Store, NaNSurvivesDistinctFromMissing) {
    TempDir dir;
    Store store(dir / "upcycle.db", Store::Mode::ReadWrite);
    const int64_t sweep = store.upsert_sweep("s", "s", "h", nullptr);
    const int64_t id = store.add_trial(sweep, "t", Method::Dense, config_for(0), std::nullopt);
    store.add_metrics(id, {{"loss", 1, 0, 0, kNaN},
                           {"loss", 2, 0, 0, kInf},
                           {"loss", 3, 0, 0, -kInf},
                           {"loss", 4, 0, 0, -0.5}});
    const auto rows = store.metrics(id, "loss");
    ASSERT_EQ(rows.size(), 4u);  // step 5 was never logged: missing, no row
    EXPECT_TRUE(std::isnan(rows[0].value));
    EXPECT_EQ(rows[1].value, kInf);
    EXPECT_EQ(rows[2].value, -kInf);
    EXPECT_EQ(rows[3].value, -0.5);
    // what a `sqlite3` user sees: value NULL with is_nan = 1
    EXPECT_EQ(count(store,
                    "SELECT count(*) FROM metrics WHERE is_nan = 1 AND value IS NULL "
                    "AND step = 1"),
              1);
    EXPECT_EQ(count(store, "SELECT count(*) FROM metrics WHERE is_nan = 0 AND value IS NULL"), 0);

    // evaluations: a non-finite value is a JSON null under its key, a missing one has no key
    store.add_evaluation(id, 25, 100, 1e12, 3.0, {{"val_loss", kNaN}});
    const auto evals = store.evaluations_of_trial(id);
    ASSERT_EQ(evals.size(), 1u);
    EXPECT_TRUE(evals[0].metrics.contains("val_loss"));
    EXPECT_TRUE(evals[0].metrics["val_loss"].is_null());
    EXPECT_FALSE(evals[0].metrics.contains("val_accuracy"));

    // routing statistics: a NaN loss reads back as NaN
    store.add_routing(id, 10, 1, nlohmann::json::array({5, 3}), 0.25, 0.6, kNaN, 0.01);
    const auto routing = store.routing(id);
    ASSERT_EQ(routing.size(), 1u);
    EXPECT_TRUE(std::isnan(routing[0].aux_loss));
    EXPECT_DOUBLE_EQ(routing[0].z_loss, 0.01);
}

TEST(Store, EvaluationsArtifactsAndRoutingUpsert) {
    TempDir dir;
    Store store(dir / "upcycle.db", Store::Mode::ReadWrite);
    const int64_t sweep = store.upsert_sweep("paper", "s", "h", nullptr);
    const int64_t id = store.add_trial(sweep, "t", Method::Upcycle, config_for(0), std::nullopt);
    store.add_evaluation(id, 50, 100, 1e12, 3.0, {{"val_loss", 2.5}, {"val_accuracy", 0.4}});
    store.add_evaluation(id, 50, 101, 1.1e12, 3.1, {{"val_loss", 2.4}, {"val_accuracy", 0.41}});
    store.add_evaluation(id, 100, 200, 2e12, 6.0, {{"val_loss", 2.2}, {"val_accuracy", 0.45}});
    const auto evals = store.evaluations(std::string("paper"));
    ASSERT_EQ(evals.size(), 2u);
    EXPECT_EQ(evals[0].budget_percent, 50);
    EXPECT_EQ(evals[0].step, 101);
    EXPECT_EQ(to_string(evals[0].method), "upcycle");
    EXPECT_EQ(evals[0].trial_hash, "t");
    EXPECT_DOUBLE_EQ(evals[0].metrics["val_loss"].get<double>(), 2.4);
    // the generated columns users query directly
    EXPECT_EQ(store.query("SELECT val_loss FROM evaluations WHERE budget_percent = 100")
                  .rows.at(0)
                  .at(0)
                  .text,
              "2.2");

    const auto file = dir / "ckpt.safetensors";
    std::ofstream(file) << "abc";
    EXPECT_EQ(sha256_file(file),
              "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    store.add_artifact(id, "checkpoint", file.string(), 3, sha256_file(file));
    store.add_artifact(id, "checkpoint", file.string(), 4, "00");  // same path: updated
    const auto artifacts = store.artifacts(id);
    ASSERT_EQ(artifacts.size(), 1u);
    EXPECT_EQ(artifacts[0].bytes, 4);
    EXPECT_EQ(artifacts[0].kind, "checkpoint");
    EXPECT_NE(user_error_of([&] { sha256_file(dir / "missing"); }).find("missing"),
              std::string::npos);

    store.add_routing(id,
                      {{10, 1, {4, 4}, 0.0, 0.69, 1.0, 0.1}, {10, 3, {8, 0}, 0.5, 0.0, 2.0, 0.2}});
    store.add_routing(id, 10, 3, nlohmann::json::array({6, 2}), 0.1, 0.5, 1.5, 0.15);
    const auto routing = store.routing(id);
    ASSERT_EQ(routing.size(), 2u);
    EXPECT_EQ(routing[1].layer, 3);
    EXPECT_EQ(routing[1].tokens_per_expert, nlohmann::json::array({6, 2}));
    EXPECT_DOUBLE_EQ(routing[1].dropped_fraction, 0.1);
}

// A runaway statement stops when its cancel flag is set (Ctrl-C in `upcycle query`).
TEST(Store, AQueryStopsWhenCancelled) {
    TempDir dir;
    const auto db = dir / "upcycle.db";
    Store(db, Store::Mode::ReadWrite);
    const Store reader(db, Store::Mode::ReadOnly);
    const std::string endless =
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";
    std::atomic<bool> cancel{false};
    std::thread ctrl_c([&] {
        sleep_ms(100);
        cancel = true;
    });
    EXPECT_THROW(reader.query(endless, &cancel), QueryInterrupted);
    ctrl_c.join();
    // the handler is gone with the query: the same connection answers the next one
    std::atomic<bool> not_cancelled{false};
    EXPECT_EQ(reader.query("SELECT 7", &not_cancelled).rows.at(0).at(0).text, "7");
}

TEST(Store, QueryIsReadOnly) {
    TempDir dir;
    const auto db = dir / "upcycle.db";
    {
        Store store(db, Store::Mode::ReadWrite);
        const int64_t sweep = store.upsert_sweep("s", "s", "h", nullptr);
        store.add_trial(sweep, "t", Method::Dense, config_for(0), std::nullopt);
        // the writer refuses writes through query() too
        EXPECT_NE(user_error_of([&] { store.query("DELETE FROM trials"); }).find("read-only"),
                  std::string::npos);
    }
    const Store reader(db, Store::Mode::ReadOnly);
    const auto result = reader.query("SELECT id, hash, 1.5 AS x, NULL AS n, 3.0 AS r FROM trials");
    ASSERT_EQ(result.columns, (std::vector<std::string>{"id", "hash", "x", "n", "r"}));
    ASSERT_EQ(result.rows.size(), 1u);
    EXPECT_EQ(result.rows[0][0].type, QueryCell::Type::Integer);
    EXPECT_EQ(result.rows[0][1].text, "t");
    EXPECT_EQ(result.rows[0][2].text, "1.5");
    EXPECT_EQ(result.rows[0][3].type, QueryCell::Type::Null);
    EXPECT_EQ(result.rows[0][4].text, "3.0");
    EXPECT_EQ(reader.query("SELECT 1 WHERE 0").rows.size(), 0u);

    for (const char* sql : {"INSERT INTO sweeps (name, yaml, yaml_hash, created_at) "
                            "VALUES ('x', '', '', '')",
                            "UPDATE trials SET status = 'done'", "DROP TABLE metrics",
                            "SELECT 1; DELETE FROM trials", "SELEKT 1", "  -- nothing\n"}) {
        const std::string message = user_error_of([&] { reader.query(sql); });
        EXPECT_NE(message.find("'SQL'"), std::string::npos) << sql << ": " << message;
    }
    EXPECT_NE(
        user_error_of([&] { reader.query("INSERT INTO trials DEFAULT VALUES"); }).find("read-only"),
        std::string::npos);
    EXPECT_EQ(reader.query("SELECT 1; -- trailing comment\n").rows.size(), 1u);
    EXPECT_EQ(count(reader, "SELECT count(*) FROM trials"), 1);
    EXPECT_EQ(count(reader, "SELECT count(*) FROM sweeps"), 1);
}

// ---- several processes ----------------------------------------------------------------------

constexpr int kWorkers = 4;
constexpr int kTrials = 40;
constexpr int kLossSteps = 20;
constexpr int kStepsPerBatch = 5;

// A child worker: claim → metrics in batches with heartbeats → finish, until nothing is left.
// Exit code 0 on success, 3 on "database is locked", 1 on any other exception.
[[noreturn]] void worker_process(const std::filesystem::path& db, int worker, int64_t sweep,
                                 const std::filesystem::path& log) {
    int code = 0;
    try {
        Store store(db, Store::Mode::ReadWrite);
        std::ofstream out(log);
        const std::string name = "w" + std::to_string(worker);
        while (auto trial = store.claim_next(name, "localhost", kFresh, sweep)) {
            store.add_metrics(trial->id, {{"claimed_by", 0, 0, 0, static_cast<double>(worker)}});
            for (int step = 0; step < kLossSteps; step += kStepsPerBatch) {
                std::vector<MetricRow> rows;
                for (int s = step; s < step + kStepsPerBatch; ++s) {
                    rows.push_back({"loss", s, 1e6 * s, 0.01 * s, 1.0 / (1 + s)});
                }
                store.add_metrics(trial->id, rows);
                if (!store.heartbeat(trial->id, name, TrialProgress{step, 1e6 * step, 0, 0})) {
                    throw std::runtime_error("lost a trial nobody should have taken over");
                }
            }
            store.finish(trial->id, {kLossSteps, 1e6 * kLossSteps, 0.2, 100});
            out << trial->id << "\n" << std::flush;
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "worker %d: %s\n", worker, e.what());
        code = std::string(e.what()).find("locked") != std::string::npos ? 3 : 1;
    }
    std::_Exit(code);
}

TEST(StoreConcurrency, FourWorkersRunEveryTrialExactlyOnce) {
    TempDir dir;
    const auto db = dir / "upcycle.db";
    int64_t sweep = 0;
    {
        Store store(db, Store::Mode::ReadWrite);
        sweep = store.upsert_sweep("many", "many", "h", nullptr);
        for (int i = 0; i < kTrials; ++i) {
            store.add_trial(sweep, "t" + std::to_string(i), Method::Dense, config_for(i),
                            std::nullopt);
        }
    }  // closed before fork: a SQLite connection must not cross fork()
    std::vector<pid_t> children;
    for (int w = 0; w < kWorkers; ++w) {
        const pid_t pid = fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) worker_process(db, w, sweep, dir / ("worker" + std::to_string(w) + ".log"));
        children.push_back(pid);
    }
    for (int w = 0; w < kWorkers; ++w) {
        int status = 0;
        ASSERT_EQ(waitpid(children[static_cast<std::size_t>(w)], &status, 0),
                  children[static_cast<std::size_t>(w)]);
        ASSERT_TRUE(WIFEXITED(status));
        EXPECT_NE(WEXITSTATUS(status), 3) << "worker " << w << " hit 'database is locked'";
        EXPECT_EQ(WEXITSTATUS(status), 0) << "worker " << w << " failed";
    }

    // every trial claimed by exactly one worker, by the workers' own logs
    std::multiset<int64_t> claimed;
    std::map<int64_t, int> claimer;
    for (int w = 0; w < kWorkers; ++w) {
        std::ifstream in(dir / ("worker" + std::to_string(w) + ".log"));
        for (int64_t id; in >> id;) {
            claimed.insert(id);
            claimer[id] = w;
        }
    }
    EXPECT_EQ(claimed.size(), static_cast<std::size_t>(kTrials));
    EXPECT_EQ(std::set<int64_t>(claimed.begin(), claimed.end()).size(),
              static_cast<std::size_t>(kTrials));

    const Store store(db, Store::Mode::ReadOnly);
    const auto trials = store.trials(std::string("many"));
    ASSERT_EQ(trials.size(), static_cast<std::size_t>(kTrials));
    for (const auto& t : trials) {
        EXPECT_EQ(t.status, TrialStatus::Done) << t.id;
        EXPECT_EQ(t.attempts, 1) << t.id;
        const auto by = store.metrics(t.id, "claimed_by");
        ASSERT_EQ(by.size(), 1u) << t.id;
        EXPECT_EQ(static_cast<int>(by[0].value), claimer[t.id]) << t.id;
        EXPECT_EQ(t.worker, "w" + std::to_string(claimer[t.id]));
        EXPECT_EQ(store.metrics(t.id, "loss").size(), static_cast<std::size_t>(kLossSteps));
    }
    EXPECT_EQ(count(store, "SELECT count(*) FROM metrics"), kTrials * (kLossSteps + 1));
    EXPECT_EQ(store.query("PRAGMA integrity_check").rows.at(0).at(0).text, "ok");
}

TEST(StoreConcurrency, AWorkerKilledMidTrialIsTakenOverWithoutDuplicateRows) {
    TempDir dir;
    const auto db = dir / "upcycle.db";
    int64_t sweep = 0;
    {
        Store store(db, Store::Mode::ReadWrite);
        sweep = store.upsert_sweep("kill", "kill", "h", nullptr);
        store.add_trial(sweep, "victim", Method::Dense, config_for(0), std::nullopt);
    }
    int ready[2];
    ASSERT_EQ(pipe(ready), 0);
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        close(ready[0]);
        try {
            Store store(db, Store::Mode::ReadWrite);
            const auto trial = store.claim_next("doomed", "localhost", kFresh, sweep);
            if (!trial) std::_Exit(1);
            for (int64_t step = 0;; step += kStepsPerBatch) {  // writes until killed
                std::vector<MetricRow> rows;
                for (int64_t s = step; s < step + kStepsPerBatch; ++s) {
                    rows.push_back({"loss", s, 0, 0, static_cast<double>(s)});
                }
                store.add_metrics(trial->id, rows);
                store.heartbeat(trial->id, "doomed", TrialProgress{step, 0, 0, 0});
                if (step == 4 * kStepsPerBatch) (void)!write(ready[1], "x", 1);
            }
        } catch (...) {
        }
        std::_Exit(1);
    }
    close(ready[1]);
    char byte = 0;
    ASSERT_EQ(read(ready[0], &byte, 1), 1);
    close(ready[0]);
    sleep_ms(40);  // let it get well into its writes
    ASSERT_EQ(kill(pid, SIGKILL), 0);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status));

    Store store(db, Store::Mode::ReadWrite);
    EXPECT_EQ(store.query("PRAGMA integrity_check").rows.at(0).at(0).text, "ok");
    const auto before = store.metrics(1, "loss");
    ASSERT_GE(before.size(), static_cast<std::size_t>(5 * kStepsPerBatch));
    EXPECT_EQ(before.size() % kStepsPerBatch, 0u) << "a batch was half written";
    for (std::size_t i = 0; i < before.size(); ++i) EXPECT_EQ(before[i].step, int64_t(i));

    // the new worker resumes from an earlier "checkpoint" and logs those steps again
    EXPECT_FALSE(store.claim_next("rescuer", "localhost", kFresh, sweep));
    sleep_ms(30);
    const auto taken = store.claim_next("rescuer", "localhost", 0.01, sweep);
    ASSERT_TRUE(taken);
    EXPECT_EQ(taken->attempts, 2);
    const int64_t last = static_cast<int64_t>(before.size()) - 1;
    const int64_t end = last + 3 * kStepsPerBatch;
    for (int64_t step = last / 2; step <= end; step += kStepsPerBatch) {
        std::vector<MetricRow> rows;
        for (int64_t s = step; s < std::min(step + kStepsPerBatch, end + 1); ++s) {
            rows.push_back({"loss", s, 0, 0, static_cast<double>(s)});
        }
        store.add_metrics(taken->id, rows);
    }
    store.finish(taken->id, {end, 0, 0, 0});

    const auto after = store.metrics(taken->id, "loss");
    ASSERT_EQ(after.size(), static_cast<std::size_t>(end + 1));
    for (std::size_t i = 0; i < after.size(); ++i) EXPECT_EQ(after[i].step, int64_t(i));
    EXPECT_EQ(count(store, "SELECT count(*) - count(DISTINCT step) FROM metrics"), 0);
    EXPECT_EQ(store.trial(taken->id)->status, TrialStatus::Done);
    EXPECT_EQ(store.trial(taken->id)->worker, "rescuer");
}

// ---- the verbs ------------------------------------------------------------------------------

using testing::CliResult;
using testing::run_cli;
using testing::run_cli_with_prefix;

// Runs the CLI as an unprivileged user when the tests run as root (CI does): root writes
// through permissions, and these checks are about a user who cannot.
CliResult run_cli_unprivileged(const std::string& args) {
    if (geteuid() != 0) return run_cli(args);
    return run_cli_with_prefix("setpriv --reuid=65534 --regid=65534 --clear-groups", args);
}

// A results database someone may only read: reading it works from a read-only folder (a WAL
// reader would need to create the -shm file there), and a run says it is read-only instead
// of failing inside SQLite as an internal error.
TEST(StoreCli, AReadOnlyDatabaseIsReadableAndNotAnInternalError) {
    if (!std::getenv("UPCYCLE_BIN")) GTEST_SKIP() << "UPCYCLE_BIN not set; run through ctest";
    if (const auto probe = run_cli_unprivileged("--help"); probe.exit_code != 0) {
        GTEST_SKIP() << "cannot run the binary as an unprivileged user here (no setpriv, or "
                        "the build folder is private): "
                     << probe.output;
    }
    TempDir dir;
    const auto folder = dir / "shared";
    const auto db = folder / "upcycle.db";
    {
        Store store(db, Store::Mode::ReadWrite);
        const int64_t sweep = store.upsert_sweep("demo", "demo", "h", nullptr);
        store.add_trial(sweep, "aaaa1111", Method::Dense, config_for(0), std::nullopt);
    }
    namespace fs = std::filesystem;
    const auto readable = fs::perms::owner_read | fs::perms::group_read | fs::perms::others_read;
    const auto enterable = fs::perms::owner_exec | fs::perms::group_exec | fs::perms::others_exec;
    fs::permissions(dir.path(), readable | enterable | fs::perms::owner_write);
    fs::permissions(folder, readable | enterable);  // nobody may create files here
    for (const auto& f : fs::directory_iterator(folder)) fs::permissions(f.path(), readable);

    const std::string where = " --db " + db.string();
    const auto status = run_cli_unprivileged("status" + where);
    EXPECT_EQ(status.exit_code, 0) << status.output;
    EXPECT_NE(status.output.find("demo"), std::string::npos) << status.output;
    const auto query = run_cli_unprivileged("query \"SELECT hash FROM trials\"" + where);
    EXPECT_EQ(query.exit_code, 0) << query.output;
    EXPECT_NE(query.output.find("aaaa1111"), std::string::npos) << query.output;

    std::ofstream(dir / "s.yaml") << "name: demo\npretrain: {steps: 5}\n";
    const auto run = run_cli_unprivileged("run " + (dir / "s.yaml").string() + where);
    EXPECT_EQ(run.exit_code, 2) << run.output;
    EXPECT_NE(run.output.find("read-only"), std::string::npos) << run.output;
    EXPECT_EQ(run.output.find("internal error"), std::string::npos) << run.output;
    fs::permissions(folder, fs::perms::owner_all);
}

TEST(StoreCli, StatusAndQuery) {
    if (!std::getenv("UPCYCLE_BIN")) GTEST_SKIP() << "UPCYCLE_BIN not set; run through ctest";
    TempDir dir;
    const auto db = dir / "upcycle.db";
    {
        Store store(db, Store::Mode::ReadWrite);
        const int64_t sweep = store.upsert_sweep("demo", "demo", "h", nullptr);
        const int64_t a =
            store.add_trial(sweep, "aaaa1111", Method::Dense, config_for(0), std::nullopt);
        const int64_t b =
            store.add_trial(sweep, "bbbb2222", Method::Upcycle, config_for(1), std::nullopt);
        store.add_trial(sweep, "cccc3333", Method::Scratch, config_for(2), "bbbb2222");
        store.add_trial(sweep, "dddd4444", Method::Warmstart, config_for(3), std::nullopt);
        store.claim_next("w1", "node7", kFresh);
        store.heartbeat(a, "w1", TrialProgress{123, 0, 0, 0});
        store.claim_next("w2", "node8", kFresh);
        store.fail(b, "config.yaml: 'model.moe.k': expected 1..8\nsecond line");
        store.add_metrics(a, {{"loss", 1, 0, 0, 2.5}});
    }
    const std::string where = "--db " + db.string();
    const auto status = run_cli("status " + where);
    EXPECT_EQ(status.exit_code, 0) << status.output;
    for (const char* expected :
         {"demo", "running (1)", "node7", "123", "failed (2)", "expected 1..8", "second line",
          "blocked: its parent upcycle-bbbb2222 failed"}) {
        EXPECT_NE(status.output.find(expected), std::string::npos) << expected << "\n"
                                                                   << status.output;
    }
    EXPECT_EQ(run_cli("status demo " + where).exit_code, 0);
    const auto unknown = run_cli("status nope " + where);
    EXPECT_EQ(unknown.exit_code, 2) << unknown.output;
    EXPECT_NE(unknown.output.find("no sweep named 'nope'"), std::string::npos) << unknown.output;

    const auto table =
        run_cli("query \"SELECT id, method, status FROM trials ORDER BY id\" " + where);
    EXPECT_EQ(table.exit_code, 0) << table.output;
    EXPECT_NE(table.output.find("warmstart"), std::string::npos) << table.output;
    EXPECT_NE(table.output.find("(4 rows)"), std::string::npos) << table.output;
    const auto csv = run_cli("query \"SELECT key, value FROM metrics\" --format csv " + where);
    EXPECT_EQ(csv.output, "key,value\nloss,2.5\n");
    const auto json = run_cli("query \"SELECT key, step FROM metrics\" --format json " + where);
    EXPECT_EQ(nlohmann::json::parse(json.output),
              nlohmann::json::parse(R"([{"key": "loss", "step": 1}])"));
    const auto refused = run_cli("query \"DELETE FROM trials\" " + where);
    EXPECT_EQ(refused.exit_code, 2) << refused.output;
    EXPECT_NE(refused.output.find("read-only"), std::string::npos) << refused.output;
    const auto missing = run_cli("status --db " + (dir / "missing.db").string());
    EXPECT_EQ(missing.exit_code, 2) << missing.output;
    EXPECT_NE(missing.output.find("missing.db"), std::string::npos) << missing.output;
}

}  // namespace
}  // namespace upcycle
