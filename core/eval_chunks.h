#pragma once
// An evaluation in chunks (batches of the model's size), spread over the ranks of a job:
// chunk c is evaluated by rank c mod N, and every rank gets every chunk's statistics, in chunk
// order, so whatever sums them in that order gets one process's numbers bit for bit (a
// reduction adds only zeros to each chunk's values).
//
// Every rank runs the same number of forward passes: a rank past the last chunk in the last
// round evaluates the last chunk again and drops the result, because an expert-parallel
// model's forward is a collective of the ranks.
#include <cstdint>
#include <functional>
#include <vector>

#include "core/comm.h"
#include "core/model/model.h"

namespace upcycle {

// evaluate_chunk(chunk, counted) runs the forward of one chunk; counted is false for the
// repeated pass of a rank with no chunk left (its result is dropped: it must keep nothing of
// it either). Returns [chunks] statistics, the same on every rank.
using EvaluateChunk = std::function<ForwardStats(int64_t chunk, bool counted)>;
std::vector<ForwardStats> evaluate_chunks(Communicator& ranks, int64_t chunks,
                                          const EvaluateChunk& evaluate_chunk);

// Which rank evaluates chunk c.
inline int chunk_rank(int64_t chunk, int ranks) { return static_cast<int>(chunk % ranks); }

}  // namespace upcycle
