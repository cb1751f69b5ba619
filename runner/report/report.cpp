#include "runner/report/report.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <tuple>

#include <fmt/format.h>

#include "core/errors.h"
#include "core/sweep/sweep.h"

namespace upcycle {

namespace {

using nlohmann::json;
using Flat = std::map<std::string, json>;

constexpr const char* kMissing = "…";
constexpr const char* kDeltaLabel = "Δ vs dense";
constexpr int kDecimals = 4;
constexpr double kBudgetResolution = 1e6;  // budgets equal to 1e-6 % are the same column

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

std::string delta_text(const ReportRow& row, const ReportRow* dense, double budget) {
    const ReportCell* cell = row.cell(budget);
    const ReportCell* reference = dense ? dense->cell(budget) : nullptr;
    if (!cell || !reference) return "";
    if (cell->delta_vs_dense) return format_signed(*cell->delta_vs_dense);
    return kMissing;
}

// The dense row that gives `row` its deltas, if it shows a delta line at all.
const ReportRow* dense_reference(const Report& report, const ReportRow& row) {
    if (row.method == Method::Pretrain || row.method == Method::Dense || !row.has_dense_reference) {
        return nullptr;
    }
    const ReportRow* found = nullptr;
    for (const auto& r : report.rows) {
        if (r.method == Method::Dense && r.base == row.base && (!found || r.variant.empty()))
            found = &r;
    }
    return found;
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
        "difference to dense continuation at the same budget",
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
        std::map<double, std::vector<double>> values;
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
        std::set<double> evaluated;
        for (const EvaluationRecord* e : evaluations_of[trial.id]) {
            if (!e->metrics.is_object() || !e->metrics.contains(metric)) continue;
            const json& v = e->metrics[metric];
            const double key = budget_key(e->budget_percent);
            acc.values[key].push_back(v.is_number() ? v.get<double>()
                                                    : std::numeric_limits<double>::quiet_NaN());
            evaluated.insert(key);
            acc.cells[key].budget_percent = key;
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
            const auto& values = acc->values[b];
            cell.n = static_cast<int>(values.size());
            if (cell.n > 0) {
                double sum = 0;
                for (double v : values) sum += v;
                const double mean = sum / cell.n;
                cell.mean = mean;
                if (cell.n >= 2) {
                    double squares = 0;
                    for (double v : values) squares += (v - mean) * (v - mean);
                    cell.std = std::sqrt(squares / (cell.n - 1));
                }
            }
            budgets.insert(b);
            acc->row.cells.push_back(cell);
        }
        report.rows.push_back(std::move(acc->row));
    }
    report.budgets.assign(budgets.begin(), budgets.end());

    // Deltas to the dense row of the same base (the plain one when several).
    for (auto& row : report.rows) {
        if (row.method == Method::Pretrain) continue;
        const ReportRow* dense = nullptr;
        for (const auto& r : report.rows) {
            if (r.method == Method::Dense && r.base == row.base && (!dense || r.variant.empty()))
                dense = &r;
        }
        if (!dense) continue;
        row.has_dense_reference = true;
        for (auto& cell : row.cells) {
            const ReportCell* reference = dense->cell(cell.budget_percent);
            if (cell.mean && reference && reference->mean) {
                cell.delta_vs_dense = *cell.mean - *reference->mean;
            }
        }
    }
    return report;
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
    std::vector<std::size_t> widths(header.size(), 0);
    for (const auto& line : lines) {
        for (std::size_t c = 0; c < line.size(); ++c)
            widths[c] = std::max(widths[c], display_width(line[c]));
    }
    std::string out = caption(report) + "\n" + columns_caption(report) + "\n" + report.database +
                      ", " + status_line(report) + "\n\n";
    auto emit = [&](const std::vector<std::string>& line) {
        std::string text;
        for (std::size_t c = 0; c < line.size(); ++c) {
            text += (c ? "  " : "") + pad(line[c], widths[c], c > 0);
        }
        out += text.substr(0, text.find_last_not_of(' ') + 1) + "\n";
    };
    emit(lines.front());
    std::vector<std::string> rule;
    for (std::size_t w : widths) rule.push_back(std::string(w, '-'));
    emit(rule);
    for (std::size_t i = 1; i < lines.size(); ++i) emit(lines[i]);
    const auto legend = legend_lines(report);
    if (!legend.empty()) out += "\n";
    for (const auto& line : legend) out += line + "\n";
    return out;
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
    return out;
}

std::string report_csv(const Report& report) {
    std::string out = "method,variant,budget_percent,n,mean,std,delta_vs_dense\n";
    for (const auto& row : report.rows) {
        for (const auto& cell : row.cells) {
            out += fmt::format("{},{},{},{},{},{},{}\n", csv_field(to_string(row.method)),
                               csv_field(row.variant_text()), cell.budget_percent, cell.n,
                               csv_number(cell.mean), csv_number(cell.std),
                               csv_number(cell.delta_vs_dense));
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
    ordered rows = ordered::array();
    for (const auto& row : report.rows) {
        for (const auto& cell : row.cells) {
            rows.push_back(ordered{{"method", to_string(row.method)},
                                   {"variant", row.variant_text()},
                                   {"budget_percent", cell.budget_percent},
                                   {"n", cell.n},
                                   {"mean", number(cell.mean)},
                                   {"std", number(cell.std)},
                                   {"delta_vs_dense", number(cell.delta_vs_dense)}});
        }
    }
    return rows.dump(2, ' ', false, ordered::error_handler_t::replace) + "\n";
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
