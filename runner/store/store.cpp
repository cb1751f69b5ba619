#include "runner/store/store.h"

#include <sqlite3.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <ctime>
#include <fstream>
#include <limits>

#include <SQLiteCpp/Database.h>
#include <SQLiteCpp/Statement.h>
#include <SQLiteCpp/Transaction.h>
#include <fmt/format.h>

#include "core/errors.h"

namespace upcycle {

namespace {

// Migration i brings a database from schema version i to i + 1; version 0 is an empty file.
// Never edit a released step: append a new one and bump kStoreSchemaVersion.
// The tables are documented for users in runner/store/SCHEMA.md; keep the two in step.
const char* const kMigrations[] = {
    // 0 → 1
    R"sql(
CREATE TABLE schema_version (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    version    INTEGER NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE sweeps (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    yaml       TEXT NOT NULL,
    yaml_hash  TEXT NOT NULL,
    created_at TEXT NOT NULL,
    provenance TEXT,
    UNIQUE (name, yaml_hash)
);
CREATE TABLE trials (
    id           INTEGER PRIMARY KEY,
    hash         TEXT NOT NULL UNIQUE,
    method       TEXT NOT NULL,
    config       TEXT NOT NULL,
    parent_id    INTEGER REFERENCES trials(id),
    status       TEXT NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'running', 'done', 'failed')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    worker       TEXT,
    host         TEXT,
    heartbeat_at TEXT,
    created_at   TEXT NOT NULL,
    started_at   TEXT,
    finished_at  TEXT,
    error        TEXT,
    step         INTEGER NOT NULL DEFAULT 0,
    flops        REAL NOT NULL DEFAULT 0,
    seconds      REAL NOT NULL DEFAULT 0,
    tokens       INTEGER NOT NULL DEFAULT 0,
    provenance   TEXT
);
CREATE INDEX trials_by_status ON trials (status, id);
CREATE INDEX trials_by_parent ON trials (parent_id);
CREATE TABLE sweep_trials (
    sweep_id INTEGER NOT NULL REFERENCES sweeps(id) ON DELETE CASCADE,
    trial_id INTEGER NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
    PRIMARY KEY (sweep_id, trial_id)
) WITHOUT ROWID;
CREATE INDEX sweep_trials_by_trial ON sweep_trials (trial_id);
CREATE TABLE metrics (
    trial_id INTEGER NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
    key      TEXT NOT NULL,
    step     INTEGER NOT NULL,
    flops    REAL,
    seconds  REAL,
    value    REAL,
    is_nan   INTEGER NOT NULL DEFAULT 0 CHECK (is_nan IN (0, 1)),
    CHECK ((value IS NULL) = (is_nan = 1)),
    PRIMARY KEY (trial_id, key, step)
) WITHOUT ROWID;
CREATE TABLE evaluations (
    trial_id       INTEGER NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
    budget_percent REAL NOT NULL,
    step           INTEGER NOT NULL,
    flops          REAL,
    seconds        REAL,
    metrics        TEXT NOT NULL,
    val_loss       REAL GENERATED ALWAYS AS (json_extract(metrics, '$.val_loss')) VIRTUAL,
    val_accuracy   REAL GENERATED ALWAYS AS (json_extract(metrics, '$.val_accuracy')) VIRTUAL,
    created_at     TEXT NOT NULL,
    PRIMARY KEY (trial_id, budget_percent)
);
CREATE TABLE artifacts (
    id         INTEGER PRIMARY KEY,
    trial_id   INTEGER NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
    kind       TEXT NOT NULL,
    path       TEXT NOT NULL,
    bytes      INTEGER NOT NULL,
    sha256     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (trial_id, kind, path)
);
CREATE TABLE routing (
    trial_id          INTEGER NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
    step              INTEGER NOT NULL,
    layer             INTEGER NOT NULL,
    tokens_per_expert TEXT NOT NULL,
    dropped_fraction  REAL,
    router_entropy    REAL,
    aux_loss          REAL,
    z_loss            REAL,
    PRIMARY KEY (trial_id, step, layer)
) WITHOUT ROWID;
)sql",
    // 1 → 2: trials submitted to a SLURM cluster (`upcycle run --executor slurm`)
    R"sql(
CREATE TABLE slurm_jobs (
    id           INTEGER PRIMARY KEY,
    job_id       TEXT NOT NULL,
    trial_id     INTEGER NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
    runs_dir     TEXT NOT NULL,
    script       TEXT NOT NULL,
    output       TEXT NOT NULL,
    submitted_at TEXT NOT NULL,
    state        TEXT NOT NULL DEFAULT 'SUBMITTED',
    reason       TEXT,
    node         TEXT,
    updated_at   TEXT NOT NULL,
    outcome      TEXT CHECK (outcome IN ('result', 'died'))
);
CREATE INDEX slurm_jobs_by_trial ON slurm_jobs (trial_id, submitted_at);
CREATE INDEX slurm_jobs_open ON slurm_jobs (job_id) WHERE outcome IS NULL;
)sql",
};
static_assert(std::size(kMigrations) == kStoreSchemaVersion, "one migration per schema version");

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// A status as an SQL literal, 'done' (the names are fixed words, nothing to escape).
std::string sql(TrialStatus status) { return "'" + to_string(status) + "'"; }
constexpr auto kPending = TrialStatus::Pending;
constexpr auto kRunning = TrialStatus::Running;
constexpr auto kDone = TrialStatus::Done;
constexpr auto kFailed = TrialStatus::Failed;

// The trial columns every trial reader selects, in the order row_to_trial reads them.
constexpr const char* kTrialSelect = R"sql(
SELECT t.id, t.hash, t.method, t.status, t.error, t.host, t.worker, t.config, t.parent_id,
       p.hash, t.attempts, t.flops, t.seconds, t.tokens, t.step, t.created_at, t.started_at,
       t.heartbeat_at, t.finished_at,
       (julianday('now') - julianday(t.heartbeat_at)) * 86400.0, t.provenance
FROM trials t LEFT JOIN trials p ON p.id = t.parent_id
)sql";

std::string text_or_empty(const SQLite::Column& c) {
    return c.isNull() ? std::string() : c.getString();
}

