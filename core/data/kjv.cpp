#include "core/data/kjv.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fmt/format.h>
#include <map>
#include <memory>
#include <optional>
#include <set>

#include "core/errors.h"

namespace upcycle {

namespace {

constexpr const char* kProgram = "bible";
constexpr const char* kRange = "Genesis 1:1-Revelation 22:21";
constexpr const char* kInstallHint =
    "install the Debian package bible-kjv (sudo apt-get install bible-kjv, or scripts/setup.sh)";
constexpr std::size_t kReadChunk = std::size_t{1} << 20;
constexpr std::size_t kShownErrorChars = 300;  // stderr text quoted in an error message
constexpr std::size_t kShownLineChars = 80;    // output line quoted in a parse error

struct FileCloser {
    void operator()(std::FILE* f) const {
        if (f) std::fclose(f);
    }
};

// The program's full path, searched in PATH like a shell would; nullopt when absent.
std::optional<std::filesystem::path> find_in_path(const std::string& program) {
    const char* path_env = std::getenv("PATH");
    std::string path;
    if (path_env) {
        path = path_env;
    } else {  // what a shell searches when PATH is unset: the system's default path
        path.resize(::confstr(_CS_PATH, nullptr, 0));
        if (!path.empty()) ::confstr(_CS_PATH, path.data(), path.size());
        while (!path.empty() && path.back() == '\0') path.pop_back();
    }
    std::size_t start = 0;
    while (start <= path.size()) {
        const std::size_t colon = std::min(path.find(':', start), path.size());
        const std::string dir = path.substr(start, colon - start);
        const std::filesystem::path candidate =
            std::filesystem::path(dir.empty() ? "." : dir) / program;
        std::error_code ec;
        if (std::filesystem::is_regular_file(candidate, ec) &&
            ::access(candidate.c_str(), X_OK) == 0)
            return candidate;
        start = colon + 1;
    }
    return std::nullopt;
}

std::string shell_quote(const std::string& s) {
    std::string out = "'";
    for (const char c : s) {
        if (c == '\'')
            out += "'\\''";
        else
            out += c;
    }
    return out + "'";
}

std::string read_all(std::FILE* f) {
    std::string out;
    std::size_t got = 0;
    do {
        const std::size_t old = out.size();
        out.resize(old + kReadChunk);
        got = std::fread(out.data() + old, 1, kReadChunk, f);
        out.resize(old + got);
    } while (got > 0);
    return out;
}

// A temp file that removes itself.
struct TempFile {
    std::filesystem::path path;
    TempFile() {
        std::string templ =
            (std::filesystem::temp_directory_path() / "upcycle-bible-XXXXXX").string();
        const int fd = ::mkstemp(templ.data());
        if (fd >= 0) {
            ::close(fd);
            path = templ;
        }
    }
    ~TempFile() {
        std::error_code ignored;
        if (!path.empty()) std::filesystem::remove(path, ignored);
    }
    TempFile(const TempFile&) = delete;
    TempFile& operator=(const TempFile&) = delete;
};

// "Ge1:1 text" -> book "Ge", text "text"; nullopt if the line does not start with a reference.
struct Reference {
    std::string book;
    std::string_view text;
};
std::optional<Reference> parse_reference(std::string_view line) {
    std::size_t i = 0;
    if (i < line.size() && line[i] >= '1' && line[i] <= '3') ++i;
    const std::size_t letters = i;
    while (i < line.size() && std::isalpha(static_cast<unsigned char>(line[i]))) ++i;
    if (i == letters) return std::nullopt;
    const std::size_t book_end = i;
    const std::size_t chapter = i;
    while (i < line.size() && std::isdigit(static_cast<unsigned char>(line[i]))) ++i;
    if (i == chapter || i >= line.size() || line[i] != ':') return std::nullopt;
    const std::size_t verse = ++i;
    while (i < line.size() && std::isdigit(static_cast<unsigned char>(line[i]))) ++i;
    if (i == verse) return std::nullopt;
    if (i < line.size() && line[i] != ' ') return std::nullopt;
    Reference ref{std::string(line.substr(0, book_end)), {}};
    if (i < line.size()) ref.text = line.substr(i + 1);
    return ref;
}

std::string quoted_line(std::string_view line) {
    std::string s(line.substr(0, kShownLineChars));
    if (line.size() > kShownLineChars) s += "...";
    return "\"" + s + "\"";
}

}  // namespace

const std::vector<std::string>& kjv_book_abbreviations() {
    static const std::vector<std::string> books = {
        "Ge",    "Exo",  "Lev",  "Num",  "Deu",  "Josh", "Jdgs", "Ruth", "1Sm",  "2Sm",   "1Ki",
        "2Ki",   "1Chr", "2Chr", "Ezra", "Neh",  "Est",  "Job",  "Psa",  "Prv",  "Eccl",  "SSol",
        "Isa",   "Jer",  "Lam",  "Eze",  "Dan",  "Hos",  "Joel", "Amos", "Obad", "Jonah", "Mic",
        "Nahum", "Hab",  "Zep",  "Hag",  "Zec",  "Mal",  "Mat",  "Mark", "Luke", "John",  "Acts",
        "Rom",   "1Cor", "2Cor", "Gal",  "Eph",  "Phi",  "Col",  "1Th",  "2Th",  "1Tim",  "2Tim",
        "Titus", "Phmn", "Heb",  "Jas",  "1Pet", "2Pet", "1Jn",  "2Jn",  "3Jn",  "Jude",  "Rev",
    };
    return books;
}

const std::vector<std::string>& kjv_validation_books() {
    // whole books from both testaments, ~5% of the text bytes (see kjv.h for the byte counts)
    static const std::vector<std::string> books = {"Ruth", "Eccl", "Lam", "Hos",
                                                   "Mark", "Gal",  "Jas", "1Jn"};
    return books;
}

std::vector<KjvBook> parse_kjv_output(std::string_view output, const std::string& source) {
    const auto& canon = kjv_book_abbreviations();
    std::map<std::string, std::size_t, std::less<>> index;
    for (std::size_t i = 0; i < canon.size(); ++i) index.emplace(canon[i], i);

    std::vector<KjvBook> books;
    std::size_t line_no = 0;
    std::size_t pos = 0;
    while (pos < output.size()) {
        std::size_t eol = output.find('\n', pos);
        if (eol == std::string_view::npos) eol = output.size();
        std::string_view line = output.substr(pos, eol - pos);
        pos = eol + 1;
        ++line_no;
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        if (line.find_first_not_of(" \t") == std::string_view::npos) continue;

        const auto ref = parse_reference(line);
        if (!ref) {
            // a wrapped continuation of the previous verse
            if (books.empty())
                throw UserError(source, "",
                                fmt::format("unparsable output at line {}: expected a verse "
                                            "reference like \"Ge1:1 \", found {}",
                                            line_no, quoted_line(line)));
            const auto first = line.find_first_not_of(" \t");
            std::string& verse = books.back().verses.back();
            if (!verse.empty()) verse += ' ';
            verse += line.substr(first);
            continue;
        }
        const auto it = index.find(ref->book);
        if (it == index.end())
            throw UserError(source, "",
                            fmt::format("unparsable output at line {}: unknown book \"{}\" in {}",
                                        line_no, ref->book, quoted_line(line)));
        if (books.empty() || books.back().abbreviation != ref->book) {
            const std::size_t want = books.size();
            if (it->second != want)
                throw UserError(source, "",
                                fmt::format("unparsable output at line {}: book \"{}\" where "
                                            "\"{}\" was expected next (books out of order)",
                                            line_no, ref->book,
                                            want < canon.size() ? canon[want] : "end of output"));
            books.push_back(KjvBook{ref->book, {}});
        }
        books.back().verses.emplace_back(ref->text);
    }
    if (books.size() != canon.size())
        throw UserError(
            source, "",
            fmt::format("unparsable output: expected the {} books Genesis..Revelation, "
                        "found {}{}",
                        canon.size(), books.size(),
                        books.empty() ? "" : " (last: " + books.back().abbreviation + ")"));
    return books;
}

TextCorpus split_kjv(const std::vector<KjvBook>& books) {
    const auto& held_out = kjv_validation_books();
    const std::set<std::string> validation_set(held_out.begin(), held_out.end());
    TextCorpus corpus;
    std::size_t train_books = 0, train_verses = 0, val_books = 0, val_verses = 0;
    for (const auto& book : books) {
        const bool val = validation_set.count(book.abbreviation) != 0;
        std::string& out = val ? corpus.validation : corpus.train;
        for (const auto& verse : book.verses) {
            out += verse;
            out += '\n';
        }
        (val ? val_books : train_books) += 1;
        (val ? val_verses : train_verses) += book.verses.size();
    }
    UPCYCLE_ASSERT(val_books == held_out.size(), "validation books missing from the parsed KJV");
    std::string names;
    for (const auto& b : held_out) names += (names.empty() ? "" : ", ") + b;
    const double total = static_cast<double>(corpus.train.size() + corpus.validation.size());
    corpus.description = fmt::format(
        "King James Bible (bible-kjv): train {} books, {} verses, {} bytes; validation {} books "
        "({}), {} verses, {} bytes ({:.1f}%)",
        train_books, train_verses, corpus.train.size(), val_books, names, val_verses,
        corpus.validation.size(), total > 0 ? 100.0 * corpus.validation.size() / total : 0.0);
    return corpus;
}

TextCorpus load_kjv() {
    const auto program = find_in_path(kProgram);
    if (!program)
        throw UserError(
            kProgram, "",
            std::string("the King James Bible program was not found in PATH: ") + kInstallHint);
    TempFile err_file;
    std::string command = shell_quote(program->string()) + " -f " + shell_quote(kRange);
    command += err_file.path.empty() ? " 2>/dev/null" : " 2>" + shell_quote(err_file.path.string());

    std::unique_ptr<std::FILE, int (*)(std::FILE*)> pipe(::popen(command.c_str(), "r"), ::pclose);
    if (!pipe)
        throw UserError(program->string(), "",
                        std::string("cannot run: ") + std::strerror(errno) + "; " + kInstallHint);
    const std::string output = read_all(pipe.get());
    const int status = ::pclose(pipe.release());
    if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        std::string err;
        if (!err_file.path.empty()) {
            std::unique_ptr<std::FILE, FileCloser> ef(std::fopen(err_file.path.c_str(), "rb"));
            if (ef) err = read_all(ef.get()).substr(0, kShownErrorChars);
        }
        while (!err.empty() && std::isspace(static_cast<unsigned char>(err.back()))) err.pop_back();
        const std::string how =
            status == -1          ? std::string("could not be waited for")
            : WIFEXITED(status)   ? "exited with status " + std::to_string(WEXITSTATUS(status))
            : WIFSIGNALED(status) ? "was killed by signal " + std::to_string(WTERMSIG(status))
                                  : "failed";
        throw UserError(program->string(), "",
                        fmt::format("`bible -f \"{}\"` {}{}; is the Debian package bible-kjv "
                                    "installed intact?",
                                    kRange, how, err.empty() ? "" : ": " + err));
    }
    return split_kjv(parse_kjv_output(output, program->string()));
}

std::string read_text_file(const std::filesystem::path& path) {
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec))
        throw UserError(path.string(), "", "is a directory, expected a text file");
    std::unique_ptr<std::FILE, FileCloser> f(std::fopen(path.c_str(), "rb"));
    if (!f) throw UserError(path.string(), "", std::string("cannot open: ") + std::strerror(errno));
    std::string text = read_all(f.get());
    if (std::ferror(f.get()))
        throw UserError(path.string(), "", std::string("cannot read: ") + std::strerror(errno));
    return text;
}

}  // namespace upcycle
