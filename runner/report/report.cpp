#include "runner/report/report.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <tuple>

#include <fmt/format.h>

#include "core/errors.h"
#include "core/flops.h"
#include "core/sweep/sweep.h"

namespace upcycle {

namespace {

using nlohmann::json;
using Flat = std::map<std::string, json>;

constexpr const char* kMissing = "…";
constexpr const char* kDeltaLabel = "Δ vs dense";
constexpr int kDecimals = 4;
constexpr double kBudgetResolution = 1e6;  // budgets equal to 1e-6 % are the same column
constexpr double kSunkCostPercent = 100;   // the sunk cost on the budget axis

// Paths that never make a variant: seeds (averaged over), the parent (the pretraining's
// variant covers it), the budget and the step count that follows from it.
const std::set<std::string>& excluded_continuation_paths() {
    static const std::set<std::string> paths{
        "run.train.seed",    "options.seed",           "parent",
        "budget.milestones", "budget.horizon_percent", "run.train.steps"};
    return paths;
}

void flatten(const json& value, const std::string& prefix, Flat& out) {
    if (value.is_object() && !value.empty()) {
        for (const auto& [key, child] : value.items()) {
            flatten(child, prefix.empty() ? key : prefix + "." + key, out);
        }
    } else {
        out[prefix] = value;
    }
}

json value_at(const Flat& flat, const std::string& path) {
    const auto it = flat.find(path);
    return it == flat.end() ? json() : it->second;
}

// Numbers by value, before anything else; the rest by their JSON text.
bool json_less(const json& a, const json& b) {
    if (a.is_number() && b.is_number()) return a.get<double>() < b.get<double>();
    if (a.is_number() != b.is_number()) return a.is_number();
    return a.dump() < b.dump();
}

bool json_keys_less(const std::vector<json>& a, const std::vector<json>& b) {
    return std::lexicographical_compare(a.begin(), a.end(), b.begin(), b.end(), json_less);
}

std::string display_value(const json& value) {
    return value.is_string() ? value.get<std::string>() : value.dump();
}

std::string display_key(const std::string& path) {
    for (const char* prefix : {"options.", "run."}) {
        const std::string p = prefix;
        if (path.rfind(p, 0) == 0) return path.substr(p.size());
    }
    return path;
}

int path_priority(const std::string& path) {
    if (path.rfind("options.", 0) == 0) return 0;
    if (path.rfind("run.", 0) == 0) return 1;
    return 2;
}

// The varying paths of a group of trials that make its variants (see report.h).
struct VariantKeys {
    std::vector<std::string> paths;    // kept, in label order
    std::set<std::string> varying;     // every path whose value differs, excluded ones too
    std::map<std::string, json> omit;  // path → the strictly most common value, not spelled out
};

VariantKeys choose_variant_keys(const std::vector<const Flat*>& flats,
                                const std::vector<std::string>& bases,
                                const std::set<std::string>& excluded) {
    VariantKeys keys;
    std::set<std::string> all;
    for (const Flat* f : flats) {
        for (const auto& [path, value] : *f) all.insert(path);
    }
    std::vector<std::string> candidates;
    for (const auto& path : all) {
        const json first = value_at(*flats.front(), path);
        const bool varies = std::any_of(flats.begin(), flats.end(),
                                        [&](const Flat* f) { return value_at(*f, path) != first; });
        if (!varies) continue;
        keys.varying.insert(path);
        if (!excluded.count(path)) candidates.push_back(path);
    }
    std::stable_sort(candidates.begin(), candidates.end(), [](const auto& a, const auto& b) {
        return path_priority(a) < path_priority(b);
    });
    for (const auto& path : candidates) {
        // Kept unless the base and the paths kept so far determine its value.
        std::map<std::string, json> seen;
        bool independent = false;
        for (std::size_t i = 0; i < flats.size() && !independent; ++i) {
            std::string group = bases[i];
            for (const auto& kept : keys.paths) group += "\x1f" + value_at(*flats[i], kept).dump();
            const json value = value_at(*flats[i], path);
            const auto [it, inserted] = seen.emplace(group, value);
            independent = !inserted && it->second != value;
        }
        if (independent) keys.paths.push_back(path);
    }
    // Strict modes, counted over the distinct variants (not trials: seeds repeat them).
    std::set<std::vector<std::string>> variants;
    for (std::size_t i = 0; i < flats.size(); ++i) {
        std::vector<std::string> combo{bases[i]};
        for (const auto& path : keys.paths) combo.push_back(value_at(*flats[i], path).dump());
        variants.insert(combo);
    }
    for (std::size_t k = 0; k < keys.paths.size(); ++k) {
        std::map<std::string, int> counts;
        for (const auto& combo : variants) ++counts[combo[k + 1]];
        std::vector<std::pair<int, std::string>> ranked;
        for (const auto& [value, n] : counts) ranked.emplace_back(n, value);
        std::sort(ranked.rbegin(), ranked.rend());
        if (ranked.size() >= 2 && ranked[0].first > ranked[1].first) {
            keys.omit[keys.paths[k]] = json::parse(ranked[0].second);
        }
    }
    return keys;
}

std::pair<std::string, std::vector<json>> variant_of(const Flat& flat, const VariantKeys& keys) {
    std::string text;
    std::vector<json> sort_key;
    for (const auto& path : keys.paths) {
        const json value = value_at(flat, path);
        sort_key.push_back(value);
        const auto omitted = keys.omit.find(path);
        if (omitted != keys.omit.end() && omitted->second == value) continue;
        text += (text.empty() ? "" : " ") + display_key(path) + "=" + display_value(value);
    }
    return {text, sort_key};
}

std::string join_words(const std::string& a, const std::string& b) {
    if (a.empty()) return b;
    if (b.empty()) return a;
    return a + " " + b;
}

int method_rank(Method method) {
    if (method == Method::Pretrain) return 0;
    const auto& methods = continuation_methods();
    const auto it = std::find(methods.begin(), methods.end(), method);
    return it == methods.end() ? 1 + static_cast<int>(methods.size())
                               : 1 + static_cast<int>(it - methods.begin());
}

double budget_key(double percent) {
    return std::round(percent * kBudgetResolution) / kBudgetResolution;
}

// ---- text ------------------------------------------------------------------------------------

bool is_utf8_continuation(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

std::size_t display_width(const std::string& s) {
    std::size_t n = 0;
    for (char c : s) n += is_utf8_continuation(c) ? 0 : 1;
    return n;
}

std::string pad(const std::string& s, std::size_t width, bool right) {
    const std::size_t w = display_width(s);
    const std::string fill(width > w ? width - w : 0, ' ');
    return right ? fill + s : s + fill;
}

std::string format_number(double v) {
    if (std::isnan(v)) return "NaN";
    if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
    std::string text = fmt::format("{:.{}f}", v, kDecimals);
    if (text.find_first_not_of("-0.") == std::string::npos)
        text = fmt::format("{:.{}f}", 0.0, kDecimals);
    return text;
}

std::string format_signed(double v) {
    if (!std::isfinite(v)) return format_number(v);
    std::string text = fmt::format("{:+.{}f}", v, kDecimals);
    if (text.find_first_not_of("+-0.") == std::string::npos) text = "+" + format_number(0.0);
    return text;
}

std::string cell_text(const ReportCell* cell) {
    if (!cell) return "";
    if (cell->n == 0)
        return cell->planned > 0 && cell->failed == cell->planned ? "failed" : kMissing;
    std::string text = format_number(*cell->mean);
    if (cell->std) text += " ± " + format_number(*cell->std);
    if (cell->n < cell->planned) text += fmt::format(" ({}/{} seeds)", cell->n, cell->planned);
    return text;
}

// "−0.0260 ± 0.0150" (the 95% half-width), "+0.0040 ± 0.0140 tie", or the bare mean of one
// seed.
std::string difference_text(const PairedDifference& d) {
    if (!d.mean) return kMissing;
    std::string text = format_signed(*d.mean);
    if (d.has_interval()) text += " ± " + format_number(*d.half_width) + (d.tie() ? " tie" : "");
    return text;
}

std::string delta_text(const ReportRow& row, const ReportRow* dense, double budget) {
    const ReportCell* cell = row.cell(budget);
    const ReportCell* reference = dense ? dense->cell(budget) : nullptr;
    if (!cell || !reference) return "";
    return difference_text(cell->vs_dense);
}

// The dense continuation of `base`: the plain one when there are several.
const ReportRow* dense_row_of(const Report& report, const std::string& base) {
    const ReportRow* found = nullptr;
    for (const auto& r : report.rows) {
        if (r.method == Method::Dense && r.base == base && (!found || r.variant.empty()))
            found = &r;
    }
    return found;
}

// The dense row that gives `row` its deltas, if it shows a delta line at all.
const ReportRow* dense_reference(const Report& report, const ReportRow& row) {
    if (row.method == Method::Pretrain || row.method == Method::Dense || !row.has_dense_reference) {
        return nullptr;
    }
    return dense_row_of(report, row.base);
}

std::optional<NoiseFloor> noise_floor_of(const std::vector<ReportRow>& rows) {
    std::vector<double> spreads;
    int max_seeds = 0;
    for (const auto& row : rows) {
        for (const auto& cell : row.cells) {
            if (cell.std && std::isfinite(*cell.std)) {
                spreads.push_back(*cell.std);
                max_seeds = std::max(max_seeds, cell.n);
            }
        }
    }
    if (spreads.empty()) return std::nullopt;
    std::sort(spreads.begin(), spreads.end());
    const std::size_t n = spreads.size();
    NoiseFloor floor;
    floor.cells = static_cast<int>(n);
    floor.max_seeds = max_seeds;
    floor.median_std = n % 2 ? spreads[n / 2] : (spreads[n / 2 - 1] + spreads[n / 2]) / 2;
    floor.min_std = spreads.front();
    floor.max_std = spreads.back();
    return floor;
}

// `candidate` − `reference` at every budget both rows have, paired by seed.
Comparison compare_rows(const Report& report, const ReportRow& candidate,
                        const ReportRow& reference) {
    Comparison c;
    c.candidate = candidate.label;
    c.reference = reference.label;
    c.base = candidate.base;
    c.candidate_method = candidate.method;
    c.reference_method = reference.method;
    std::vector<DifferencePoint> oriented;
    for (const auto& cell : candidate.cells) {
        const ReportCell* other = reference.cell(cell.budget_percent);
        if (!other) continue;
        DifferencePoint point{cell.budget_percent, paired_difference(cell.values, other->values)};
        if (point.difference.n == 0) continue;
        c.points.push_back(point);
        // Catching up means being better: lower, or higher for an accuracy.
        if (!report.lower_is_better) point.difference.mean = -*point.difference.mean;
        oriented.push_back(point);
    }
    c.crossover = find_crossover(oriented);
    return c;
}

// Each continuation against dense continuation of its base, and scratch against the upcycle
// row of the same base and variant (or the base's only upcycle row).
std::vector<Comparison> comparisons_of(const Report& report) {
    std::vector<Comparison> comparisons;
    for (const auto& row : report.rows) {
        if (row.method == Method::Pretrain || row.method == Method::Dense) continue;
        if (const ReportRow* dense = dense_reference(report, row))
            comparisons.push_back(compare_rows(report, row, *dense));
        if (row.method != Method::Scratch) continue;
        const ReportRow *same_variant = nullptr, *last = nullptr;
        int upcycles = 0;
        for (const auto& r : report.rows) {
            if (r.method != Method::Upcycle || r.base != row.base) continue;
            ++upcycles;
            last = &r;
            if (r.variant == row.variant) same_variant = &r;
        }
        const ReportRow* upcycle = same_variant ? same_variant : upcycles == 1 ? last : nullptr;
        if (!upcycle) continue;
        Comparison c = compare_rows(report, row, *upcycle);
        for (const auto& cell : upcycle->cells) {
            const ReportCell* scratch = row.cell(cell.budget_percent + kSunkCostPercent);
            if (!scratch) continue;
            const PairedDifference d = paired_difference(scratch->values, cell.values);
            if (d.n > 0) c.equal_total_compute.push_back({cell.budget_percent, d});
        }
        comparisons.push_back(std::move(c));
    }
    return comparisons;
}

}  // namespace

std::string unit_phrase(BudgetUnit unit) {
    switch (unit) {
        case BudgetUnit::Steps: return "extra training steps";
        case BudgetUnit::Seconds: return "extra training seconds";
        case BudgetUnit::Flops: break;
    }
    return "extra training FLOPs";
}

namespace {

std::string status_line(const Report& report) {
    int64_t total = 0;
    for (const auto& [state, n] : report.status_counts) total += n;
    std::string line = fmt::format("{} trial{}", total, total == 1 ? "" : "s");
    std::string parts;
    for (const TrialStatus state :
         {TrialStatus::Done, TrialStatus::Running, TrialStatus::Pending, TrialStatus::Failed}) {
        const auto it = report.status_counts.find(state);
        const int64_t n = it == report.status_counts.end() ? 0 : it->second;
        if (n > 0) parts += fmt::format("{}{} {}", parts.empty() ? "" : ", ", n, to_string(state));
    }
    return parts.empty() ? line : line + ": " + parts;
}

struct Legend {
    bool missing = false, partial = false, failed = false, scratch = false;
};

Legend legend_of(const Report& report) {
    Legend legend;
    for (const auto& row : report.rows) {
        if (row.method == Method::Scratch) legend.scratch = true;
        for (const auto& cell : row.cells) {
            if (cell.n == 0 && cell.failed == cell.planned && cell.planned > 0)
                legend.failed = true;
            else if (cell.n == 0)
                legend.missing = true;
            else if (cell.n < cell.planned)
                legend.partial = true;
        }
    }
    return legend;
}

std::vector<std::string> legend_lines(const Report& report) {
    const Legend legend = legend_of(report);
    std::vector<std::string> lines;
    if (legend.missing) lines.push_back("…  not evaluated yet (trial pending or running)");
    if (legend.partial) lines.push_back("(1/2 seeds)  seeds evaluated there, of those planned");
    if (legend.failed) {
        lines.push_back("failed  every trial planned there failed: upcycle status " + report.sweep +
                        " shows why");
    }
    if (legend.scratch) {
        lines.push_back("scratch reuses no sunk cost: its budget is its total compute");
    }
    return lines;
}

std::string caption(const Report& report) {
    return fmt::format("{}: {} ({}; {} is better), mean ± std over seeds", report.sweep,
                       report.metric, metric_description(report.metric),
                       report.lower_is_better ? "lower" : "higher");
}

std::string columns_caption(const Report& report) {
    return fmt::format(
        "columns: {} as % of the sunk cost (the dense pretraining); {}: "
        "difference to dense continuation at the same budget, paired by seed, ± its 95% "
        "interval (tie: the interval contains 0)",
        unit_phrase(report.budget_unit), kDeltaLabel);
}

std::string csv_number(const std::optional<double>& v) { return v ? fmt::format("{}", *v) : ""; }

std::string markdown_escape(const std::string& text) {
    std::string out;
    for (char c : text) {
        if (c == '|') out += '\\';
        out += c;
    }
    return out;
}

std::string markdown_cell(const std::string& text) {
    return text.empty() ? " |" : " " + markdown_escape(text) + " |";
}

}  // namespace

// ---- labels ---------------------------------------------------------------------------------

std::vector<TrialLabel> label_trials(const std::vector<TrialRecord>& trials) {
    std::vector<TrialLabel> labels(trials.size());
    std::vector<Flat> flats(trials.size());
    std::map<Method, std::vector<std::size_t>> by_method;
    for (std::size_t i = 0; i < trials.size(); ++i) {
        flatten(trials[i].config, "", flats[i]);
        labels[i].method = trials[i].method;
        const json seed = value_at(flats[i], "run.train.seed");
        labels[i].seed = seed.is_null() ? "" : display_value(seed);
        by_method[trials[i].method].push_back(i);
    }

    // The pretrainings first: their variants are the bases of every row.
    std::set<std::string> pretrain_varying;
    std::map<std::string, std::size_t> pretrain_by_hash;
    if (const auto it = by_method.find(Method::Pretrain); it != by_method.end()) {
        std::vector<const Flat*> group;
        for (std::size_t i : it->second) group.push_back(&flats[i]);
        const VariantKeys keys =
            choose_variant_keys(group, std::vector<std::string>(group.size()), {"run.train.seed"});
        pretrain_varying = keys.varying;
        for (std::size_t i : it->second) {
            std::tie(labels[i].base, labels[i].base_key) = variant_of(flats[i], keys);
            labels[i].label = join_words(kPretrainedLabel, labels[i].base);
            pretrain_by_hash[trials[i].hash] = i;
        }
    }

    std::set<std::string> excluded = excluded_continuation_paths();
    excluded.insert(pretrain_varying.begin(), pretrain_varying.end());
    for (const auto& [method, members] : by_method) {
        if (method == Method::Pretrain) continue;
        std::vector<const Flat*> group;
        std::vector<std::string> bases;
        for (std::size_t i : members) {
            if (trials[i].parent_hash) {
                if (const auto p = pretrain_by_hash.find(*trials[i].parent_hash);
                    p != pretrain_by_hash.end()) {
                    labels[i].base = labels[p->second].base;
                    labels[i].base_key = labels[p->second].base_key;
                }
            }
            group.push_back(&flats[i]);
            bases.push_back(labels[i].base);
        }
        const VariantKeys keys = choose_variant_keys(group, bases, excluded);
        for (std::size_t i : members) {
            std::tie(labels[i].variant, labels[i].variant_key) = variant_of(flats[i], keys);
            labels[i].label =
                join_words(join_words(to_string(method), labels[i].base), labels[i].variant);
        }
    }
    return labels;
}

// ---- the report -----------------------------------------------------------------------------

const ReportCell* ReportRow::cell(double budget_percent) const {
    const double key = budget_key(budget_percent);
    for (const auto& c : cells) {
        if (budget_key(c.budget_percent) == key) return &c;
    }
    return nullptr;
}

std::string ReportRow::variant_text() const { return join_words(base, variant); }

std::string format_percent(double percent) { return fmt::format("{}%", percent); }

std::string metric_description(const std::string& metric) {
    if (metric == "val_loss") return "validation loss, nats per prediction";
    if (metric == "val_accuracy") return "validation accuracy";
    if (metric == "test_loss") return "test loss, nats per image";
    if (metric == "test_accuracy") return "test accuracy (top-1)";
    // probe_{n}shot_accuracy
    const std::string prefix = "probe_", suffix = "shot_accuracy";
    if (metric.size() > prefix.size() + suffix.size() && metric.rfind(prefix, 0) == 0 &&
        metric.compare(metric.size() - suffix.size(), suffix.size(), suffix) == 0) {
        const std::string shots =
            metric.substr(prefix.size(), metric.size() - prefix.size() - suffix.size());
        return shots + "-shot linear probe, test accuracy";
    }
    return metric;
}

Report build_report(const Store& store, const std::string& sweep, const std::string& metric) {
    Report report;
    report.sweep = sweep;
    report.metric = metric;
    report.database = store.path().string();
    report.lower_is_better = metric.find("accuracy") == std::string::npos;
    const std::vector<TrialRecord> trials = store.trials(sweep);  // unknown: a UserError
    report.status_counts = store.status_counts(sweep);
    const std::vector<EvaluationRecord> evaluations = store.evaluations(sweep);

    std::set<std::string> recorded;
    for (const auto& e : evaluations) {
        if (e.metrics.is_object()) {
            for (const auto& [key, value] : e.metrics.items()) recorded.insert(key);
        }
    }
    const auto& standard = standard_report_metrics();
    if (!recorded.count(metric) &&
        std::find(standard.begin(), standard.end(), metric) == standard.end()) {
        std::string known;
        for (const auto& key : recorded) known += (known.empty() ? "" : ", ") + key;
        throw UserError(report.database, "--metric",
                        fmt::format("no evaluation of sweep '{}' records '{}' (recorded: {})",
                                    sweep, metric, known.empty() ? "none yet" : known));
    }

    report.budget_unit = BudgetUnit::Flops;
    for (const auto& t : trials) {
        if (t.config.contains("budget") && t.config["budget"].contains("unit")) {
            report.budget_unit = parse_choice<BudgetUnit>(
                t.config["budget"]["unit"].get<std::string>(), report.database, "budget.unit");
            break;
        }
    }

    const std::vector<TrialLabel> labels = label_trials(trials);
    std::map<int64_t, std::vector<const EvaluationRecord*>> evaluations_of;
    for (const auto& e : evaluations) evaluations_of[e.trial_id].push_back(&e);

    struct Accumulator {
        ReportRow row;
        std::vector<json> base_key, variant_key;
        std::map<double, ReportCell> cells;
    };
    std::map<std::string, Accumulator> rows;
    for (std::size_t i = 0; i < trials.size(); ++i) {
        const TrialRecord& trial = trials[i];
        const TrialLabel& label = labels[i];
        const std::string id =
            to_string(label.method) + "\x1f" + label.base + "\x1f" + label.variant;
        Accumulator& acc = rows[id];
        if (acc.row.label.empty()) {
            acc.row.method = label.method;
            acc.row.base = label.base;
            acc.row.variant = label.variant;
            acc.row.label = label.label;
            acc.base_key = label.base_key;
            acc.variant_key = label.variant_key;
        }
        std::set<double> planned;
        if (trial.method == Method::Pretrain) planned.insert(0.0);
        if (trial.config.contains("budget") && trial.config["budget"].contains("milestones")) {
            for (const auto& m : trial.config["budget"]["milestones"]) {
                planned.insert(budget_key(m.get<double>()));
            }
        }
        if (trial.method == Method::Pretrain) {
            SunkCost& sunk = report.sunk_costs[label.base];
            sunk.steps = trial.config.at("run").at("train").value("steps", int64_t{0});
            if (trial.status == TrialStatus::Done) {
                sunk.flops += trial.flops;
                sunk.tokens += static_cast<double>(trial.tokens);
                ++sunk.finished;
            }
        }
        std::set<double> evaluated;
        for (const EvaluationRecord* e : evaluations_of[trial.id]) {
            if (!e->metrics.is_object() || !e->metrics.contains(metric)) continue;
            const json& v = e->metrics[metric];
            const double key = budget_key(e->budget_percent);
            ReportCell& cell = acc.cells[key];
            cell.budget_percent = key;
            // Keyed by seed for pairing; two trials of one row with the same seed (a grid over
            // an excluded key such as upcycle.seed) both count, the second under its hash.
            std::string seed = label.seed;
            if (cell.values.count(seed)) seed += "/" + trial.hash;
            cell.values[seed] =
                v.is_number() ? v.get<double>() : std::numeric_limits<double>::quiet_NaN();
            evaluated.insert(key);
        }
        for (double b : planned) {
            ReportCell& cell = acc.cells[b];
            cell.budget_percent = b;
            ++cell.planned;
            if (trial.status == TrialStatus::Failed && !evaluated.count(b)) ++cell.failed;
        }
    }

    std::vector<Accumulator*> ordered;
    for (auto& [id, acc] : rows) ordered.push_back(&acc);
    std::sort(ordered.begin(), ordered.end(), [](const Accumulator* a, const Accumulator* b) {
        if (json_keys_less(a->base_key, b->base_key)) return true;
        if (json_keys_less(b->base_key, a->base_key)) return false;
        const int ra = method_rank(a->row.method), rb = method_rank(b->row.method);
        if (ra != rb) return ra < rb;
        if (a->row.method != b->row.method) return a->row.method < b->row.method;
        return json_keys_less(a->variant_key, b->variant_key);
    });

    std::set<double> budgets;
    for (Accumulator* acc : ordered) {
        for (auto& [b, cell] : acc->cells) {
            const SeedSummary summary = summarize(cell.values);
            cell.n = summary.n;
            cell.mean = summary.mean;
            cell.std = summary.std;
            budgets.insert(b);
            acc->row.cells.push_back(cell);
        }
        report.rows.push_back(std::move(acc->row));
    }
    report.budgets.assign(budgets.begin(), budgets.end());
    for (auto& [base, sunk] : report.sunk_costs) {
        if (sunk.finished == 0) continue;
        sunk.flops /= sunk.finished;
        sunk.tokens /= sunk.finished;
    }

    // Deltas to the dense row of the same base (the plain one when several), paired by seed.
    for (auto& row : report.rows) {
        if (row.method == Method::Pretrain) continue;
        const ReportRow* dense = dense_row_of(report, row.base);
        if (!dense) continue;
        row.has_dense_reference = true;
        for (auto& cell : row.cells) {
            if (const ReportCell* reference = dense->cell(cell.budget_percent))
                cell.vs_dense = paired_difference(cell.values, reference->values);
        }
    }
    report.noise_floor = noise_floor_of(report.rows);
    report.comparisons = comparisons_of(report);
    return report;
}

int Report::max_seeds() const {
    int most = 0;
    for (const auto& row : rows) {
        for (const auto& cell : row.cells) most = std::max(most, cell.n);
    }
    return most;
}

// ---- findings -------------------------------------------------------------------------------

namespace {

std::string budget_list(const std::vector<double>& budgets) {
    std::string text;
    for (double b : budgets) text += (text.empty() ? "" : ", ") + format_percent(b);
    return text;
}

std::string noise_floor_line(const Report& report) {
    if (const auto& f = report.noise_floor) {
        return fmt::format(
            "noise floor: the seed-to-seed std of a cell is {} (median of {} cell{} with up to {} "
            "seeds; {}–{}): a difference is a finding only when its 95% interval excludes 0",
            format_number(f->median_std), f->cells, f->cells == 1 ? "" : "s", f->max_seeds,
            format_number(f->min_std), format_number(f->max_std));
    }
    if (report.max_seeds() == 1) {
        return "noise floor: unknown — every cell evaluated has one seed, so no difference here "
               "can be told from seed noise; run the sweep with seeds: [1, 2, 3]";
    }
    return "";
}

// "better at 50%, 100%; tied at 10%, 25%" for the candidate against the reference.
std::string verdict(const Report& report, const Comparison& c) {
    std::vector<double> better, worse, tied, single;
    for (const auto& p : c.points) {
        const PairedDifference& d = p.difference;
        if (!d.has_interval())
            single.push_back(p.budget);
        else if (d.tie())
            tied.push_back(p.budget);
        else if ((*d.mean < 0) == report.lower_is_better)
            better.push_back(p.budget);
        else
            worse.push_back(p.budget);
    }
    std::vector<std::string> parts;
    if (!better.empty()) parts.push_back("better at " + budget_list(better));
    if (!tied.empty()) parts.push_back("tied at " + budget_list(tied));
    if (!worse.empty()) parts.push_back("worse at " + budget_list(worse));
    if (!single.empty()) {
        parts.push_back("one seed at " + budget_list(single) + " (no interval: not a finding)");
    }
    std::string text;
    for (const auto& part : parts) text += (text.empty() ? "" : "; ") + part;
    const auto& last = c.points.back();
    return text + fmt::format(" (Δ {} at {})", difference_text(last.difference),
                              format_percent(last.budget));
}

std::string crossover_text(const Comparison& c) {
    const Crossover& x = c.crossover;
    const std::string who =
        to_string(c.candidate_method) + " overtakes " + to_string(c.reference_method) + ": ";
    if (x.tied_everywhere) return who + "tied at every budget run, so no crossover can be placed";
    std::string text;
    switch (x.estimate.where) {
        case CrossingBound::Where::Before:
            text =
                fmt::format("before the first budget run ({})", format_percent(x.estimate.budget));
            break;
        case CrossingBound::Where::Beyond:
            text = fmt::format("not within the budgets run (up to {})",
                               format_percent(x.estimate.budget));
            break;
        case CrossingBound::Where::At: text = "at " + describe_bound(x.estimate); break;
    }
    if (!x.earliest || !x.latest) return who + text + "; one seed: no range";
    const bool same =
        x.earliest->where == x.latest->where && x.earliest->budget == x.latest->budget;
    return who + text + "; 95% range: " + describe_bound(*x.earliest) +
           (same ? "" : " … " + describe_bound(*x.latest));
}

std::string sunk_cost_text(const SunkCost& sunk) {
    if (sunk.finished == 0) return fmt::format("{} steps", sunk.steps);
    return fmt::format("{} steps, {:.3g}M tokens, {}", sunk.steps, sunk.tokens / 1e6,
                       format_flops(sunk.flops));
}

// Rows of the form "Δ vs dense" for each sunk cost, one block per continuation variant.
std::vector<std::vector<std::string>> sunk_cost_lines(const Report& report,
                                                      std::vector<double>& budgets) {
    std::set<double> columns;
    std::map<std::string, std::vector<const ReportRow*>> by_variant;  // method + variant
    for (const auto& row : report.rows) {
        if (!dense_reference(report, row) || row.method == Method::Scratch) continue;
        by_variant[join_words(to_string(row.method), row.variant)].push_back(&row);
        for (const auto& cell : row.cells) {
            if (cell.vs_dense.n > 0) columns.insert(cell.budget_percent);
        }
    }
    budgets.assign(columns.begin(), columns.end());
    std::vector<std::vector<std::string>> lines;
    for (const auto& [name, rows] : by_variant) {
        std::vector<std::string> header{name + " − dense", "sunk cost"};
        for (double b : budgets) header.push_back(format_percent(b));
        lines.push_back(header);
        for (const ReportRow* row : rows) {
            const auto sunk = report.sunk_costs.find(row->base);
            std::vector<std::string> line{"  " + row->base, sunk == report.sunk_costs.end()
                                                                ? ""
                                                                : sunk_cost_text(sunk->second)};
            for (double b : budgets) {
                const ReportCell* cell = row->cell(b);
                line.push_back(cell && cell->vs_dense.n > 0 ? difference_text(cell->vs_dense) : "");
            }
            lines.push_back(std::move(line));
        }
    }
    return lines;
}

// Columns padded to their widest entry (the first left-aligned, the rest right-aligned), two
// spaces apart, trailing spaces trimmed; a rule under the first line when `rule`.
std::string aligned(const std::vector<std::vector<std::string>>& lines, bool rule,
                    std::size_t left_columns = 1) {
    std::vector<std::size_t> widths;
    for (const auto& line : lines) {
        widths.resize(std::max(widths.size(), line.size()), 0);
        for (std::size_t c = 0; c < line.size(); ++c)
            widths[c] = std::max(widths[c], display_width(line[c]));
    }
    std::string out;
    auto emit = [&](const std::vector<std::string>& line) {
        std::string text;
        for (std::size_t c = 0; c < line.size(); ++c) {
            text += (c ? "  " : "") + pad(line[c], widths[c], c >= left_columns);
        }
        out += text.substr(0, text.find_last_not_of(' ') + 1) + "\n";
    };
    for (std::size_t i = 0; i < lines.size(); ++i) {
        emit(lines[i]);
        if (i == 0 && rule) {
            std::vector<std::string> dashes;
            for (std::size_t w : widths) dashes.push_back(std::string(w, '-'));
            emit(dashes);
        }
    }
    return out;
}

// The noise floor, the findings and the sunk-cost table under a table.
std::string notes(const Report& report) {
    std::string out;
    const std::string floor = noise_floor_line(report);
    if (!floor.empty()) out += "\n" + floor + "\n";
    const auto findings = report_findings(report);
    if (!findings.empty()) {
        out += "\nwhat the data show (" + report.metric + "; paired by seed, 95% intervals):\n";
        for (const auto& line : findings) out += "  " + line + "\n";
    }
    if (report.sunk_costs.size() >= 2) {
        std::vector<double> budgets;
        const auto lines = sunk_cost_lines(report, budgets);
        if (!lines.empty()) {
            out +=
                "\nΔ vs dense for each pretraining continued (its sunk cost; paired by seed, ± "
                "95% interval):\n";
            out += aligned(lines, false, 2);
        }
    }
    return out;
}

}  // namespace

std::vector<std::string> report_findings(const Report& report) {
    std::vector<std::string> lines;
    for (const auto& c : report.comparisons) {
        if (c.points.empty()) continue;
        lines.push_back(c.candidate + " vs " + c.reference + ": " + verdict(report, c));
        lines.push_back("  " + crossover_text(c));
        for (const auto& p : c.equal_total_compute) {
            const PairedDifference& d = p.difference;
            const std::string verdict_text = !d.has_interval() ? "one seed"
                                             : d.tie()         ? "tied"
                                             : ((*d.mean < 0) == report.lower_is_better) ? "better"
                                                                                         : "worse";
            lines.push_back(fmt::format(
                "  at equal total compute (the sunk cost counted): {} at {} vs {} at +{}: {} "
                "(Δ {})",
                to_string(c.candidate_method), format_percent(p.budget + kSunkCostPercent),
                to_string(c.reference_method), format_percent(p.budget), verdict_text,
                difference_text(d)));
        }
    }
    return lines;
}

// ---- formats --------------------------------------------------------------------------------

std::string report_table(const Report& report) {
    std::vector<std::vector<std::string>> lines;
    std::vector<std::string> header{"method"};
    for (double b : report.budgets) header.push_back(format_percent(b));
    lines.push_back(header);
    for (const auto& row : report.rows) {
        std::vector<std::string> line{row.label};
        for (double b : report.budgets) line.push_back(cell_text(row.cell(b)));
        lines.push_back(std::move(line));
        if (const ReportRow* dense = dense_reference(report, row)) {
            std::vector<std::string> delta{std::string("  ") + kDeltaLabel};
            for (double b : report.budgets) delta.push_back(delta_text(row, dense, b));
            lines.push_back(std::move(delta));
        }
    }
    std::string out = caption(report) + "\n" + columns_caption(report) + "\n" + report.database +
                      ", " + status_line(report) + "\n\n" + aligned(lines, true);
    const auto legend = legend_lines(report);
    if (!legend.empty()) out += "\n";
    for (const auto& line : legend) out += line + "\n";
    return out + notes(report);
}

std::string report_markdown(const Report& report) {
    std::string out = fmt::format(
        "**{}** · `{}` ({}; {} is better), mean ± std over seeds · {} · "
        "…: not evaluated yet\n\n",
        markdown_escape(report.sweep), report.metric, metric_description(report.metric),
        report.lower_is_better ? "lower" : "higher", columns_caption(report));
    out += "| method |";
    for (double b : report.budgets) out += " " + format_percent(b) + " |";
    out += "\n| :--- |";
    for (std::size_t i = 0; i < report.budgets.size(); ++i) out += " ---: |";
    out += "\n";
    for (const auto& row : report.rows) {
        out += "| " + markdown_escape(row.label) + " |";
        for (double b : report.budgets) out += markdown_cell(cell_text(row.cell(b)));
        out += "\n";
        if (const ReportRow* dense = dense_reference(report, row)) {
            out += std::string("| ↳ ") + kDeltaLabel + " |";
            for (double b : report.budgets) out += markdown_cell(delta_text(row, dense, b));
            out += "\n";
        }
    }
    const std::string more = notes(report);
    if (!more.empty()) out += "\n```" + more + "```\n";
    return out;
}

namespace {

std::optional<double> sunk_flops_of(const Report& report, const ReportRow& row) {
    const auto it = report.sunk_costs.find(row.base);
    if (it == report.sunk_costs.end() || it->second.finished == 0) return std::nullopt;
    return it->second.flops;
}

std::optional<double> tie_of(const PairedDifference& d) {
    if (!d.has_interval()) return std::nullopt;
    return d.tie() ? 1.0 : 0.0;
}

}  // namespace

std::string report_csv(const Report& report) {
    std::string out =
        "method,variant,budget_percent,n,mean,std,delta_vs_dense,delta_n,delta_std,delta_low,"
        "delta_high,tie,sunk_flops\n";
    for (const auto& row : report.rows) {
        for (const auto& cell : row.cells) {
            const PairedDifference& d = cell.vs_dense;
            out += fmt::format("{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
                               csv_field(to_string(row.method)), csv_field(row.variant_text()),
                               cell.budget_percent, cell.n, csv_number(cell.mean),
                               csv_number(cell.std), csv_number(d.mean), d.n, csv_number(d.std),
                               csv_number(d.low()), csv_number(d.high()), csv_number(tie_of(d)),
                               csv_number(sunk_flops_of(report, row)));
        }
    }
    return out;
}

std::string report_json(const Report& report) {
    using ordered = nlohmann::ordered_json;
    auto number = [](const std::optional<double>& v) -> ordered {
        if (!v || !std::isfinite(*v)) return nullptr;
        return *v;
    };
    auto bound = [](const std::optional<CrossingBound>& b) -> ordered {
        if (!b) return nullptr;
        const char* where = b->where == CrossingBound::Where::Before   ? "before"
                            : b->where == CrossingBound::Where::Beyond ? "beyond"
                                                                       : "at";
        return ordered{{"where", where}, {"budget_percent", b->budget}};
    };
    ordered rows = ordered::array();
    for (const auto& row : report.rows) {
        for (const auto& cell : row.cells) {
            const PairedDifference& d = cell.vs_dense;
            ordered seeds = ordered::object();
            for (const auto& [seed, value] : cell.values) seeds[seed] = number(value);
            rows.push_back(ordered{{"method", to_string(row.method)},
                                   {"variant", row.variant_text()},
                                   {"budget_percent", cell.budget_percent},
                                   {"n", cell.n},
                                   {"mean", number(cell.mean)},
                                   {"std", number(cell.std)},
                                   {"delta_vs_dense", number(d.mean)},
                                   {"delta_n", d.n},
                                   {"delta_std", number(d.std)},
                                   {"delta_low", number(d.low())},
                                   {"delta_high", number(d.high())},
                                   {"tie", d.has_interval() ? ordered(d.tie()) : ordered()},
                                   {"sunk_flops", number(sunk_flops_of(report, row))},
                                   {"seeds", seeds}});
        }
    }
    ordered comparisons = ordered::array();
    for (const auto& c : report.comparisons) {
        ordered points = ordered::array();
        for (const auto& p : c.points) {
            points.push_back(ordered{
                {"budget_percent", p.budget},
                {"n", p.difference.n},
                {"delta", number(p.difference.mean)},
                {"low", number(p.difference.low())},
                {"high", number(p.difference.high())},
                {"tie", p.difference.has_interval() ? ordered(p.difference.tie()) : ordered()}});
        }
        ordered equal_total = ordered::array();
        for (const auto& p : c.equal_total_compute) {
            equal_total.push_back(ordered{{"budget_percent", p.budget},
                                          {"candidate_total_percent", p.budget + kSunkCostPercent},
                                          {"n", p.difference.n},
                                          {"delta", number(p.difference.mean)},
                                          {"low", number(p.difference.low())},
                                          {"high", number(p.difference.high())}});
        }
        const Crossover& x = c.crossover;
        comparisons.push_back(
            ordered{{"candidate", c.candidate},
                    {"reference", c.reference},
                    {"base", c.base},
                    {"points", points},
                    {"equal_total_compute", equal_total},
                    {"crossover", x.known ? ordered{{"estimate", bound(x.estimate)},
                                                    {"earliest", bound(x.earliest)},
                                                    {"latest", bound(x.latest)},
                                                    {"tied_everywhere", x.tied_everywhere}}
                                          : ordered()}});
    }
    ordered sunk = ordered::array();
    for (const auto& [base, cost] : report.sunk_costs) {
        sunk.push_back(ordered{{"base", base},
                               {"steps", cost.steps},
                               {"finished", cost.finished},
                               {"flops", cost.finished ? ordered(cost.flops) : ordered()},
                               {"tokens", cost.finished ? ordered(cost.tokens) : ordered()}});
    }
    ordered floor;
    if (const auto& f = report.noise_floor) {
        floor = ordered{{"cells", f->cells},
                        {"max_seeds", f->max_seeds},
                        {"median_std", f->median_std},
                        {"min_std", f->min_std},
                        {"max_std", f->max_std}};
    }
    const ordered out{{"sweep", report.sweep},
                      {"metric", report.metric},
                      {"budget_unit", to_string(report.budget_unit)},
                      {"lower_is_better", report.lower_is_better},
                      {"noise_floor", floor},
                      {"rows", rows},
                      {"comparisons", comparisons},
                      {"sunk_costs", sunk}};
    return out.dump(2, ' ', false, ordered::error_handler_t::replace) + "\n";
}

// RFC 4180: a field with a comma, quote or line break is quoted, quotes doubled.
std::string csv_field(const std::string& text) {
    if (text.find_first_of(",\"\r\n") == std::string::npos) return text;
    std::string out = "\"";
    for (char c : text) {
        if (c == '"') out += '"';
        out += c;
    }
    return out + "\"";
}

}  // namespace upcycle