// NULL in a nullable REAL column is how SQLite stores NaN (it cannot hold one).
double real_or_nan(const SQLite::Column& c) { return c.isNull() ? kNaN : c.getDouble(); }

nlohmann::json json_or_null(const SQLite::Column& c) {
    if (c.isNull()) return nullptr;
    return nlohmann::json::parse(c.getString());
}

void bind_json_or_null(SQLite::Statement& s, int index, const nlohmann::json& value) {
    if (value.is_null())
        s.bind(index);
    else
        s.bind(index, value.dump());
}

TrialRecord row_to_trial(const SQLite::Statement& s) {
    TrialRecord r;
    r.id = s.getColumn(0).getInt64();
    r.hash = s.getColumn(1).getString();
    const std::string source = "trial " + r.hash + " in the store";
    r.method = parse_choice<Method>(s.getColumn(2).getString(), source, "method");
    r.status = parse_choice<TrialStatus>(s.getColumn(3).getString(), source, "status");
    r.error = text_or_empty(s.getColumn(4));
    r.host = text_or_empty(s.getColumn(5));
    r.worker = text_or_empty(s.getColumn(6));
    r.config = nlohmann::json::parse(s.getColumn(7).getString());
    if (!s.getColumn(8).isNull()) r.parent = s.getColumn(8).getInt64();
    if (!s.getColumn(9).isNull()) r.parent_hash = s.getColumn(9).getString();
    r.attempts = s.getColumn(10).getInt();
    r.flops = s.getColumn(11).getDouble();
    r.seconds = s.getColumn(12).getDouble();
    r.tokens = s.getColumn(13).getInt64();
    r.step = s.getColumn(14).getInt64();
    r.created_at = text_or_empty(s.getColumn(15));
    r.started_at = text_or_empty(s.getColumn(16));
    r.heartbeat_at = text_or_empty(s.getColumn(17));
    r.finished_at = text_or_empty(s.getColumn(18));
    if (!s.getColumn(19).isNull()) r.heartbeat_age_seconds = s.getColumn(19).getDouble();
    r.provenance = json_or_null(s.getColumn(20));
    return r;
}

// Every write goes through BEGIN IMMEDIATE: the write lock is taken up front (waiting under the
// busy timeout), so a transaction never has to upgrade a read snapshot that another writer has
// made stale — the one case where SQLite answers "database is locked" without waiting.
// A write that the machine refuses (permissions, a full disk, an I/O error) is the user's to
// fix, not a bug: a UserError naming the file and what to check.
template <class Body>
void write_transaction(SQLite::Database& db, Body&& body) {
    try {
        SQLite::Transaction tx(db, SQLite::TransactionBehavior::IMMEDIATE);
        body();
        tx.commit();
    } catch (const SQLite::Exception& e) {
        const int code = e.getErrorCode() & 0xff;  // the primary result code
        const char* hint = code == SQLITE_READONLY
                               ? "check the permissions of the file and its folder"
                           : code == SQLITE_FULL ? "the disk is full"
                           : code == SQLITE_IOERR || code == SQLITE_CANTOPEN || code == SQLITE_PERM
                               ? "check the disk and the permissions of the file and its folder"
                               : nullptr;
        if (!hint) throw;
        throw UserError(db.getFilename(), "",
                        fmt::format("cannot write the results database ({}): {}", e.what(), hint));
    }
}

// "file:PATH?immutable=1": opens a database that nobody can be writing (its folder is
// read-only, so no -wal or -shm file can be made) without the -shm file a WAL reader needs.
std::string immutable_uri(const std::filesystem::path& db) {
    std::string uri = "file:";
    for (const char c : std::filesystem::absolute(db).string()) {
        if (c == '?' || c == '#' || c == '%') {
            uri += fmt::format("%{:02X}", static_cast<unsigned char>(c));
        } else {
            uri += c;
        }
    }
    return uri + "?immutable=1";
}

std::string iso_utc(std::chrono::system_clock::time_point when) {
    using namespace std::chrono;
    const int64_t ms = duration_cast<milliseconds>(when.time_since_epoch()).count();
    int64_t secs = ms / 1000, milli = ms % 1000;
    if (milli < 0) {
        milli += 1000;
        secs -= 1;
    }
    const std::time_t t = static_cast<std::time_t>(secs);
    std::tm tm{};
    gmtime_r(&t, &tm);
    return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z", tm.tm_year + 1900,
                       tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, milli);
}

// A REAL as text: the shortest form that reads back exactly, with ".0" on whole numbers so
// that it does not look like an INTEGER.
std::string real_text(double v) {
    std::string s = fmt::format("{}", v);
    if (s.find_first_not_of("-0123456789") == std::string::npos) s += ".0";
    return s;
}

struct StatementDeleter {
    void operator()(sqlite3_stmt* s) const { sqlite3_finalize(s); }
};
using RawStatement = std::unique_ptr<sqlite3_stmt, StatementDeleter>;

}  // namespace

std::string utc_now_iso() { return iso_utc(std::chrono::system_clock::now()); }

// ---- opening ------------------------------------------------------------------------------

Store::Store(const std::filesystem::path& db, Mode mode) : path_(db), mode_(mode) {
    const std::string file = db.string();
    try {
        if (mode == Mode::ReadOnly) {
            if (!std::filesystem::exists(db)) {
                throw UserError(file, "",
                                "no results database here (it is created by `upcycle "
                                "run`; pass another with --db)");
            }
            const auto folder = db.has_parent_path() ? db.parent_path() : ".";
            if (::access(folder.c_str(), W_OK) == 0) {
                db_ = std::make_unique<SQLite::Database>(file, SQLite::OPEN_READONLY,
                                                         kStoreBusyTimeoutMs);
            } else {
                db_ = std::make_unique<SQLite::Database>(immutable_uri(db),
                                                         SQLite::OPEN_READONLY | SQLite::OPEN_URI,
                                                         kStoreBusyTimeoutMs);
            }
        } else {
            if (db.has_parent_path()) std::filesystem::create_directories(db.parent_path());
            db_ = std::make_unique<SQLite::Database>(
                file, SQLite::OPEN_READWRITE | SQLite::OPEN_CREATE, kStoreBusyTimeoutMs);
            // SQLite quietly opens a file it may not write read-only; every write would fail
            if (sqlite3_db_readonly(db_->getHandle(), "main") == 1) {
                throw UserError(file, "",
                                "the results database is read-only here (check the permissions "
                                "of the file and its folder); `status`, `results` and `query` "
                                "can still read it");
            }
            db_->exec("PRAGMA journal_mode = WAL");
            // WAL with synchronous=NORMAL survives a killed process; only a power loss may
            // drop the last transactions.
            db_->exec("PRAGMA synchronous = NORMAL");
        }
        db_->exec("PRAGMA foreign_keys = ON");
        if (mode == Mode::ReadWrite)
            create_or_migrate();
        else
            check_version();
    } catch (const SQLite::Exception& e) {
        throw UserError(file, "", fmt::format("cannot open the results database: {}", e.what()));
    } catch (const std::filesystem::filesystem_error& e) {
        throw UserError(file, "", fmt::format("cannot create the results database: {}", e.what()));
    }
}

