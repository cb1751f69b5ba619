#pragma once
// llm.c's GPT-2 checkpoint (gpt2_124M.bin, written by its train_gpt2.py, read by
// train_gpt2.c's gpt2_build_from_checkpoint) into our layout.
//
// A header of 256 little-endian int32: [0] magic 20240326, [1] version, [2] maxT, [3] V,
// [4] L, [5] H, [6] C, [7] Vp (the vocabulary padded for the kernels; versions 3 and 5).
// Versions: 1 (fp32, no padding: Vp = V), 3 (fp32, padded), 5 (bf16, padded). Then the
// parameters, each tensor whole, in this order, in nn.Linear layout [out, in] like ours:
//   wte [Vp,C], wpe [maxT,C], ln1w [L,C], ln1b [L,C], qkvw [L,3C,C], qkvb [L,3C],
//   attprojw [L,C,C], attprojb [L,C], ln2w [L,C], ln2b [L,C], fcw [L,4C,C], fcb [L,4C],
//   fcprojw [L,C,4C], fcprojb [L,C], lnfw [C], lnfb [C]
// and nothing after. The padding rows V..Vp of wte are dropped: they are never an input and
// llm.c masks their logits, so the model keeps exactly V = 50,257 rows and its loss is over
// the real vocabulary.
#include <filesystem>

#include "core/import/imported_gpt.h"

namespace upcycle {

inline constexpr int32_t kLlmcModelMagic = 20240326;

// UserError naming the file and the header field or tensor (bad magic or version, impossible
// sizes, a file shorter or longer than its header says).
ImportedGpt read_llmc_gpt2(const std::filesystem::path& path);

}  // namespace upcycle
