// upcycle query "SQL" [--db results/upcycle.db] [--format table|csv|json] [--max-width N]:
// one read-only SQL statement over the results store (runner/store/SCHEMA.md has the tables).
#include <atomic>
#include <csignal>
#include <cstdio>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/errors.h"
#include "runner/commands.h"
#include "runner/report/report.h"
#include "runner/store/store.h"

namespace upcycle::cli {

namespace {

constexpr std::size_t kDefaultMaxWidth = 60;
constexpr const char* kEllipsis = "…";

struct QueryArgs {
    std::string sql;
    std::string db = kDefaultDatabasePath;
    std::string format = "table";
    std::size_t max_width = kDefaultMaxWidth;
};

bool is_utf8_continuation(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

// Width on a terminal, counting code points (good enough for the text a store holds).
std::size_t display_width(const std::string& s) {
    std::size_t n = 0;
    for (char c : s) n += is_utf8_continuation(c) ? 0 : 1;
    return n;
}

// One line per row: newlines and tabs are shown escaped; long text is cut at max_width.
std::string table_text(const QueryCell& cell, std::size_t max_width) {
    if (cell.type == QueryCell::Type::Null) return "NULL";
    std::string out;
    for (char c : cell.text) {
        if (c == '\n')
            out += "\\n";
        else if (c == '\t')
            out += "\\t";
        else if (c == '\r')
            out += "\\r";
        else
            out += c;
    }
    if (max_width == 0 || display_width(out) <= max_width) return out;
    std::size_t keep = 0, points = 0;
    while (keep < out.size() && points < max_width - 1) {
        ++keep;
        while (keep < out.size() && is_utf8_continuation(out[keep])) ++keep;
        ++points;
    }
    return out.substr(0, keep) + kEllipsis;
}

std::string pad(const std::string& s, std::size_t width, bool right) {
    const std::size_t w = display_width(s);
    const std::string fill(width > w ? width - w : 0, ' ');
    return right ? fill + s : s + fill;
}

void print_table(const QueryResult& result, std::size_t max_width) {
    const std::size_t columns = result.columns.size();
    std::vector<std::vector<std::string>> cells;
    std::vector<std::size_t> widths(columns);
    for (std::size_t c = 0; c < columns; ++c) widths[c] = display_width(result.columns[c]);
    for (const auto& row : result.rows) {
        auto& texts = cells.emplace_back();
        for (std::size_t c = 0; c < columns; ++c) {
            texts.push_back(table_text(row[c], max_width));
            widths[c] = std::max(widths[c], display_width(texts.back()));
        }
    }
    auto numeric = [](const QueryCell& cell) {
        return cell.type == QueryCell::Type::Integer || cell.type == QueryCell::Type::Real;
    };
    std::string line;
    for (std::size_t c = 0; c < columns; ++c) {
        line += (c ? "  " : "") + pad(result.columns[c], widths[c], false);
    }
    fmt::print("{}\n", line.substr(0, line.find_last_not_of(' ') + 1));
    line.clear();
    for (std::size_t c = 0; c < columns; ++c) line += (c ? "  " : "") + std::string(widths[c], '-');
    fmt::print("{}\n", line);
    for (std::size_t r = 0; r < cells.size(); ++r) {
        line.clear();
        for (std::size_t c = 0; c < columns; ++c) {
            line += (c ? "  " : "") + pad(cells[r][c], widths[c], numeric(result.rows[r][c]));
        }
        fmt::print("{}\n", line.substr(0, line.find_last_not_of(' ') + 1));
    }
    fmt::print("({} row{})\n", result.rows.size(), result.rows.size() == 1 ? "" : "s");
}

void print_csv(const QueryResult& result) {
    std::string line;
    for (std::size_t c = 0; c < result.columns.size(); ++c) {
        line += (c ? "," : "") + csv_field(result.columns[c]);
    }
    fmt::print("{}\n", line);
    for (const auto& row : result.rows) {
        line.clear();
        for (std::size_t c = 0; c < row.size(); ++c)
            line += (c ? "," : "") + csv_field(row[c].text);
        fmt::print("{}\n", line);
    }
}

nlohmann::ordered_json json_value(const QueryCell& cell) {
    switch (cell.type) {
        case QueryCell::Type::Null: return nullptr;
        case QueryCell::Type::Integer: return std::stoll(cell.text);
        case QueryCell::Type::Real: return std::stod(cell.text);  // ±inf is written as null
        case QueryCell::Type::Text:
        case QueryCell::Type::Blob: return cell.text;
    }
    return nullptr;
}

void print_json(const QueryResult& result) {
    nlohmann::ordered_json rows = nlohmann::ordered_json::array();  // columns in query order
    for (const auto& row : result.rows) {
        nlohmann::ordered_json object = nlohmann::ordered_json::object();
        for (std::size_t c = 0; c < row.size(); ++c) object[result.columns[c]] = json_value(row[c]);
        rows.push_back(std::move(object));
    }
    // invalid UTF-8 in a TEXT cell is replaced rather than aborting the output
    fmt::print("{}\n", rows.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace));
}

std::atomic<bool> g_stop_query{false};
extern "C" void request_query_stop(int) { g_stop_query.store(true); }

int run_query(const QueryArgs& args) {
    if (args.format != "table" && args.format != "csv" && args.format != "json") {
        throw UserError("", "--format", "expected table, csv or json, got '" + args.format + "'");
    }
    const Store store(args.db, Store::Mode::ReadOnly);
    // Ctrl-C stops a runaway statement (a cross join, a recursive CTE) instead of being lost
    // inside SQLite
    std::signal(SIGINT, request_query_stop);
    std::signal(SIGTERM, request_query_stop);
    QueryResult result;
    try {
        result = store.query(args.sql, &g_stop_query);
    } catch (const QueryInterrupted&) {
        fmt::print(stderr, "upcycle query: interrupted\n");
        return 130;
    }
    if (args.format == "csv")
        print_csv(result);
    else if (args.format == "json")
        print_json(result);
    else
        print_table(result, args.max_width);
    return 0;
}

}  // namespace

Command add_query_command(CLI::App& app) {
    auto args = std::make_shared<QueryArgs>();
    auto* sub =
        app.add_subcommand("query",
                           "Run one read-only SQL statement over the results store (tables: "
                           "runner/store/SCHEMA.md)");
    sub->add_option("sql", args->sql,
                    "the SQL, e.g. \"SELECT status, count(*) FROM trials "
                    "GROUP BY status\"")
        ->required();
    sub->add_option("--db", args->db, "results database")->capture_default_str();
    sub->add_option("--format", args->format, "table | csv | json")->capture_default_str();
    sub->add_option("--max-width", args->max_width,
                    "cut table cells longer than this many characters (0: never)")
        ->capture_default_str();
    return [args] { return run_query(*args); };
}

}  // namespace upcycle::cli