Store::~Store() = default;
Store::Store(Store&&) noexcept = default;
Store& Store::operator=(Store&&) noexcept = default;

int Store::schema_version() const {
    if (!db_->tableExists("schema_version")) return 0;
    SQLite::Statement s(*db_, "SELECT version FROM schema_version WHERE id = 1");
    if (!s.executeStep()) {
        throw UserError(path_.string(), "schema_version",
                        "the table has no row; this is not a database upcycle wrote");
    }
    return s.getColumn(0).getInt();
}

void Store::check_version() const {
    const std::string file = path_.string();
    const int version = schema_version();
    if (version > kStoreSchemaVersion) {
        throw UserError(file, "schema_version",
                        fmt::format("the database has schema version {}, newer than the {} this "
                                    "upcycle understands; use a newer upcycle",
                                    version, kStoreSchemaVersion));
    }
    if (version == 0) {
        throw UserError(file, "schema_version",
                        "not an upcycle results database (no schema_version table)");
    }
    if (version < kStoreSchemaVersion) {
        throw UserError(file, "schema_version",
                        fmt::format("the database has the older schema version {}; open it "
                                    "once for writing (e.g. `upcycle run`) to migrate it to {}",
                                    version, kStoreSchemaVersion));
    }
}

void Store::create_or_migrate() {
    const std::string file = path_.string();
    write_transaction(*db_, [&] {
        int version = schema_version();
        if (version > kStoreSchemaVersion) check_version();  // throws, naming the file
        if (version == 0) {
            SQLite::Statement tables(*db_,
                                     "SELECT count(*) FROM sqlite_master "
                                     "WHERE type = 'table' AND name NOT LIKE 'sqlite_%'");
            tables.executeStep();
            if (tables.getColumn(0).getInt() > 0) {
                throw UserError(file, "schema_version",
                                "not an upcycle results database (it has tables but no "
                                "schema_version); pass another file with --db");
            }
        }
        if (version == kStoreSchemaVersion) return;
        for (; version < kStoreSchemaVersion; ++version) db_->exec(kMigrations[version]);
        SQLite::Statement set(*db_,
                              "INSERT INTO schema_version (id, version, updated_at) "
                              "VALUES (1, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                              "version = excluded.version, updated_at = excluded.updated_at");
        set.bind(1, kStoreSchemaVersion);
        set.bind(2, utc_now_iso());
        set.exec();
    });
}

// ---- sweeps and trials ----------------------------------------------------------------------

int64_t Store::upsert_sweep(const std::string& name, const std::string& yaml_text,
                            const std::string& yaml_hash, const nlohmann::json& provenance) {
    int64_t id = 0;
    write_transaction(*db_, [&] {
        SQLite::Statement insert(*db_,
                                 "INSERT OR IGNORE INTO sweeps "
                                 "(name, yaml, yaml_hash, created_at, provenance) "
                                 "VALUES (?, ?, ?, ?, ?)");
        insert.bind(1, name);
        insert.bind(2, yaml_text);
        insert.bind(3, yaml_hash);
        insert.bind(4, utc_now_iso());
        bind_json_or_null(insert, 5, provenance);
        insert.exec();
        SQLite::Statement select(*db_, "SELECT id FROM sweeps WHERE name = ? AND yaml_hash = ?");
        select.bind(1, name);
        select.bind(2, yaml_hash);
        const bool found = select.executeStep();
        UPCYCLE_ASSERT(found, "the sweep row was just inserted");
        id = select.getColumn(0).getInt64();
    });
    return id;
}

int64_t Store::add_trial(int64_t sweep_id, const std::string& hash, Method method,
                         const nlohmann::json& config, std::optional<std::string> parent_hash) {
    int64_t id = 0;
    write_transaction(*db_, [&] {
        std::optional<int64_t> parent;
        if (parent_hash) {
            SQLite::Statement find(*db_, "SELECT id FROM trials WHERE hash = ?");
            find.bind(1, *parent_hash);
            const bool found = find.executeStep();
            UPCYCLE_ASSERT(found,
                           "parent trial " + *parent_hash + " must be added before its children");
            parent = find.getColumn(0).getInt64();
        }
        SQLite::Statement insert(*db_,
                                 "INSERT OR IGNORE INTO trials "
                                 "(hash, method, config, parent_id, created_at) "
                                 "VALUES (?, ?, ?, ?, ?)");
        insert.bind(1, hash);
        insert.bind(2, to_string(method));
        insert.bind(3, config.dump());
        if (parent)
            insert.bind(4, *parent);
        else
            insert.bind(4);
        insert.bind(5, utc_now_iso());
        insert.exec();
        SQLite::Statement select(*db_, "SELECT id FROM trials WHERE hash = ?");
        select.bind(1, hash);
        const bool found = select.executeStep();
        UPCYCLE_ASSERT(found, "the trial row was just inserted");
        id = select.getColumn(0).getInt64();
        SQLite::Statement member(*db_,
                                 "INSERT OR IGNORE INTO sweep_trials (sweep_id, trial_id) "
                                 "VALUES (?, ?)");
        member.bind(1, sweep_id);
        member.bind(2, id);
        member.exec();
    });
    return id;
}

std::optional<TrialRecord> Store::claim_next(const std::string& worker_id, const std::string& host,
                                             double stale_after_seconds,
                                             std::optional<int64_t> sweep_id, int max_attempts) {
    const auto now_point = std::chrono::system_clock::now();
    const std::string now = iso_utc(now_point);
    // ISO-8601 UTC text of one fixed width orders like time, so the cutoff compares as text.
    const std::string cutoff =
        iso_utc(now_point - std::chrono::duration_cast<std::chrono::system_clock::duration>(
                                std::chrono::duration<double>(stale_after_seconds)));
    const std::string in_sweep =
        sweep_id ? " AND t.id IN (SELECT trial_id FROM sweep_trials WHERE sweep_id = :sweep)" : "";
    std::optional<int64_t> claimed;
    write_transaction(*db_, [&] {
        if (max_attempts > 0) {
            SQLite::Statement abandon(
                *db_, "UPDATE trials AS t SET status = " + sql(kFailed) +
                          ", finished_at = :now, "
                          "error = printf('abandoned: its worker stopped heartbeating on each of "
                          "%d attempts (last: %s on %s)', t.attempts, t.worker, t.host) "
                          "WHERE t.status = " +
                          sql(kRunning) +
                          " AND t.heartbeat_at < :cutoff "
                          "AND t.attempts >= :max AND NOT EXISTS (SELECT 1 FROM slurm_jobs j "
                          "WHERE j.trial_id = t.id AND j.outcome IS NULL)" +
                          in_sweep);
            abandon.bind(":now", now);
            abandon.bind(":cutoff", cutoff);
            abandon.bind(":max", max_attempts);
            if (sweep_id) abandon.bind(":sweep", *sweep_id);
            abandon.exec();
        }
        SQLite::Statement pick(
            *db_, "SELECT t.id FROM trials t WHERE ((t.status = " + sql(kPending) +
                      " AND (t.parent_id IS "
                      "NULL OR EXISTS (SELECT 1 FROM trials p WHERE p.id = t.parent_id AND "
                      "p.status = " +
                      sql(kDone) + "))) OR (t.status = " + sql(kRunning) +
                      " AND "
                      "(t.heartbeat_at IS NULL OR t.heartbeat_at < :cutoff) AND NOT EXISTS "
                      "(SELECT 1 FROM slurm_jobs j WHERE j.trial_id = t.id AND "
                      "j.outcome IS NULL)))" +
                      in_sweep + " ORDER BY t.id LIMIT 1");
        pick.bind(":cutoff", cutoff);
        if (sweep_id) pick.bind(":sweep", *sweep_id);
        if (!pick.executeStep()) return;
        claimed = pick.getColumn(0).getInt64();
        SQLite::Statement mark(*db_, "UPDATE trials SET status = " + sql(kRunning) +
                                         ", worker = ?, host = ?, "
                                         "heartbeat_at = ?, started_at = ?, finished_at = NULL, "
                                         "error = NULL, attempts = attempts + 1 WHERE id = ?");
        mark.bind(1, worker_id);
        mark.bind(2, host);
        mark.bind(3, now);
        mark.bind(4, now);
        mark.bind(5, *claimed);
        mark.exec();
    });
    if (!claimed) return std::nullopt;
    return trial(*claimed);
}

bool Store::heartbeat(int64_t trial, const std::string& worker_id,
                      const std::optional<TrialProgress>& progress) {
    bool held = false;
    write_transaction(*db_, [&] {
        SQLite::Statement s(*db_,
                            "UPDATE trials SET heartbeat_at = ?, step = coalesce(?, step), "
                            "flops = coalesce(?, flops), seconds = coalesce(?, seconds), "
                            "tokens = coalesce(?, tokens) "
                            "WHERE id = ? AND worker = ? AND status = " +
                                sql(kRunning));
        s.bind(1, utc_now_iso());
        if (progress) {
            s.bind(2, progress->step);
            s.bind(3, progress->flops);
            s.bind(4, progress->seconds);
            s.bind(5, progress->tokens);
        }  // else parameters 2-5 stay NULL and the columns keep their values
        s.bind(6, trial);
        s.bind(7, worker_id);
        held = s.exec() == 1;
    });
    return held;
}

void Store::finish(int64_t trial, const TrialProgress& totals, const nlohmann::json& provenance) {
    write_transaction(*db_, [&] {
        SQLite::Statement s(*db_, "UPDATE trials SET status = " + sql(kDone) +
                                      ", finished_at = ?, step = ?, "
                                      "flops = ?, seconds = ?, tokens = ?, error = NULL, "
                                      "provenance = coalesce(?, provenance) WHERE id = ?");
        s.bind(1, utc_now_iso());
        s.bind(2, totals.step);
        s.bind(3, totals.flops);
        s.bind(4, totals.seconds);
        s.bind(5, totals.tokens);
        bind_json_or_null(s, 6, provenance);
        s.bind(7, trial);
        s.exec();
    });
}

void Store::fail(int64_t trial, const std::string& error) {
    write_transaction(*db_, [&] {
        SQLite::Statement s(*db_, "UPDATE trials SET status = " + sql(kFailed) +
                                      ", finished_at = ?, "
                                      "error = ? WHERE id = ?");
        s.bind(1, utc_now_iso());
        s.bind(2, error);
        s.bind(3, trial);
        s.exec();
        // Its pending descendants can never run from it: they fail as blocked, naming it, so
        // the sweep ends instead of waiting on them (a --retry-failed runs them again).
        SQLite::Statement blocked(
            *db_,
            "WITH RECURSIVE below(id) AS (SELECT id FROM trials WHERE parent_id = :failed "
            "UNION SELECT t.id FROM trials t JOIN below b ON t.parent_id = b.id) "
            "UPDATE trials SET status = " +
                sql(kFailed) +
                ", finished_at = :now, error = 'blocked: its parent ' || "
                "(SELECT method || '-' || substr(hash, 1, 12) FROM trials WHERE id = :failed)"
                " || ' failed' WHERE id IN (SELECT id FROM below) AND status = " +
                sql(kPending));
        blocked.bind(":failed", trial);
        blocked.bind(":now", utc_now_iso());
        blocked.exec();
    });
}

bool Store::release(int64_t trial, const std::optional<std::string>& worker) {
    int changed = 0;
    write_transaction(*db_, [&] {
        SQLite::Statement s(*db_, "UPDATE trials SET status = " + sql(kPending) +
                                      ", worker = NULL, heartbeat_at = NULL WHERE id = ? AND "
                                      "status = " +
                                      sql(kRunning) + (worker ? " AND worker = ?" : ""));
        s.bind(1, trial);
        if (worker) s.bind(2, *worker);
        changed = s.exec();
    });
    return changed == 1;
}

int Store::requeue_failed(int64_t sweep_id) {
    int changed = 0;
    write_transaction(*db_, [&] {
        SQLite::Statement s(*db_, "UPDATE trials SET status = " + sql(kPending) +
                                      ", worker = NULL, "
                                      "heartbeat_at = NULL, finished_at = NULL, error = NULL "
                                      "WHERE status = " +
                                      sql(kFailed) +
                                      " AND id IN "
                                      "(SELECT trial_id FROM sweep_trials WHERE sweep_id = ?)");
        s.bind(1, sweep_id);
        changed = s.exec();
    });
    return changed;
}

// ---- SLURM jobs ---------------------------------------------------------------------------

namespace {

constexpr const char* kSlurmJobSelect = R"sql(
SELECT j.job_id, j.trial_id, t.hash, j.runs_dir, j.script, j.output, j.submitted_at,
       j.updated_at, j.state, j.reason, j.node, j.outcome
FROM slurm_jobs j JOIN trials t ON t.id = j.trial_id
)sql";

SlurmJobRecord row_to_slurm_job(const SQLite::Statement& s) {
    SlurmJobRecord j;
    j.job_id = s.getColumn(0).getString();
    j.trial_id = s.getColumn(1).getInt64();
    j.trial_hash = s.getColumn(2).getString();
    j.runs_dir = s.getColumn(3).getString();
    j.script = s.getColumn(4).getString();
    j.output = s.getColumn(5).getString();
    j.submitted_at = s.getColumn(6).getString();
    j.updated_at = s.getColumn(7).getString();
    j.state = s.getColumn(8).getString();
    j.reason = text_or_empty(s.getColumn(9));
    j.node = text_or_empty(s.getColumn(10));
    j.outcome = text_or_empty(s.getColumn(11));
    return j;
}

}  // namespace

