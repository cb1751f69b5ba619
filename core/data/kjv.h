#pragma once
// The King James Bible corpus, from the Debian package bible-kjv.
//
// `bible -f "Genesis 1:1-Revelation 22:21"` prints the 31,102 verses one per line as
// "Ge1:1 In the beginning God created the heaven and the earth." (66 books, 4.4 MB). We strip
// the reference and keep each verse's text followed by '\n', so a split is its books' verses,
// one per line, books in canonical order. A line without a reference continues the previous
// verse (joined with a space); the packaged program does not wrap with -f, this is defence.
//
// Held-out split by whole book. Validation books (abbreviations as the program prints them),
// with their bytes in this encoding (verse texts + one '\n' each):
//   Ruth  (Ruth)            13,004      Mark (Mark)         79,121
//   Eccl  (Ecclesiastes)    28,364      Gal  (Galatians)    16,233
//   Lam   (Lamentations)    18,084      Jas  (James)        12,137
//   Hos   (Hosea)           27,116      1Jn  (1 John)       12,753
// validation = 206,812 bytes (4.998% of 4,137,850); train = the other 58 books, 3,931,038
// bytes, starting with "In the beginning God created the heaven and the earth.\n".
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace upcycle {

struct TextCorpus {
    std::string train;
    std::string validation;
    std::string description;  // one line: source, book and byte counts of both splits
};

// One book of the parsed program output.
struct KjvBook {
    std::string abbreviation;         // as printed by the program: "Ge", "Exo", ..., "Rev"
    std::vector<std::string> verses;  // verse texts without the reference
};

// Runs the bible program (found via PATH), parses and splits it. UserError when the program
// is missing (install the Debian package bible-kjv), fails, or prints something unparsable.
TextCorpus load_kjv();

// The 66 book abbreviations in canonical order, as the program prints them.
const std::vector<std::string>& kjv_book_abbreviations();
// The validation books (abbreviations, canonical order); see the list above.
const std::vector<std::string>& kjv_validation_books();

// Parses the program's output (lower level, for tests): every line "<Book><ch>:<v> <text>",
// books in canonical order, all 66 present. `source` names the output in errors.
std::vector<KjvBook> parse_kjv_output(std::string_view output, const std::string& source);

// Splits parsed books into train and validation as described above.
TextCorpus split_kjv(const std::vector<KjvBook>& books);

// Reads any file as bytes (for `upcycle eval --text FILE`); UserError if unreadable.
std::string read_text_file(const std::filesystem::path& path);

}  // namespace upcycle
