#include "runner/report/plot.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <stdexcept>

#include <fmt/format.h>

#include "core/errors.h"
#include "core/flops.h"
#include "core/sweep/sweep.h"
#include "runner/report/report.h"

namespace upcycle {

namespace {

namespace fs = std::filesystem;

constexpr const char* kFont = "sans,11";
constexpr const char* kPretrainColor = "#000000";
constexpr double kShadeSpread = 0.7;           // variants of a method: from lighter to darker
constexpr double kLogPad = 1.25;               // comparison x range: budgets ÷ and × this
constexpr std::size_t kMaxUniformGuides = 16;  // expert_load: 1/E guides up to this many experts
constexpr int kCurvesWidth = 1100, kCurvesHeight = 900;
constexpr int kComparisonWidth = 1100, kComparisonHeight = 720;
// A second panel zooms in on the rows other than scratch when they span less than this
// fraction of the whole y-range (scratch starting far above them), with this margin (a
// fraction of their span) on either side.
constexpr double kZoomWhenSpanBelow = 2.0 / 3.0;
constexpr double kZoomMargin = 0.06;
constexpr double kDodge = 0.015;  // lines' x apart by this factor at one budget or sunk cost
constexpr int kSunkPanelWidth = 600, kSunkPanelHeight = 480;
constexpr int kSunkMinWidth = 1000;  // the title's two lines fit
constexpr int kPanelWidth = 560, kPanelHeight = 340, kTitleHeight = 70;
constexpr double kRawCurveLightness = 0.65;  // the raw train_loss behind its EMA: faint

// Okabe–Ito colours, one per method; variants are shades of their method's.
std::string method_color(Method method) {
    switch (method) {
        case Method::Pretrain: return kPretrainColor;
        case Method::Dense: return "#0072B2";
        case Method::Upcycle: return "#D55E00";
        case Method::Scratch: return "#009E73";
        case Method::Warmstart: return "#CC79A7";
    }
    return "#E69F00";
}

// Shade k of n of a colour: the middle one is the colour itself.
std::string shade(const std::string& hex, std::size_t k, std::size_t n) {
    if (n <= 1) return hex;
    const double t = (static_cast<double>(k) / static_cast<double>(n - 1) - 0.5) * kShadeSpread;
    std::string out = "#";
    for (int c = 0; c < 3; ++c) {
        const double v = std::stoi(hex.substr(1 + 2 * c, 2), nullptr, 16);
        const double mixed = t < 0 ? v + (255.0 - v) * -t : v * (1.0 - t);
        out += fmt::format("{:02X}", static_cast<int>(std::lround(std::clamp(mixed, 0.0, 255.0))));
    }
    return out;
}

// A colour mixed with white: `amount` 0 keeps it, 1 is white (the faint raw training curves).
std::string lighten(const std::string& hex, double amount) {
    std::string out = "#";
    for (int c = 0; c < 3; ++c) {
        const double v = std::stoi(hex.substr(1 + 2 * c, 2), nullptr, 16);
        out += fmt::format("{:02X}", static_cast<int>(std::lround(v + (255.0 - v) * amount)));
    }
    return out;
}

// Point types that read apart: filled circle, square, triangle, diamond, pentagon, …
int point_type(std::size_t k) {
    static const int types[] = {7, 5, 9, 13, 15, 11, 3, 1};
    return types[k % (sizeof(types) / sizeof(types[0]))];
}

// The 12 colours that expert bands cycle through.
const char* const kBandColors[] = {"#4E79A7", "#F28E2B", "#E15759", "#76B7B2",
                                   "#59A14F", "#EDC948", "#B07AA1", "#FF9DA7",
                                   "#9C755F", "#BAB0AC", "#86BCB6", "#D37295"};

// A gnuplot double-quoted string.
std::string gp_string(const std::string& text) {
    std::string out = "\"";
    for (char c : text) {
        if (c == '\\' || c == '"') out += '\\';
        if (c == '\n') {
            out += "\\n";
            continue;
        }
        out += c;
    }
    return out + "\"";
}

std::string number(double v) {
    if (!std::isfinite(v)) return "NaN";
    return fmt::format("{:.10g}", v);
}

// Letters, digits, '.', '-' and '_'; anything else becomes '-'.
std::string slug(const std::string& text) {
    std::string out;
    for (char c : text) {
        const bool keep =
            std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
        if (keep)
            out += c;
        else if (!out.empty() && out.back() != '-')
            out += '-';
    }
    while (!out.empty() && out.back() == '-') out.pop_back();
    return out;
}

void write_text(const fs::path& path, const std::string& text) {
    std::ofstream out(path, std::ios::binary);
    out << text;
    out.close();
    if (!out) throw UserError(path.string(), "", "cannot write this file");
}

// The terminals every script writes, around the figure's drawing commands.
std::string terminals_loop(const std::string& name, int width, int height,
                           const std::string& body) {
    return fmt::format(
        "do for [ext in \"png svg\"] {{\n"
        "    if (ext eq \"png\") {{\n"
        "        set terminal pngcairo size {w},{h} font \"{font}\" noenhanced\n"
        "    }} else {{\n"
        "        set terminal svg size {w},{h} font \"{font}\" noenhanced dynamic background "
        "\"white\"\n"
        "    }}\n"
        "    set output \"{name}.\".ext\n"
        "{body}"
        "    set output\n"
        "}}\n",
        fmt::arg("w", width), fmt::arg("h", height), fmt::arg("font", kFont),
        fmt::arg("name", name), fmt::arg("body", body));
}

std::string script_header(const std::string& name, const std::string& what,
                          const std::string& sweep) {
    return fmt::format(
        "# {what}: sweep '{sweep}', written by `upcycle plot`.\n"
        "# Data: {name}.dat (blocks separated by two blank lines; `index N` picks block N).\n"
        "# Edit and re-draw in this directory: gnuplot {name}.gp  (writes {name}.png and "
        "{name}.svg)\n"
        "reset\n"
        "set encoding utf8\n",
        fmt::arg("what", what), fmt::arg("sweep", sweep), fmt::arg("name", name));
}

struct GnuplotRun {
    int exit_code = -1;
    std::string output;
};

// Runs `gnuplot SCRIPT` in `dir`, stdout and stderr captured together.
GnuplotRun run_gnuplot(const fs::path& gnuplot, const fs::path& dir, const std::string& script) {
    int pipe_fds[2];
    if (pipe(pipe_fds) != 0) throw std::runtime_error("pipe() failed");
    const pid_t pid = fork();
    if (pid < 0) throw std::runtime_error("fork() failed");
    if (pid == 0) {
        close(pipe_fds[0]);
        dup2(pipe_fds[1], STDOUT_FILENO);
        dup2(pipe_fds[1], STDERR_FILENO);
        close(pipe_fds[1]);
        if (chdir(dir.c_str()) != 0) _exit(126);
        const std::string program = gnuplot.string();
        execl(program.c_str(), program.c_str(), script.c_str(), static_cast<char*>(nullptr));
        _exit(127);
    }
    close(pipe_fds[1]);
    GnuplotRun run;
    char buffer[4096];
    ssize_t n;
    while ((n = read(pipe_fds[0], buffer, sizeof(buffer))) > 0) run.output.append(buffer, n);
    close(pipe_fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return run;
}

class FigureWriter {
public:
    FigureWriter(fs::path dir, fs::path gnuplot, PlotOutput& output)
        : dir_(std::move(dir)), gnuplot_(std::move(gnuplot)), output_(output) {}

    // Writes NAME.dat and NAME.gp, runs gnuplot, records the files.
    void draw(const std::string& name, const std::string& data, const std::string& script) {
        const fs::path dat = dir_ / (name + ".dat"), gp = dir_ / (name + ".gp");
        write_text(dat, data);
        write_text(gp, script);
        output_.sources.push_back(gp);
        output_.sources.push_back(dat);
        const GnuplotRun run = run_gnuplot(gnuplot_, dir_, name + ".gp");
        if (run.exit_code != 0) {
            throw std::runtime_error(fmt::format("gnuplot failed on {} (exit {}):\n{}", gp.string(),
                                                 run.exit_code, run.output));
        }
        for (const char* ext : {".png", ".svg"}) output_.figures.push_back(dir_ / (name + ext));
    }

private:
    fs::path dir_, gnuplot_;
    PlotOutput& output_;
};

// Colour and point type of every report row, by label.
struct Style {
    std::string color;
    int point = 7;
};

std::map<std::string, Style> row_styles(const std::vector<std::pair<Method, std::string>>& rows) {
    // rows: (method, label) in report order
    std::map<Method, std::size_t> per_method;
    for (const auto& [method, label] : rows) ++per_method[method];
    std::map<Method, std::size_t> seen;
    std::map<std::string, Style> styles;
    for (const auto& [method, label] : rows) {
        if (styles.count(label)) continue;
        const std::size_t k = seen[method]++;
        styles[label] = {shade(method_color(method), k, per_method[method]), point_type(k)};
    }
    return styles;
}

// "validation loss" of "validation loss, nats per prediction": the description without its unit.
std::string metric_name(const std::string& metric) {
    const std::string description = metric_description(metric);
    return description.substr(0, description.find(','));
}

// ---- a zoom panel for what scratch squeezes ----------------------------------------------

// The y-range of what a panel draws (error bars included).
struct Extent {
    double lo = std::numeric_limits<double>::infinity();
    double hi = -std::numeric_limits<double>::infinity();
    void add(double v) {
        if (!std::isfinite(v)) return;
        lo = std::min(lo, v);
        hi = std::max(hi, v);
    }
    bool empty() const { return lo > hi; }
};

struct YRange {
    double lo = 0, hi = 0;
};

// The zoomed y-range around `kept` (the rows other than scratch) when it takes too little of
// `all` to read; nullopt when one panel is enough.
std::optional<YRange> zoom_range(const Extent& all, const Extent& kept) {
    if (all.empty() || kept.empty()) return std::nullopt;
    const double whole = all.hi - all.lo, span = kept.hi - kept.lo;
    if (whole <= 0 || span >= kZoomWhenSpanBelow * whole) return std::nullopt;
    const double pad = kZoomMargin * (span > 0 ? span : whole);
    return YRange{kept.lo - pad, kept.hi + pad};
}

// The drawing commands of a figure that may need its zoom, and the figure's height: one panel
// titled `title` (the key below it, as the script sets), or two stacked panels, the second on
// the zoomed y-range with what falls outside clipped, over one key of `key_entries` lines.
struct Drawing {
    std::string body;
    int height = 0;
};

Drawing zoomable_body(const std::string& title, const std::string& xlabel, const std::string& plot,
                      const std::optional<YRange>& zoom, const std::string& zoom_title,
                      std::size_t key_entries, int single_height) {
    if (!zoom) {
        return {fmt::format("    set title {}\n    set xlabel {}\n{}\n", gp_string(title),
                            gp_string(xlabel), plot),
                single_height};
    }
    // pixels from the top: the titles, a panel, its tics and the next title, a panel, its tics
    // and axis label, then the key (one line per entry: gnuplot ignores maxrows for a key
    // placed `at`)
    constexpr int kTop = 90, kPanel = 380, kBetween = 80, kBelow = 70, kKeyLine = 19;
    const int key = static_cast<int>(key_entries) * kKeyLine + 30;
    const int height = kTop + 2 * kPanel + kBetween + kBelow + key;
    auto at = [&](int pixels_from_top) { return number(1.0 - double(pixels_from_top) / height); };
    return {fmt::format("    set multiplot title {}\n"
                        "        set lmargin at screen 0.08\n"
                        "        set rmargin at screen 0.97\n"
                        "        set tmargin at screen {}\n"
                        "        set bmargin at screen {}\n"
                        "        set key at screen 0.5, screen {} center top box opaque\n"
                        "        set title \"every row\"\n"
                        "        unset xlabel\n"
                        "    {}\n"
                        "        unset key\n"
                        "        set tmargin at screen {}\n"
                        "        set bmargin at screen {}\n"
                        "        set title {}\n"
                        "        set xlabel {}\n"
                        "        set yrange [{}:{}]\n"
                        "    {}\n"
                        "    unset multiplot\n"
                        "    set yrange [*:*]\n",
                        gp_string(title), at(kTop), at(kTop + kPanel), at(height - key + 10), plot,
                        at(kTop + kPanel + kBetween), at(kTop + 2 * kPanel + kBetween),
                        gp_string(zoom_title), gp_string(xlabel), number(zoom->lo),
                        number(zoom->hi), plot),
            height};
}

// gnuplot's `set xtics (…)` list: one tic per budget, labelled "10%".
std::string budget_tics(const std::vector<double>& budgets) {
    std::string tics;
    for (double b : budgets) {
        // tic labels are format strings to gnuplot: "%%" is a percent sign
        tics += fmt::format("{}{} {}", tics.empty() ? "" : ", ", gp_string(fmt::format("{}%%", b)),
                            number(b));
    }
    return tics;
}

// The settings the comparison and the differences share: `ylabel` against the budgets on a
// log x axis from lo to hi, one tic per budget, the key below.
std::string budget_axis(const std::string& ylabel, double lo, double hi,
                        const std::vector<double>& budgets) {
    return fmt::format(
        "set ylabel {}\n"
        "set logscale x\n"
        "set xrange [{}:{}]\n"
        "set xtics ({})\n"
        "set mxtics default\n"
        "set grid xtics ytics\n"
        "set key below height 1.5\n"
        "set bars small\n",
        gp_string(ylabel), number(lo), number(hi), budget_tics(budgets));
}

// "lower is better" read as the sign of a difference to dense continuation.
std::string better_sign(const Report& report) {
    return report.lower_is_better ? "below 0: better than dense continuation"
                                  : "above 0: better than dense continuation";
}

// ---- comparison ----------------------------------------------------------------------------

void draw_comparison(const Store& store, const std::string& sweep, const PlotOptions& options,
                     const Report& report, FigureWriter& writer, PlotOutput& output) {
    std::vector<std::pair<Method, std::string>> labelled;
    for (const auto& row : report.rows) labelled.emplace_back(row.method, row.label);
    const auto styles = row_styles(labelled);

    std::vector<double> budgets;
    for (double b : report.budgets) {
        if (b > 0) budgets.push_back(b);
    }
    bool any_continuation = false;
    for (const auto& row : report.rows) {
        if (row.method == Method::Pretrain) continue;
        for (const auto& cell : row.cells) any_continuation |= cell.mean.has_value();
    }
    if (!any_continuation || budgets.empty()) {
        output.notes.push_back(
            fmt::format("comparison: skipped (no continuation of sweep '{}' has recorded {} yet)",
                        sweep, options.metric));
        return;
    }
    const double lo = budgets.front() / kLogPad, hi = budgets.back() * kLogPad;

    std::string data, plots;
    int index = 0;
    auto add_plot = [&](const std::string& command) {
        plots += (plots.empty() ? "    plot " : ", \\\n         ") + command;
    };
    Extent all, kept;  // kept: every row but scratch, which the zoom panel clips
    auto extend = [&](Method method, double lo, double hi) {
        for (Extent* e : {&all, &kept}) {
            if (e == &kept && method == Method::Scratch) continue;
            e->add(lo);
            e->add(hi);
        }
    };
    for (const auto& row : report.rows) {
        const Style& style = styles.at(row.label);
        if (row.method == Method::Pretrain) {
            const ReportCell* cell = row.cell(0);
            if (!cell || !cell->mean) continue;
            extend(row.method, *cell->mean, *cell->mean);
            data += fmt::format(
                "# {}: the dense checkpoint (mean over {} seed{}), drawn across "
                "the budgets\n# budget_percent {}\n{} {}\n{} {}\n\n\n",
                row.label, cell->n, cell->n == 1 ? "" : "s", options.metric, number(lo),
                number(*cell->mean), number(hi), number(*cell->mean));
            add_plot(
                fmt::format("\"comparison.dat\" index {} using 1:2 with lines dt 2 lw 2 "
                            "lc rgb \"{}\" title {}",
                            index++, style.color, gp_string(row.label)));
            continue;
        }
        std::string block;
        bool bars = false, incomplete = false;
        for (const auto& cell : row.cells) {
            incomplete |= cell.n < cell.planned;
            if (!cell.mean) continue;
            bars |= cell.std.has_value();
            const double spread = cell.std.value_or(0.0);
            extend(row.method, *cell.mean - spread, *cell.mean + spread);
            block += fmt::format("{} {} {} {}\n", number(cell.budget_percent), number(*cell.mean),
                                 number(cell.std.value_or(0.0)), cell.n);
        }
        if (block.empty()) continue;
        data += fmt::format("# {}\n# budget_percent mean std n_seeds\n{}\n\n", row.label, block);
        std::string title =
            row.method == Method::Scratch ? row.label + " (total compute)" : row.label;
        if (incomplete) title += " (seeds missing)";
        const std::string dash = row.method == Method::Scratch ? " dt 4" : "";
        add_plot(
            fmt::format("\"comparison.dat\" index {} using 1:2{} with {} lw 2 pt {} ps 1.1{} "
                        "lc rgb \"{}\" title {}",
                        index++, bars ? ":3" : "", bars ? "yerrorlines" : "linespoints",
                        style.point, dash, style.color, gp_string(title)));
    }

    double sunk = 0;
    int pretrainings = 0;
    for (const auto& t : store.trials(sweep)) {
        if (t.method == Method::Pretrain && t.flops > 0) {
            sunk += t.flops;
            ++pretrainings;
        }
    }
    std::string subtitle = "mean over seeds, bars ± 1 std where 2 or more seeds";
    if (pretrainings > 0)
        subtitle += "; sunk cost " + format_flops(sunk / pretrainings) + " of dense pretraining";
    std::string script = script_header("comparison", "Continuation methods compared", sweep);
    script +=
        budget_axis(metric_description(options.metric) +
                        (report.lower_is_better ? " (lower is better)" : " (higher is better)"),
                    lo, hi, budgets);
    const Drawing drawing = zoomable_body(
        fmt::format("{}: {} against extra compute\n{}", sweep, metric_name(options.metric),
                    subtitle),
        unit_phrase(report.budget_unit) +
            ", % of the sunk cost (scratch: its total compute, log scale)",
        plots, zoom_range(all, kept), "zoomed in on the rows other than scratch (scratch clipped)",
        static_cast<std::size_t>(index), kComparisonHeight);
    script += terminals_loop("comparison", kComparisonWidth, drawing.height, drawing.body);
    writer.draw("comparison", data, script);
}

// ---- differences to dense continuation -----------------------------------------------------

// One data block of a row's paired differences: budget, mean, the 95% interval's bounds and
// half-width (NaN without an interval), seeds paired. Widens `extent` by what it draws.
std::string difference_block(const ReportRow& row, Extent& extent, bool& intervals,
                             bool& single_seed) {
    std::string block;
    for (const auto& cell : row.cells) {
        const PairedDifference& d = cell.vs_dense;
        if (!d.mean) continue;
        const bool interval = d.has_interval();
        intervals |= interval;
        single_seed |= !interval;
        extent.add(interval ? *d.low() : *d.mean);
        extent.add(interval ? *d.high() : *d.mean);
        block += fmt::format("{} {} {} {} {} {}\n", number(cell.budget_percent), number(*d.mean),
                             number(interval ? *d.low() : NAN), number(interval ? *d.high() : NAN),
                             number(d.half_width.value_or(NAN)), d.n);
    }
    return block;
}

void draw_differences(const std::string& sweep, const Report& report, FigureWriter& writer,
                      PlotOutput& output) {
    std::vector<std::pair<Method, std::string>> labelled;
    for (const auto& row : report.rows) labelled.emplace_back(row.method, row.label);
    const auto styles = row_styles(labelled);

    std::string data, plots;
    std::set<double> budgets;
    Extent all, kept;  // kept: every row but scratch, which the zoom panel clips
    all.add(0.0);
    kept.add(0.0);
    int index = 0;
    for (const auto& row : report.rows) {
        if (row.method == Method::Pretrain || row.method == Method::Dense ||
            !row.has_dense_reference)
            continue;
        Extent extent;
        bool intervals = false, single_seed = false;
        const std::string block = difference_block(row, extent, intervals, single_seed);
        if (block.empty()) continue;
        for (const auto& cell : row.cells) {
            if (cell.vs_dense.mean) budgets.insert(cell.budget_percent);
        }
        for (Extent* e : {&all, &kept}) {
            if (e == &kept && row.method == Method::Scratch) continue;
            e->add(extent.lo);
            e->add(extent.hi);
        }
        data += fmt::format(
            "# {} − dense, paired by seed\n"
            "# budget_percent delta_mean delta_low delta_high half_width_95 n_pairs\n{}\n\n",
            row.label, block);
        const Style& style = styles.at(row.label);
        std::string title =
            row.method == Method::Scratch ? row.label + " (total compute)" : row.label;
        if (single_seed) title += intervals ? " (some one seed: no bar)" : " (one seed: no bar)";
        const std::string dash = row.method == Method::Scratch ? " dt 4" : "";
        // x is dodged per row (dodge(i) in the script) so that intervals at one budget stand apart
        plots += fmt::format(
            ", \\\n         \"differences.dat\" index {0} using ($1*dodge({0})):2 with "
            "linespoints lw 2 pt {1} ps 1.1{2} lc rgb \"{3}\" title {4}",
            index, style.point, dash, style.color, gp_string(title));
        if (intervals) {
            plots += fmt::format(
                ", \\\n         \"differences.dat\" index {0} using ($1*dodge({0})):2:3:4 with "
                "yerrorbars lw 2 pt {1} ps 1.1 lc rgb \"{2}\" notitle",
                index, style.point, style.color);
        }
        ++index;
    }
    if (index == 0) {
        output.notes.push_back(
            fmt::format("differences: skipped (no continuation of sweep '{}' has a {} paired "
                        "with dense continuation yet)",
                        sweep, report.metric));
        return;
    }
    const double lo = *budgets.begin() / kLogPad, hi = *budgets.rbegin() * kLogPad;
    const std::string plot = fmt::format(
        "    plot 0 with lines dt 2 lw 2 lc rgb \"{}\" title \"dense continuation "
        "(Δ = 0)\"{}",
        kPretrainColor, plots);

    std::string script =
        script_header("differences", "Paired differences to dense continuation", sweep);
    script += budget_axis("Δ vs dense continuation: " + metric_description(report.metric), lo, hi,
                          {budgets.begin(), budgets.end()});
    script += fmt::format(
        "set offsets 0, 0, graph 0.04, graph 0.04\n"
        "set label \"dense continuation\" at graph 0.01, first 0 left offset 0, 0.6 "
        "textcolor rgb \"{}\"\n"
        "# rows side by side at one budget: a factor on x, centred on the row in the middle\n"
        "dodge(i) = 1 + {} * (i - {} / 2.0)\n",
        kPretrainColor, number(kDodge), index - 1);
    const Drawing drawing = zoomable_body(
        fmt::format("{}: Δ vs dense continuation (paired by seed, 95% interval)\n{}: each row − "
                    "dense at the same extra compute; {}",
                    sweep, metric_name(report.metric), better_sign(report)),
        unit_phrase(report.budget_unit) +
            ", % of the sunk cost (scratch: its total compute, log scale)",
        plot, zoom_range(all, kept), "zoomed in on the rows other than scratch (scratch clipped)",
        static_cast<std::size_t>(index) + 1, kComparisonHeight);
    script += terminals_loop("differences", kComparisonWidth, drawing.height, drawing.body);
    writer.draw("differences", data, script);
}

// ---- gain against sunk cost -----------------------------------------------------------------

// "5.12k", "1.3M": a count for a tic label.
std::string si_count(double v) {
    static const char* const kSuffixes[] = {"", "k", "M", "G", "T", "P"};
    std::size_t i = 0;
    while (std::abs(v) >= 1000 && i + 1 < std::size(kSuffixes)) {
        v /= 1000;
        ++i;
    }
    return fmt::format("{:.3g}{}", v, kSuffixes[i]);
}

// The x axis of the sunk-cost figure: pretraining tokens, or steps when a pretraining in view
// has not recorded its tokens (not finished yet).
struct SunkAxis {
    bool tokens = true;
    double of(const SunkCost& sunk) const {
        return tokens ? sunk.tokens : static_cast<double>(sunk.steps);
    }
    std::string tic(const SunkCost& sunk) const {
        // tic labels are format strings to gnuplot: no '%' in these
        return tokens ? fmt::format("{} ({} steps)", si_count(sunk.tokens), sunk.steps)
                      : std::to_string(sunk.steps);
    }
};

// The rows drawn against their sunk cost, grouped by what they are apart from the base
// ("upcycle experts=4"), in report order: the continuations other than dense and scratch
// (scratch reuses no sunk cost) that have a dense reference and a known pretraining.
std::vector<std::pair<std::string, std::vector<const ReportRow*>>> sunk_cost_groups(
    const Report& report) {
    std::vector<std::pair<std::string, std::vector<const ReportRow*>>> groups;
    for (const auto& row : report.rows) {
        if (row.method == Method::Pretrain || row.method == Method::Dense ||
            row.method == Method::Scratch || !row.has_dense_reference ||
            !report.sunk_costs.count(row.base))
            continue;
        std::string name = to_string(row.method);
        if (!row.variant.empty()) name += " " + row.variant;
        auto it = std::find_if(groups.begin(), groups.end(),
                               [&](const auto& g) { return g.first == name; });
        if (it == groups.end()) it = groups.insert(groups.end(), {name, {}});
        it->second.push_back(&row);
    }
    return groups;
}

SunkAxis sunk_axis_of(
    const Report& report,
    const std::vector<std::pair<std::string, std::vector<const ReportRow*>>>& groups) {
    SunkAxis axis;
    for (const auto& [name, rows] : groups) {
        for (const ReportRow* row : rows) {
            const SunkCost& sunk = report.sunk_costs.at(row->base);
            axis.tokens &= sunk.finished > 0 && sunk.tokens > 0;
        }
    }
    return axis;
}

void draw_sunk_cost(const std::string& sweep, const Report& report, FigureWriter& writer,
                    PlotOutput& output) {
    if (report.sunk_costs.size() < 2) {
        output.notes.push_back(fmt::format(
            "sunk_cost: skipped (sweep '{}' has {} sunk cost{}; grid the pretraining, e.g. "
            "pretrain.steps, to see the gain against it)",
            sweep, report.sunk_costs.size(), report.sunk_costs.size() == 1 ? "" : "s"));
        return;
    }
    const auto groups = sunk_cost_groups(report);
    const SunkAxis axis = sunk_axis_of(report, groups);

    std::string data, panels;
    std::map<double, std::string> tics;  // x → label, of the sunk costs drawn
    int index = 0;
    std::size_t drawn = 0;  // panels
    for (const auto& [name, rows] : groups) {
        std::set<double> budgets;
        for (const ReportRow* row : rows) {
            for (const auto& cell : row->cells) {
                if (cell.vs_dense.mean) budgets.insert(cell.budget_percent);
            }
        }
        std::vector<std::pair<double, const ReportRow*>> by_x;  // ascending sunk cost
        for (const ReportRow* row : rows)
            by_x.emplace_back(axis.of(report.sunk_costs.at(row->base)), row);
        std::sort(by_x.begin(), by_x.end(),
                  [](const auto& a, const auto& c) { return a.first < c.first; });
        const Method method = rows.front()->method;
        std::string plots;
        std::size_t k = 0;
        for (double b : budgets) {
            std::string block, bases;
            bool intervals = false;
            for (const auto& [x, row] : by_x) {
                const ReportCell* cell = row->cell(b);
                if (!cell || !cell->vs_dense.mean || x <= 0) continue;
                const PairedDifference& d = cell->vs_dense;
                const SunkCost& sunk = report.sunk_costs.at(row->base);
                intervals |= d.has_interval();
                tics[x] = axis.tic(sunk);
                block += fmt::format("{} {} {} {} {} {} {} {}\n", number(x), number(*d.mean),
                                     number(d.low().value_or(NAN)), number(d.high().value_or(NAN)),
                                     d.n, sunk.steps, number(sunk.tokens), number(sunk.flops));
                bases += fmt::format("{}{} at {}", bases.empty() ? "" : ", ",
                                     row->base.empty() ? "(no varying key)" : row->base, number(x));
            }
            if (block.empty()) continue;
            data += fmt::format(
                "# {} − dense at {} extra compute, paired by seed, by sunk cost\n"
                "# pretrainings: {}\n"
                "# sunk_{} delta_mean delta_low delta_high n_pairs sunk_steps sunk_tokens "
                "sunk_flops\n{}\n\n",
                name, format_percent(b), bases, axis.tokens ? "tokens" : "steps", block);
            const std::string color = shade(method_color(method), k, budgets.size());
            plots += fmt::format(
                ", \\\n        \"sunk_cost.dat\" index {0} using ($1*dodge({1},{2})):2 with "
                "linespoints lw 2 pt {3} ps 1.1 lc rgb \"{4}\" title {5}",
                index, k, budgets.size(), point_type(k), color, gp_string("+" + format_percent(b)));
            if (intervals) {
                plots += fmt::format(
                    ", \\\n        \"sunk_cost.dat\" index {0} using ($1*dodge({1},{2})):2:3:4 "
                    "with yerrorbars lw 2 pt {3} ps 1.1 lc rgb \"{4}\" notitle",
                    index, k, budgets.size(), point_type(k), color);
            }
            ++index;
            ++k;
        }
        if (plots.empty()) continue;
        panels += fmt::format(
            "    set title {}\n"
            "    plot 0 with lines dt 2 lw 2 lc rgb \"{}\" title \"dense (Δ = 0)\"{}\n",
            gp_string(name + " − dense continuation"), kPretrainColor, plots);
        ++drawn;
    }
    if (tics.size() < 2) {
        output.notes.push_back(fmt::format(
            "sunk_cost: skipped (no continuation of sweep '{}' has a {} paired with dense "
            "continuation at two sunk costs yet)",
            sweep, report.metric));
        return;
    }
    std::string tic_list;
    for (const auto& [x, label] : tics) {
        tic_list += fmt::format("{}\"{}\" {}", tic_list.empty() ? "" : ", ", label, number(x));
    }
    const std::size_t cols = drawn >= 2 ? 2 : 1, rows = (drawn + cols - 1) / cols;

    std::string script = script_header("sunk_cost", "Gain against sunk cost", sweep);
    script += fmt::format(
        "set xlabel {}\n"
        "set ylabel {}\n"
        "set logscale x\n"
        "set xrange [{}:{}]\n"
        "set xtics ({})\n"
        "set grid xtics ytics\n"
        "set key below\n"
        "set bars small\n"
        "set offsets 0, 0, graph 0.06, graph 0.06\n"
        "# budgets side by side at one sunk cost: a factor on x, centred on the middle one\n"
        "dodge(k, n) = 1 + {} * (k - (n - 1) / 2.0)\n",
        gp_string(axis.tokens ? "sunk cost: the dense pretraining's training tokens (log scale)"
                              : "sunk cost: the dense pretraining's steps (log scale; tokens "
                                "not recorded yet)"),
        gp_string("Δ " + metric_description(report.metric)), number(tics.begin()->first / kLogPad),
        number(tics.rbegin()->first * kLogPad), tic_list, number(kDodge));
    const std::string body = fmt::format(
        "    set multiplot layout {},{} title {}\n{}    unset multiplot\n", rows, cols,
        gp_string(fmt::format("{}: gain against sunk cost, Δ vs dense continuation (paired by "
                              "seed, 95% interval)\n{}: one line per extra budget (% of each "
                              "sunk cost); {}",
                              sweep, metric_name(report.metric), better_sign(report))),
        panels);
    script += terminals_loop("sunk_cost",
                             std::max(kSunkMinWidth, static_cast<int>(kSunkPanelWidth * cols) + 40),
                             static_cast<int>(kSunkPanelHeight * rows) + kTitleHeight + 30, body);
    writer.draw("sunk_cost", data, script);
}

// ---- training curves -----------------------------------------------------------------------

void draw_training_curves(const Store& store, const std::string& sweep, FigureWriter& writer,
                          PlotOutput& output) {
    const std::vector<TrialRecord> trials = store.trials(sweep);
    const std::vector<TrialLabel> labels = label_trials(trials);
    // The report's rows give the colours (as in the comparison) and the drawing order.
    const Report report = build_report(store, sweep, "val_loss");
    std::vector<std::pair<Method, std::string>> labelled;
    for (const auto& row : report.rows) labelled.emplace_back(row.method, row.label);
    const auto styles = row_styles(labelled);

    std::map<int64_t, double> total_flops;  // a trial's training FLOPs so far
    std::map<int64_t, std::vector<MetricRow>> train, val;
    for (const auto& t : trials) {
        train[t.id] = store.metrics(t.id, "train_loss");
        val[t.id] = store.metrics(t.id, "val_loss");
        double flops = t.flops;
        for (const auto& m : train[t.id]) flops = std::max(flops, m.flops);
        total_flops[t.id] = flops;
    }
    auto offset_of = [&](const TrialRecord& t) {
        if (t.method == Method::Pretrain || restarts_step_counter(t.method) || !t.parent)
            return 0.0;
        if (const auto it = total_flops.find(*t.parent); it != total_flops.end()) return it->second;
        const auto parent = store.trial(*t.parent);
        return parent ? parent->flops : 0.0;
    };

    // Draw order: as the report's rows (pretrainings first), then by trial id.
    std::vector<std::size_t> order(trials.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::map<std::string, std::size_t> row_rank;
    for (std::size_t r = 0; r < report.rows.size(); ++r) row_rank[report.rows[r].label] = r;
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
        return row_rank[labels[a].label] < row_rank[labels[b].label];
    });

    std::string data, raw, lines, points;  // raw: drawn first, behind every smoothed line
    int index = 0;
    std::set<std::string> titled;
    std::set<double> checkpoints;
    double continuation_start = -1;
    for (std::size_t i : order) {
        const TrialRecord& t = trials[i];
        const double offset = offset_of(t);
        if (offset > 0) {
            checkpoints.insert(offset);
            continuation_start =
                continuation_start < 0 ? offset : std::min(continuation_start, offset);
        }
        const Style& style = styles.at(labels[i].label);
        const std::string who =
            fmt::format("trial {} {} seed {}", t.id, labels[i].label, labels[i].seed);
        // `smoothed`: a fifth column, the EMA of the values (train_loss only)
        auto block = [&](const std::vector<MetricRow>& rows, const std::string& key,
                         bool smoothed) {
            std::string text = fmt::format(
                "# {} ({}; FLOPs offset {} = its checkpoint's)\n"
                "# flops_cumulative step {} trial_flops{}\n",
                who, key, number(offset), key,
                smoothed ? fmt::format(" {}_ema(alpha={})", key, number(ema_alpha(rows.size())))
                         : "");
            std::vector<double> values;
            for (const auto& m : rows) values.push_back(m.value);
            const std::vector<double> ema = smoothed ? ema_smoothed(values) : values;
            for (std::size_t k = 0; k < rows.size(); ++k) {
                const MetricRow& m = rows[k];
                text += fmt::format("{} {} {} {}", number(m.flops + offset), m.step,
                                    number(m.value), number(m.flops));
                text += smoothed ? " " + number(ema[k]) + "\n" : "\n";
            }
            return text + "\n\n";
        };
        if (!train[t.id].empty()) {
            data += block(train[t.id], "train_loss", true);
            const bool first = titled.insert(labels[i].label).second;
            raw += fmt::format(
                "\"training_curves.dat\" index {} using 1:3 with lines lw 0.8 lc rgb \"{}\" "
                "notitle, \\\n             ",
                index, lighten(style.color, kRawCurveLightness));
            lines += fmt::format(
                "{}\"training_curves.dat\" index {} using 1:5 with lines lw 1.5 "
                "lc rgb \"{}\" {}",
                lines.empty() ? "" : ", \\\n             ", index++, style.color,
                first ? "title " + gp_string(labels[i].label) : "notitle");
        }
        if (!val[t.id].empty()) {
            data += block(val[t.id], "val_loss", false);
            points += fmt::format(
                ", \\\n             \"training_curves.dat\" index {} using 1:3 "
                "with points pt {} ps 1.1 lc rgb \"{}\" notitle",
                index++, style.point, style.color);
        }
    }
    if (lines.empty() && points.empty()) {
        output.notes.push_back(fmt::format(
            "training_curves: skipped (no trial of sweep '{}' has logged train_loss or val_loss "
            "yet)",
            sweep));
        return;
    }
    if (lines.empty()) points = points.substr(std::string(", \\\n             ").size());
    const std::string plot = "        plot " + raw + lines + points + "\n";

    std::string arrows;
    for (double c : checkpoints) {
        arrows += fmt::format(
            "set arrow from {0}, graph 0 to {0}, graph 1 nohead dt 3 lw 1.5 "
            "lc rgb \"#555555\"\n",
            number(c));
    }
    const bool zoom = continuation_start > 0;
    std::string body = fmt::format(
        "    set multiplot layout {},1 title {}\n"
        "        set lmargin at screen 0.08\n"
        "        set rmargin at screen 0.74\n"
        "        set key at screen 0.99, screen 0.93 right top box opaque\n"
        "        set title \"the whole of training\"\n"
        "{}"
        "        unset key\n",
        zoom ? 2 : 1,
        gp_string(fmt::format("{}: training loss (lines: EMA over 5% of a trial's logged "
                              "points, faint: as logged) and validation loss (points)\n"
                              "continuations start at their dense checkpoint's FLOPs (dotted "
                              "line), scratch at 0",
                              sweep)),
        plot);
    if (zoom) {
        body += fmt::format(
            "        set title \"continuations (from the dense checkpoint on)\"\n"
            "        set xrange [{}:*]\n"
            "{}"
            "    unset multiplot\n"
            "    set xrange [*:*]\n",
            number(continuation_start * 0.98), plot);
    } else {
        body += "    unset multiplot\n";
    }
    std::string script = script_header("training_curves", "Training curves", sweep);
    script += fmt::format(
        "set xlabel \"training FLOPs, cumulative (a continuation adds its checkpoint's)\"\n"
        "set ylabel \"loss (nats per prediction)\"\n"
        "set format x \"%.1te%T\"\n"
        "set grid\n"
        "{}",
        arrows);
    script += terminals_loop("training_curves", kCurvesWidth,
                             zoom ? kCurvesHeight : kCurvesHeight / 2 + 100, body);
    writer.draw("training_curves", data, script);
}

// ---- expert load ---------------------------------------------------------------------------

void draw_expert_load(const Store& store, const std::string& sweep, FigureWriter& writer,
                      PlotOutput& output) {
    const std::vector<TrialRecord> trials = store.trials(sweep);
    const std::vector<TrialLabel> labels = label_trials(trials);
    int drawn = 0;
    for (std::size_t i = 0; i < trials.size(); ++i) {
        const TrialRecord& t = trials[i];
        const std::vector<RoutingRow> routing = store.routing(t.id);
        if (routing.empty()) continue;
        std::map<int, std::vector<const RoutingRow*>> by_layer;
        std::size_t experts = 0;
        for (const auto& r : routing) {
            if (!r.tokens_per_expert.is_array() || r.tokens_per_expert.empty()) continue;
            by_layer[r.layer].push_back(&r);
            experts = std::max(experts, r.tokens_per_expert.size());
        }
        if (by_layer.empty()) continue;

        const std::string name = fmt::format("expert_load_{}_seed{}_trial{}", slug(labels[i].label),
                                             slug(labels[i].seed), t.id);
        std::string data;
        std::string panels;
        int index = 0;
        for (const auto& [layer, rows] : by_layer) {
            data += fmt::format(
                "# layer {}: step, then the stacked boundaries of experts 0..{} "
                "(fraction of routed tokens), dropped_fraction\n",
                layer, experts - 1);
            double dropped = 0;
            int counted = 0;
            for (const RoutingRow* r : rows) {
                double total = 0;
                for (const auto& c : r->tokens_per_expert)
                    total += c.is_number() ? c.get<double>() : 0.0;
                if (total <= 0) continue;
                std::string line = fmt::format("{} 0", r->step);
                double cumulative = 0;
                for (std::size_t e = 0; e < experts; ++e) {
                    const auto& c = e < r->tokens_per_expert.size() ? r->tokens_per_expert[e]
                                                                    : nlohmann::json(0);
                    cumulative += (c.is_number() ? c.get<double>() : 0.0) / total;
                    line += " " + number(cumulative);
                }
                data += line + " " + number(r->dropped_fraction) + "\n";
                if (std::isfinite(r->dropped_fraction)) {
                    dropped += r->dropped_fraction;
                    ++counted;
                }
            }
            data += "\n\n";
            const std::string title = counted > 0
                                          ? fmt::format("layer {} (mean dropped fraction {:.1f}%)",
                                                        layer, 100.0 * dropped / counted)
                                          : fmt::format("layer {}", layer);
            panels += fmt::format(
                "        set title {}\n"
                "        plot for [e=0:{}] \"{}.dat\" index {} using 1:(column(e+2)):(column(e+3)) "
                "with filledcurves fs solid 0.9 noborder lc (e % 12) + 1 notitle{}\n",
                gp_string(title), experts - 1, name, index++,
                experts >= 2 && experts <= kMaxUniformGuides
                    ? fmt::format(
                          ", for [k=1:{}] k/{}.0 with lines dt 2 lw 1 lc rgb \"#333333\" notitle",
                          experts - 1, experts)
                    : "");
        }
        const int layers = static_cast<int>(by_layer.size());
        const int cols = layers >= 2 ? 2 : 1;
        const int rows = (layers + cols - 1) / cols;
        std::string script = script_header(name, "Expert load", sweep);
        for (int c = 0; c < 12; ++c) {
            script += fmt::format("set linetype {} lc rgb \"{}\"\n", c + 1, kBandColors[c]);
        }
        script += fmt::format(
            "set xlabel \"training step\"\n"
            "set ylabel \"fraction of routed tokens\"\n"
            "set yrange [0:1]\n"
            "set xrange [*:*] noextend\n"
            "set ytics 0.25\n"
            "set grid front\n"
            "set samples 200\n");
        const std::string body = fmt::format(
            "    set multiplot layout {},{} title {}\n{}    unset multiplot\n", rows, cols,
            gp_string(fmt::format("{}: expert load of trial {}, {} seed {} ({} experts)\n"
                                  "bands: experts 0 (bottom) to {} (top); dashed: the uniform "
                                  "share 1/{}",
                                  sweep, t.id, labels[i].label, labels[i].seed, experts,
                                  experts - 1, experts)),
            panels);
        script +=
            terminals_loop(name, kPanelWidth * cols + 40, kPanelHeight * rows + kTitleHeight, body);
        writer.draw(name, data, script);
        ++drawn;
    }
    if (drawn == 0) {
        output.notes.push_back(fmt::format(
            "expert_load: skipped (no MoE trial of sweep '{}' has logged routing statistics yet)",
            sweep));
    }
}

}  // namespace

double ema_alpha(std::size_t points) {
    const double tau = std::max(1.0, kEmaTimeConstantFraction * static_cast<double>(points));
    return 1.0 - std::exp(-1.0 / tau);
}

std::vector<double> ema_smoothed(const std::vector<double>& values) {
    const double alpha = ema_alpha(values.size());
    std::vector<double> out;
    out.reserve(values.size());
    double average = 0, weight = 0;  // weight = 1 − (1 − α)^k: the bias correction
    for (double x : values) {
        if (!std::isfinite(x)) {
            out.push_back(std::numeric_limits<double>::quiet_NaN());
            continue;
        }
        average = (1.0 - alpha) * average + alpha * x;
        weight = (1.0 - alpha) * weight + alpha;
        out.push_back(average / weight);
    }
    return out;
}

std::optional<fs::path> find_gnuplot(const std::string& program) {
    auto executable = [](const fs::path& p) {
        std::error_code ec;
        return fs::is_regular_file(p, ec) && access(p.c_str(), X_OK) == 0;
    };
    if (program.find('/') != std::string::npos) {
        if (executable(program)) return fs::path(program);
        return std::nullopt;
    }
    const char* path = std::getenv("PATH");
    if (!path) return std::nullopt;
    std::string dirs = path;
    std::size_t start = 0;
    while (start <= dirs.size()) {
        const std::size_t end = std::min(dirs.find(':', start), dirs.size());
        const std::string dir = dirs.substr(start, end - start);
        const fs::path candidate = fs::path(dir.empty() ? "." : dir) / program;
        if (executable(candidate)) return candidate;
        start = end + 1;
    }
    return std::nullopt;
}

PlotOutput make_plots(const Store& store, const std::string& sweep, const PlotOptions& options) {
    // an unknown sweep or metric is a UserError before anything is written
    const Report report = build_report(store, sweep, options.metric);
    const auto gnuplot = find_gnuplot(options.gnuplot);
    if (!gnuplot) {
        throw UserError(
            "", "gnuplot",
            fmt::format("'{}' was not found: `upcycle plot` draws with gnuplot; install "
                        "the Debian package gnuplot-nox (scripts/setup.sh does)",
                        options.gnuplot));
    }
    std::error_code ec;
    fs::create_directories(options.out_dir, ec);
    if (ec)
        throw UserError(options.out_dir.string(), "--out",
                        "cannot create the directory: " + ec.message());
    // gnuplot runs in the output directory: the scripts name their files relative to it.
    const fs::path gnuplot_path = fs::absolute(*gnuplot);

    PlotOutput output;
    FigureWriter writer(options.out_dir, gnuplot_path, output);
    draw_comparison(store, sweep, options, report, writer, output);
    draw_differences(sweep, report, writer, output);
    draw_sunk_cost(sweep, report, writer, output);
    draw_training_curves(store, sweep, writer, output);
    draw_expert_load(store, sweep, writer, output);
    return output;
}

}  // namespace upcycle