void Store::record_slurm_submission(const SlurmJobRecord& job) {
    const std::string now = utc_now_iso();
    write_transaction(*db_, [&] {
        SQLite::Statement insert(*db_,
                                 "INSERT INTO slurm_jobs (job_id, trial_id, runs_dir, script, "
                                 "output, submitted_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)");
        insert.bind(1, job.job_id);
        insert.bind(2, job.trial_id);
        insert.bind(3, job.runs_dir);
        insert.bind(4, job.script);
        insert.bind(5, job.output);
        insert.bind(6, now);
        insert.bind(7, now);
        insert.exec();
        SQLite::Statement mark(*db_, "UPDATE trials SET status = " + sql(kRunning) +
                                         ", worker = ?, host = NULL, heartbeat_at = ?, "
                                         "started_at = ?, finished_at = NULL, error = NULL, "
                                         "attempts = attempts + 1 WHERE id = ?");
        mark.bind(1, "slurm:" + job.job_id);
        mark.bind(2, now);
        mark.bind(3, now);
        mark.bind(4, job.trial_id);
        mark.exec();
    });
}

void Store::update_slurm_job(const std::string& job_id, const std::string& state,
                             const std::string& reason, const std::string& node) {
    const std::string now = utc_now_iso();
    write_transaction(*db_, [&] {
        SQLite::Statement s(*db_,
                            "UPDATE slurm_jobs SET state = ?, reason = ?, node = ?, "
                            "updated_at = ? WHERE job_id = ? AND outcome IS NULL");
        s.bind(1, state);
        s.bind(2, reason);
        s.bind(3, node);
        s.bind(4, now);
        s.bind(5, job_id);
        s.exec();
        SQLite::Statement t(*db_,
                            "UPDATE trials SET heartbeat_at = ?, host = coalesce(nullif(?, ''), "
                            "host) WHERE worker = ? AND status = " +
                                sql(kRunning));
        t.bind(1, now);
        t.bind(2, node);
        t.bind(3, "slurm:" + job_id);
        t.exec();
    });
}

