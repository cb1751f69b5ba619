// upcycle status [SWEEP] [--db results/upcycle.db]: trials by state, what is running (host,
// heartbeat age, step) and what failed and why.
#include <algorithm>
#include <cstdio>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "runner/collect.h"
#include "runner/commands.h"
#include "runner/format.h"
#include "runner/store/store.h"

namespace upcycle::cli {

namespace {

constexpr std::size_t kShortHash = 12;

struct StatusArgs {
    std::string sweep;
    std::string db = kDefaultDatabasePath;
};

bool is_number(const std::string& s) {
    return !s.empty() && s.find_first_not_of("0123456789") == std::string::npos;
}

// Rows of cells printed as columns two spaces apart, numbers right-aligned, the first row a
// header.
void print_columns(const std::vector<std::vector<std::string>>& rows, const std::string& indent) {
    std::vector<std::size_t> widths;
    for (const auto& row : rows) {
        widths.resize(std::max(widths.size(), row.size()));
        for (std::size_t c = 0; c < row.size(); ++c) widths[c] = std::max(widths[c], row[c].size());
    }
    for (const auto& row : rows) {
        std::string line = indent;
        for (std::size_t c = 0; c < row.size(); ++c) {
            const std::string fill(widths[c] - row[c].size(), ' ');
            const bool right = &row != &rows.front() && is_number(row[c]);
            line += right ? fill + row[c] : row[c];
            if (c + 1 < row.size()) line += (right ? "" : fill) + "  ";
        }
        fmt::print("{}\n", line);
    }
}

std::string short_hash(const std::string& hash) { return hash.substr(0, kShortHash); }

int run_status(const StatusArgs& args) {
    const std::optional<std::string> sweep =
        args.sweep.empty() ? std::nullopt : std::optional<std::string>(args.sweep);
    collect_if_cluster_jobs(args.db, sweep);
    const Store store(args.db, Store::Mode::ReadOnly);
    const auto trials = store.trials(sweep);  // an unknown sweep is a UserError

    std::vector<std::string> names;
    if (sweep) {
        names.push_back(*sweep);
    } else {
        std::set<std::string> seen;
        for (const auto& s : store.sweeps()) {
            if (seen.insert(s.name).second) names.push_back(s.name);
        }
    }
    fmt::print("{}: {} sweep{}, {} trial{}\n", args.db, names.size(), names.size() == 1 ? "" : "s",
               trials.size(), trials.size() == 1 ? "" : "s");
    if (trials.empty()) {
        fmt::print("no trials yet\n");
        return 0;
    }

    const TrialStatus states[] = {TrialStatus::Done, TrialStatus::Running, TrialStatus::Pending,
                                  TrialStatus::Failed};
    std::vector<std::vector<std::string>> table{
        {"sweep", "trials", "done", "running", "pending", "failed"}};
    for (const auto& name : names) {
        const auto counts = store.status_counts(name);
        int64_t total = 0;
        for (const auto& [state, n] : counts) total += n;
        std::vector<std::string> row{name, std::to_string(total)};
        for (const TrialStatus state : states) row.push_back(std::to_string(counts.at(state)));
        table.push_back(std::move(row));
    }
    print_columns(table, "");

    std::map<int64_t, TrialStatus> status_of;
    for (const auto& t : trials) status_of[t.id] = t.status;
    // nullopt: the parent is missing from the store
    auto parent_status = [&](int64_t parent) -> std::optional<TrialStatus> {
        if (const auto it = status_of.find(parent); it != status_of.end()) return it->second;
        const auto p = store.trial(parent);
        if (!p) return std::nullopt;
        return p->status;
    };

    std::vector<std::vector<std::string>> running{
        {"trial", "method", "step", "heartbeat", "attempts", "host", "worker", "hash"}};
    for (const auto& t : trials) {
        if (t.status != TrialStatus::Running) continue;
        std::string heartbeat = "never";
        if (t.heartbeat_age_seconds) {
            heartbeat = format_duration(*t.heartbeat_age_seconds) + " ago";
            if (*t.heartbeat_age_seconds > kDefaultStaleAfterSeconds) heartbeat += " (stale)";
        }
        running.push_back({std::to_string(t.id), to_string(t.method), std::to_string(t.step),
                           heartbeat, std::to_string(t.attempts), t.host, t.worker,
                           short_hash(t.hash)});
    }
    if (running.size() > 1) {
        fmt::print("\nrunning ({}):\n", running.size() - 1);
        print_columns(running, "  ");
    }

    // trials held by SLURM jobs: where SLURM says each is (as of the collect above)
    const auto jobs = store.open_slurm_jobs(sweep);
    if (!jobs.empty()) {
        std::vector<std::vector<std::string>> table{
            {"job", "state", "reason", "node", "trial", "submitted", "output"}};
        for (const auto& j : jobs) {
            table.push_back({j.job_id, j.state, j.reason.empty() ? "-" : j.reason,
                             j.node.empty() ? "-" : j.node, short_hash(j.trial_hash),
                             j.submitted_at, j.output});
        }
        fmt::print("\nslurm jobs ({}):\n", jobs.size());
        print_columns(table, "  ");
    }

    const auto failed = std::count_if(trials.begin(), trials.end(), [](const TrialRecord& t) {
        return t.status == TrialStatus::Failed;
    });
    if (failed > 0) fmt::print("\nfailed ({}):\n", failed);
    for (const auto& t : trials) {
        if (t.status != TrialStatus::Failed) continue;
        fmt::print("  trial {} {} {} (attempt {}{}):\n", t.id, to_string(t.method),
                   short_hash(t.hash), t.attempts, t.host.empty() ? "" : " on " + t.host);
        std::string error = t.error.empty() ? "(no error recorded)" : t.error;
        std::size_t start = 0;
        while (start <= error.size()) {
            const std::size_t end = std::min(error.find('\n', start), error.size());
            fmt::print("    {}\n", error.substr(start, end - start));
            start = end + 1;
        }
    }

    int64_t pending = 0, waiting = 0, blocked = 0;
    for (const auto& t : trials) {
        if (t.status != TrialStatus::Pending) continue;
        ++pending;
        if (!t.parent) continue;
        const auto ps = parent_status(*t.parent);
        if (ps == TrialStatus::Failed)
            ++blocked;
        else if (ps != TrialStatus::Done)
            ++waiting;
    }
    if (pending > 0) {
        fmt::print(
            "\npending: {} ({} ready, {} waiting for a parent, {} blocked by a failed "
            "parent)\n",
            pending, pending - waiting - blocked, waiting, blocked);
    }
    return 0;
}

}  // namespace

Command add_status_command(CLI::App& app) {
    auto args = std::make_shared<StatusArgs>();
    auto* sub =
        app.add_subcommand("status", "Trials by state: what is running, what failed and why");
    sub->add_option("sweep", args->sweep, "only this sweep (by name)");
    sub->add_option("--db", args->db, "results database")->capture_default_str();
    return [args] { return run_status(*args); };
}

}  // namespace upcycle::cli
