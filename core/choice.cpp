#include "core/choice.h"

#include <algorithm>
#include <limits>

#include "core/errors.h"

namespace upcycle {

namespace {

// Optimal string alignment distance: insertions, deletions, substitutions and adjacent
// transpositions ("stpes" → "steps" is one edit) each cost 1.
std::size_t edit_distance(const std::string& a, const std::string& b) {
    const std::size_t n = a.size(), m = b.size();
    std::vector<std::vector<std::size_t>> d(n + 1, std::vector<std::size_t>(m + 1));
    for (std::size_t i = 0; i <= n; ++i) d[i][0] = i;
    for (std::size_t j = 0; j <= m; ++j) d[0][j] = j;
    for (std::size_t i = 1; i <= n; ++i) {
        for (std::size_t j = 1; j <= m; ++j) {
            const std::size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
            d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
                d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
            }
        }
    }
    return d[n][m];
}

}  // namespace

std::string closest_match(const std::string& word, const std::vector<std::string>& candidates) {
    std::string best;
    std::size_t best_distance = std::numeric_limits<std::size_t>::max();
    for (const auto& candidate : candidates) {
        const std::size_t d = edit_distance(word, candidate);
        if (d < best_distance) {
            best_distance = d;
            best = candidate;
        }
    }
    // close enough: at most a third of the word (and at least one edit) wrong
    const std::size_t allowed = std::max<std::size_t>(1, word.size() / 3);
    if (best_distance <= allowed) return best;
    // else a candidate that is one of the word's underscore-separated parts ("lr_rate": lr),
    // the longest if several
    best.clear();
    std::size_t start = 0;
    while (start <= word.size()) {
        const std::size_t end = std::min(word.find('_', start), word.size());
        const std::string part = word.substr(start, end - start);
        if (part.size() > best.size() &&
            std::find(candidates.begin(), candidates.end(), part) != candidates.end()) {
            best = part;
        }
        start = end + 1;
    }
    return best;
}

std::string choice_list(const std::vector<std::string>& names) {
    std::string list;
    for (std::size_t i = 0; i < names.size(); ++i) {
        if (i > 0) list += i + 1 == names.size() ? " or " : ", ";
        list += names[i];
    }
    return list;
}

std::string choice_error(const std::vector<std::string>& names, std::string_view found) {
    std::string message = "expected " + choice_list(names) + ", found '" + std::string(found) + "'";
    const std::string suggestion = closest_match(std::string(found), names);
    if (!suggestion.empty()) message += "; did you mean '" + suggestion + "'?";
    return message;
}

void throw_bad_choice(const std::string& file, const std::string& key,
                      const std::vector<std::string>& names, std::string_view found) {
    throw UserError(file, key, choice_error(names, found));
}

}  // namespace upcycle