void Store::end_slurm_job(const std::string& job_id, const std::string& outcome,
                          const std::string& state, const std::string& reason) {
    UPCYCLE_ASSERT(outcome == "result" || outcome == "died", "a job ends with a result or dies");
    write_transaction(*db_, [&] {
        SQLite::Statement s(*db_,
                            "UPDATE slurm_jobs SET outcome = ?, state = ?, reason = ?, "
                            "updated_at = ? WHERE job_id = ? AND outcome IS NULL");
        s.bind(1, outcome);
        s.bind(2, state);
        s.bind(3, reason);
        s.bind(4, utc_now_iso());
        s.bind(5, job_id);
        s.exec();
    });
}

void Store::set_trial_host(int64_t trial, const std::string& host) {
    write_transaction(*db_, [&] {
        SQLite::Statement s(*db_, "UPDATE trials SET host = ? WHERE id = ?");
        s.bind(1, host);
        s.bind(2, trial);
        s.exec();
    });
}

std::vector<SlurmJobRecord> Store::open_slurm_jobs(
    const std::optional<std::string>& sweep_name) const {
    if (sweep_name) sweep_ids_named(*sweep_name);  // an unknown name is a UserError
    SQLite::Statement s(
        *db_, std::string(kSlurmJobSelect) +
                  (sweep_name ? "WHERE j.outcome IS NULL AND j.trial_id IN (SELECT st.trial_id "
                                "FROM sweep_trials st JOIN sweeps s ON s.id = st.sweep_id "
                                "WHERE s.name = ?) ORDER BY j.submitted_at, j.id"
                              : "WHERE j.outcome IS NULL ORDER BY j.submitted_at, j.id"));
    if (sweep_name) s.bind(1, *sweep_name);
    std::vector<SlurmJobRecord> out;
    while (s.executeStep()) out.push_back(row_to_slurm_job(s));
    return out;
}

std::optional<SlurmJobRecord> Store::latest_slurm_job(int64_t trial) const {
    SQLite::Statement s(*db_, std::string(kSlurmJobSelect) +
                                  "WHERE j.trial_id = ? ORDER BY j.submitted_at DESC, "
                                  "j.id DESC LIMIT 1");
    s.bind(1, trial);
    if (!s.executeStep()) return std::nullopt;
    return row_to_slurm_job(s);
}

int Store::requeue_died_on_cluster(int64_t sweep_id) {
    int changed = 0;
    write_transaction(*db_, [&] {
        const std::string requeue = "UPDATE trials SET status = " + sql(kPending) +
                                    ", worker = NULL, heartbeat_at = NULL, finished_at = NULL, "
                                    "error = NULL WHERE status = " +
                                    sql(kFailed) +
                                    " AND id IN (SELECT trial_id FROM sweep_trials WHERE "
                                    "sweep_id = :sweep) AND ";
        SQLite::Statement died(
            *db_, requeue +
                      "(SELECT j.outcome FROM slurm_jobs j WHERE j.trial_id = trials.id "
                      "ORDER BY j.submitted_at DESC, j.id DESC LIMIT 1) = 'died'");
        died.bind(":sweep", sweep_id);
        changed += died.exec();
        // what a died parent blocked runs again with it (children of a parent that failed by
        // its own error stay blocked)
        for (int more = 1; more > 0; changed += more) {
            SQLite::Statement blocked(
                *db_, requeue +
                          "error LIKE 'blocked: %' AND parent_id IN (SELECT id FROM trials "
                          "WHERE status != " +
                          sql(kFailed) + ")");
            blocked.bind(":sweep", sweep_id);
            more = blocked.exec();
        }
    });
    return changed;
}

// ---- results ------------------------------------------------------------------------------

void Store::add_metrics(int64_t trial, const std::vector<MetricRow>& rows) {
    if (rows.empty()) return;
    write_transaction(*db_, [&] {
        SQLite::Statement s(*db_,
                            "INSERT OR REPLACE INTO metrics "
                            "(trial_id, key, step, flops, seconds, value, is_nan) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?)");
        for (const auto& r : rows) {
            s.bind(1, trial);
            s.bind(2, r.key);
            s.bind(3, r.step);
            s.bind(4, r.flops);
            s.bind(5, r.seconds);
            const bool nan = std::isnan(r.value);
            if (nan)
                s.bind(6);
            else
                s.bind(6, r.value);
            s.bind(7, nan ? 1 : 0);
            s.exec();
            s.reset();
        }
    });
}

void Store::add_evaluation(int64_t trial, double budget_percent, int64_t step, double flops,
                           double seconds, const nlohmann::json& metrics) {
    write_transaction(*db_, [&] {
        SQLite::Statement s(
            *db_,
            "INSERT INTO evaluations (trial_id, budget_percent, step, flops, seconds, "
            "metrics, created_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (trial_id, budget_percent) DO UPDATE SET step = excluded.step, "
            "flops = excluded.flops, seconds = excluded.seconds, "
            "metrics = excluded.metrics, created_at = excluded.created_at");
        s.bind(1, trial);
        s.bind(2, budget_percent);
        s.bind(3, step);
        s.bind(4, flops);
        s.bind(5, seconds);
        s.bind(6, metrics.dump());  // nlohmann writes a non-finite number as null
        s.bind(7, utc_now_iso());
        s.exec();
    });
}

void Store::add_artifact(int64_t trial, const std::string& kind, const std::string& path,
                         int64_t bytes, const std::string& sha256_hex) {
    write_transaction(*db_, [&] {
        SQLite::Statement s(
            *db_,
            "INSERT INTO artifacts (trial_id, kind, path, bytes, sha256, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (trial_id, kind, path) DO UPDATE SET "
            "bytes = excluded.bytes, sha256 = excluded.sha256, "
            "created_at = excluded.created_at");
        s.bind(1, trial);
        s.bind(2, kind);
        s.bind(3, path);
        s.bind(4, bytes);
        s.bind(5, sha256_hex);
        s.bind(6, utc_now_iso());
        s.exec();
    });
}

void Store::add_routing(int64_t trial, int64_t step, int layer,
                        const nlohmann::json& tokens_per_expert, double dropped_fraction,
                        double router_entropy, double aux_loss, double z_loss) {
    add_routing(trial, {RoutingRow{step, layer, tokens_per_expert, dropped_fraction, router_entropy,
                                   aux_loss, z_loss}});
}

void Store::add_routing(int64_t trial, const std::vector<RoutingRow>& rows) {
    if (rows.empty()) return;
    write_transaction(*db_, [&] {
        SQLite::Statement s(*db_,
                            "INSERT OR REPLACE INTO routing (trial_id, step, layer, "
                            "tokens_per_expert, dropped_fraction, router_entropy, "
                            "aux_loss, z_loss) VALUES (?, ?, ?, ?, ?, ?, ?, ?)");
        for (const auto& r : rows) {
            s.bind(1, trial);
            s.bind(2, r.step);
            s.bind(3, r.layer);
            s.bind(4, r.tokens_per_expert.dump());
            s.bind(5, r.dropped_fraction);  // SQLite stores a NaN as NULL; read back as NaN
            s.bind(6, r.router_entropy);
            s.bind(7, r.aux_loss);
            s.bind(8, r.z_loss);
            s.exec();
            s.reset();
        }
    });
}

// ---- readers ------------------------------------------------------------------------------

std::vector<SweepRecord> Store::sweeps() const {
    std::vector<SweepRecord> out;
    SQLite::Statement s(*db_,
                        "SELECT id, name, yaml, yaml_hash, created_at, provenance "
                        "FROM sweeps ORDER BY id");
    while (s.executeStep()) {
        out.push_back({s.getColumn(0).getInt64(), s.getColumn(1).getString(),
                       s.getColumn(2).getString(), s.getColumn(3).getString(),
                       s.getColumn(4).getString(), json_or_null(s.getColumn(5))});
    }
    return out;
}

std::optional<SweepRecord> Store::find_sweep(const std::string& name,
                                             const std::string& yaml_hash) const {
    for (auto& sweep : sweeps()) {
        if (sweep.name == name && sweep.yaml_hash == yaml_hash) return std::move(sweep);
    }
    return std::nullopt;
}

std::vector<int64_t> Store::sweep_ids_named(const std::string& name) const {
    std::vector<int64_t> ids;
    SQLite::Statement s(*db_, "SELECT id FROM sweeps WHERE name = ? ORDER BY id");
    s.bind(1, name);
    while (s.executeStep()) ids.push_back(s.getColumn(0).getInt64());
    if (ids.empty()) {
        std::string known;
        SQLite::Statement all(*db_, "SELECT DISTINCT name FROM sweeps ORDER BY name");
        while (all.executeStep())
            known += (known.empty() ? "" : ", ") + all.getColumn(0).getString();
        throw UserError(path_.string(), "sweep",
                        fmt::format("no sweep named '{}' in this database (sweeps: {})", name,
                                    known.empty() ? "none yet" : known));
    }
    return ids;
}

std::vector<TrialRecord> Store::select_trials(
    const std::string& tail, const std::function<void(SQLite::Statement&)>& bind) const {
    SQLite::Statement s(*db_, std::string(kTrialSelect) + tail);
    bind(s);
    std::vector<TrialRecord> out;
    while (s.executeStep()) out.push_back(row_to_trial(s));
    return out;
}

std::optional<TrialRecord> Store::trial(int64_t id) const {
    auto rows = select_trials("WHERE t.id = ?", [&](SQLite::Statement& s) { s.bind(1, id); });
    if (rows.empty()) return std::nullopt;
    return std::move(rows.front());
}

std::optional<TrialRecord> Store::find_trial(const std::string& hash) const {
    auto rows = select_trials("WHERE t.hash = ?", [&](SQLite::Statement& s) { s.bind(1, hash); });
    if (rows.empty()) return std::nullopt;
    return std::move(rows.front());
}

std::vector<TrialRecord> Store::trials(const std::optional<std::string>& sweep_name) const {
    if (!sweep_name) return select_trials("ORDER BY t.id", [](SQLite::Statement&) {});
    sweep_ids_named(*sweep_name);  // an unknown name is a UserError
    return select_trials(
        "WHERE t.id IN (SELECT st.trial_id FROM sweep_trials st JOIN sweeps s "
        "ON s.id = st.sweep_id WHERE s.name = ?) ORDER BY t.id",
        [&](SQLite::Statement& s) { s.bind(1, *sweep_name); });
}

std::vector<TrialRecord> Store::trials_of_sweep(int64_t sweep_id) const {
    return select_trials(
        "WHERE t.id IN (SELECT trial_id FROM sweep_trials WHERE sweep_id = ?) "
        "ORDER BY t.id",
        [&](SQLite::Statement& s) { s.bind(1, sweep_id); });
}

std::map<TrialStatus, int64_t> Store::status_counts(
    const std::optional<std::string>& sweep_name) const {
    std::map<TrialStatus, int64_t> counts{{kPending, 0}, {kRunning, 0}, {kDone, 0}, {kFailed, 0}};
    if (sweep_name) sweep_ids_named(*sweep_name);
    SQLite::Statement s(
        *db_, sweep_name ? "SELECT status, count(*) FROM trials WHERE id IN (SELECT st.trial_id "
                           "FROM sweep_trials st JOIN sweeps s ON s.id = st.sweep_id "
                           "WHERE s.name = ?) GROUP BY status"
                         : "SELECT status, count(*) FROM trials GROUP BY status");
    if (sweep_name) s.bind(1, *sweep_name);
    while (s.executeStep()) {
        counts[parse_choice<TrialStatus>(s.getColumn(0).getString(), "the store",
                                         "trials.status")] = s.getColumn(1).getInt64();
    }
    return counts;
}

std::vector<MetricRow> Store::metrics(int64_t trial, const std::string& key) const {
    SQLite::Statement s(*db_, key.empty()
                                  ? "SELECT key, step, flops, seconds, value, is_nan FROM metrics "
                                    "WHERE trial_id = ? ORDER BY key, step"
                                  : "SELECT key, step, flops, seconds, value, is_nan FROM metrics "
                                    "WHERE trial_id = ? AND key = ? ORDER BY key, step");
    s.bind(1, trial);
    if (!key.empty()) s.bind(2, key);
    std::vector<MetricRow> out;
    while (s.executeStep()) {
        MetricRow r;
        r.key = s.getColumn(0).getString();
        r.step = s.getColumn(1).getInt64();
        r.flops = real_or_nan(s.getColumn(2));
        r.seconds = real_or_nan(s.getColumn(3));
        r.value = s.getColumn(5).getInt() ? kNaN : s.getColumn(4).getDouble();
        out.push_back(std::move(r));
    }
    return out;
}

std::vector<EvaluationRecord> Store::select_evaluations(
    const std::string& tail, const std::function<void(SQLite::Statement&)>& bind) const {
    SQLite::Statement s(*db_,
                        "SELECT e.trial_id, t.hash, t.method, e.budget_percent, e.step, "
                        "e.flops, e.seconds, e.metrics FROM evaluations e "
                        "JOIN trials t ON t.id = e.trial_id " +
                            tail);
    bind(s);
    std::vector<EvaluationRecord> out;
    while (s.executeStep()) {
        out.push_back(
            {s.getColumn(0).getInt64(), s.getColumn(1).getString(),
             parse_choice<Method>(s.getColumn(2).getString(), "the store", "trials.method"),
             s.getColumn(3).getDouble(), s.getColumn(4).getInt64(), real_or_nan(s.getColumn(5)),
             real_or_nan(s.getColumn(6)), nlohmann::json::parse(s.getColumn(7).getString())});
    }
    return out;
}

std::vector<EvaluationRecord> Store::evaluations(
    const std::optional<std::string>& sweep_name) const {
    if (!sweep_name) {
        return select_evaluations("ORDER BY e.trial_id, e.budget_percent",
                                  [](SQLite::Statement&) {});
    }
    sweep_ids_named(*sweep_name);
    return select_evaluations(
        "WHERE e.trial_id IN (SELECT st.trial_id FROM sweep_trials st "
        "JOIN sweeps s ON s.id = st.sweep_id WHERE s.name = ?) "
        "ORDER BY e.trial_id, e.budget_percent",
        [&](SQLite::Statement& s) { s.bind(1, *sweep_name); });
}

std::vector<EvaluationRecord> Store::evaluations_of_trial(int64_t trial) const {
    return select_evaluations("WHERE e.trial_id = ? ORDER BY e.budget_percent",
                              [&](SQLite::Statement& s) { s.bind(1, trial); });
}

std::vector<ArtifactRecord> Store::artifacts(int64_t trial) const {
    SQLite::Statement s(*db_,
                        "SELECT id, trial_id, kind, path, bytes, sha256, created_at "
                        "FROM artifacts WHERE trial_id = ? ORDER BY id");
    s.bind(1, trial);
    std::vector<ArtifactRecord> out;
    while (s.executeStep()) {
        out.push_back({s.getColumn(0).getInt64(), s.getColumn(1).getInt64(),
                       s.getColumn(2).getString(), s.getColumn(3).getString(),
                       s.getColumn(4).getInt64(), s.getColumn(5).getString(),
                       s.getColumn(6).getString()});
    }
    return out;
}

std::vector<RoutingRow> Store::routing(int64_t trial) const {
    SQLite::Statement s(*db_,
                        "SELECT step, layer, tokens_per_expert, dropped_fraction, "
                        "router_entropy, aux_loss, z_loss FROM routing "
                        "WHERE trial_id = ? ORDER BY step, layer");
    s.bind(1, trial);
    std::vector<RoutingRow> out;
    while (s.executeStep()) {
        out.push_back({s.getColumn(0).getInt64(), s.getColumn(1).getInt(),
                       nlohmann::json::parse(s.getColumn(2).getString()),
                       real_or_nan(s.getColumn(3)), real_or_nan(s.getColumn(4)),
                       real_or_nan(s.getColumn(5)), real_or_nan(s.getColumn(6))});
    }
    return out;
}

// ---- ad-hoc SQL -----------------------------------------------------------------------------

namespace {

// SQLite calls it every kQueryProgressSteps virtual-machine steps; non-zero interrupts.
constexpr int kQueryProgressSteps = 10000;
int query_cancelled(void* cancel) { return static_cast<const std::atomic<bool>*>(cancel)->load(); }

// Removes the progress handler when the query ends, however it ends.
struct ProgressHandler {
    ProgressHandler(sqlite3* handle, const std::atomic<bool>* cancel) : handle(handle) {
        if (cancel) {
            sqlite3_progress_handler(handle, kQueryProgressSteps, query_cancelled,
                                     const_cast<std::atomic<bool>*>(cancel));
        }
    }
    ~ProgressHandler() { sqlite3_progress_handler(handle, 0, nullptr, nullptr); }
    sqlite3* handle;
};

}  // namespace

QueryResult Store::query(const std::string& sql, const std::atomic<bool>* cancel) const {
    sqlite3* handle = db_->getHandle();
    const ProgressHandler progress(handle, cancel);
    auto prepare = [&](const char* text, const char** tail) {
        sqlite3_stmt* raw = nullptr;
        if (sqlite3_prepare_v2(handle, text, -1, &raw, tail) != SQLITE_OK) {
            sqlite3_finalize(raw);
            throw UserError("", "SQL", sqlite3_errmsg(handle));
        }
        return RawStatement(raw);
    };
    const char* tail = nullptr;
    RawStatement stmt = prepare(sql.c_str(), &tail);
    if (!stmt) throw UserError("", "SQL", "no statement given");
    // what follows the first statement may only be whitespace, semicolons and comments
    while (tail && *tail) {
        const char* next = nullptr;
        if (prepare(tail, &next)) {
            throw UserError("", "SQL", "give one statement at a time");
        }
        if (next == tail) break;
        tail = next;
    }
    if (!sqlite3_stmt_readonly(stmt.get())) {
        throw UserError("", "SQL",
                        "only read-only statements are allowed (SELECT, WITH, read-only PRAGMA, "
                        "EXPLAIN); the store is written by `upcycle run`");
    }
    QueryResult out;
    const int columns = sqlite3_column_count(stmt.get());
    for (int c = 0; c < columns; ++c) out.columns.emplace_back(sqlite3_column_name(stmt.get(), c));
    for (;;) {
        const int rc = sqlite3_step(stmt.get());
        if (rc == SQLITE_DONE) break;
        if (rc == SQLITE_INTERRUPT) throw QueryInterrupted();
        if (rc != SQLITE_ROW) throw UserError("", "SQL", sqlite3_errmsg(handle));
        std::vector<QueryCell> row(static_cast<std::size_t>(columns));
        for (int c = 0; c < columns; ++c) {
            QueryCell& cell = row[static_cast<std::size_t>(c)];
            switch (sqlite3_column_type(stmt.get(), c)) {
                case SQLITE_INTEGER:
                    cell.type = QueryCell::Type::Integer;
                    cell.text = std::to_string(sqlite3_column_int64(stmt.get(), c));
                    break;
                case SQLITE_FLOAT:
                    cell.type = QueryCell::Type::Real;
                    cell.text = real_text(sqlite3_column_double(stmt.get(), c));
                    break;
                case SQLITE_TEXT:
                    cell.type = QueryCell::Type::Text;
                    cell.text.assign(
                        reinterpret_cast<const char*>(sqlite3_column_text(stmt.get(), c)),
                        static_cast<std::size_t>(sqlite3_column_bytes(stmt.get(), c)));
                    break;
                case SQLITE_BLOB: {
                    cell.type = QueryCell::Type::Blob;
                    const auto* bytes =
                        static_cast<const unsigned char*>(sqlite3_column_blob(stmt.get(), c));
                    const int n = sqlite3_column_bytes(stmt.get(), c);
                    cell.text = "X'";
                    for (int i = 0; i < n; ++i) cell.text += fmt::format("{:02X}", bytes[i]);
                    cell.text += "'";
                    break;
                }
                default: cell.type = QueryCell::Type::Null; break;
            }
        }
        out.rows.push_back(std::move(row));
    }
    return out;
}

}  // namespace upcycle
