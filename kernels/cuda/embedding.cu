// Token + position embedding, forward and backward. Specification: kernels/cpu/embedding.cpp.
//
// The backward is deterministic without atomics, and adds in exactly the CPU's order (so it
// is bit-identical to it): every gradient element is owned by one thread, which adds its
// contributions one at a time straight into the gradient, in token order.
//  - dwpe: one thread per (t, c), adding dout[b,t,c] for b = 0..B-1.
//  - dwte: the positions are sorted by token with a stable radix sort (CUB), so each token's
//    positions stay in ascending order; run-length encoding gives each distinct token its
//    run of positions. Then one thread per (distinct token, c) starts from dwte[token,c],
//    adds dout[n,c] for the token's positions n in ascending order, and stores: the CPU's
//    additions in the CPU's order. The sums live in registers, so the loads of a run are
//    independent (the first version walked all B·T positions per channel through memory:
//    B·T dependent read-modify-writes, ~10 ms for 16K tokens).
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_run_length_encode.cuh>
#include <cub/device/device_scan.cuh>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_state.cuh"

namespace upcycle {

namespace {

// out[n,c] = wte[tokens[n],c] + wpe[n mod T,c], one thread per element
__global__ void embedding_forward_kernel(float* __restrict__ out,
                                         const int32_t* __restrict__ tokens,
                                         const float* __restrict__ wte,
                                         const float* __restrict__ wpe, std::int64_t total,
                                         int T, int C) {
    const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
    for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
         i < total; i += stride) {
        const std::int64_t n = i / C, c = i % C;
        const std::int64_t t = n % T;
        out[i] = wte[static_cast<std::int64_t>(tokens[n]) * C + c] + wpe[t * C + c];
    }
}

// dwpe[t,c] += dout[b,t,c] for b = 0..B-1 in order, one thread per (t, c)
__global__ void embedding_backward_wpe_kernel(float* __restrict__ dwpe,
                                              const float* __restrict__ dout, int B, int T,
                                              int C) {
    const std::int64_t total = static_cast<std::int64_t>(T) * C;  // one b-slice of dout
    const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
    for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
         i < total; i += stride) {
        float acc = dwpe[i];
        for (int b = 0; b < B; ++b) acc += dout[static_cast<std::int64_t>(b) * total + i];
        dwpe[i] = acc;
    }
}

// positions[n] = n
__global__ void iota_kernel(int32_t* __restrict__ positions, int N) {
    const int stride = static_cast<int>(gridDim.x * blockDim.x);
    for (int n = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x); n < N; n += stride) {
        positions[n] = n;
    }
}

// For each run r < *num_runs (a distinct token run_token[r] whose positions are
// sorted_positions[run_start[r] .. run_start[r] + run_length[r]), ascending) and channel c:
//   dwte[token,c] += dout[n,c] for those positions n, one at a time, in order.
// Grid: x covers the channels, y strides over the runs (their number is known only on the
// device; blocks past it return).
constexpr int kWteThreads = 128;  // channels per block
constexpr unsigned kMaxRunBlocks = 65535;  // gridDim.y limit

__global__ void embedding_backward_wte_kernel(float* __restrict__ dwte,
                                              const float* __restrict__ dout,
                                              const int32_t* __restrict__ run_token,
                                              const int32_t* __restrict__ run_start,
                                              const int32_t* __restrict__ run_length,
                                              const int32_t* __restrict__ num_runs,
                                              const int32_t* __restrict__ sorted_positions,
                                              int C) {
    const int c = static_cast<int>(blockIdx.x) * kWteThreads + static_cast<int>(threadIdx.x);
    if (c >= C) return;
    const int runs = *num_runs;
    for (int r = static_cast<int>(blockIdx.y); r < runs; r += static_cast<int>(gridDim.y)) {
        float* element = dwte + static_cast<std::int64_t>(run_token[r]) * C + c;
        float acc = *element;
        const int begin = run_start[r], end = begin + run_length[r];
        for (int i = begin; i < end; ++i) {
            acc += dout[static_cast<std::int64_t>(sorted_positions[i]) * C + c];
        }
        *element = acc;
    }
}

}  // namespace

void CudaBackend::embedding_forward(float* out, const int32_t* tokens, const float* wte,
                                    const float* wpe, int B, int T, int C) {
    const std::int64_t total = static_cast<std::int64_t>(B) * T * C;
    if (total <= 0) return;
    embedding_forward_kernel<<<gpu::blocks_for(total), gpu::kThreads, 0, state_->stream>>>(
        out, tokens, wte, wpe, total, T, C);
    CUDA_CHECK(cudaGetLastError());
}

// dwte part of embedding_backward: sort positions by token, run-length encode, sum each run.
void CudaBackend::embedding_backward_wte(float* dwte, const float* dout, const int32_t* tokens,
                                         int N, int C) {
    cudaStream_t stream = state_->stream;
    const std::size_t ints = static_cast<std::size_t>(N) * sizeof(int32_t);
    // [positions | sorted tokens | sorted positions | run tokens | run lengths | run starts]
    // and the run count
    gpu::DeviceScratch buffers(state_->allocator, 6 * ints + sizeof(int32_t));
    int32_t* positions = static_cast<int32_t*>(buffers.data());
    int32_t* sorted_tokens = positions + N;
    int32_t* sorted_positions = sorted_tokens + N;
    int32_t* run_token = sorted_positions + N;
    int32_t* run_length = run_token + N;
    int32_t* run_start = run_length + N;
    int32_t* num_runs = run_start + N;

    // CUB's temporary storage: the largest of the three algorithms' needs
    std::size_t sort_bytes = 0, encode_bytes = 0, scan_bytes = 0;
    CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, tokens, sorted_tokens,
                                               positions, sorted_positions, N, 0,
                                               static_cast<int>(8 * sizeof(int32_t)), stream));
    CUDA_CHECK(cub::DeviceRunLengthEncode::Encode(nullptr, encode_bytes, sorted_tokens, run_token,
                                                  run_length, num_runs, N, stream));
    CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, run_length, run_start, N,
                                             stream));
    gpu::DeviceScratch temp(state_->allocator, std::max({sort_bytes, encode_bytes, scan_bytes}));
    std::size_t temp_bytes = 0;

    iota_kernel<<<gpu::blocks_for(N), gpu::kThreads, 0, stream>>>(positions, N);
    CUDA_CHECK(cudaGetLastError());
    // stable: positions of one token stay ascending
    temp_bytes = sort_bytes;
    CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.data(), temp_bytes, tokens, sorted_tokens,
                                               positions, sorted_positions, N, 0,
                                               static_cast<int>(8 * sizeof(int32_t)), stream));
    // run lengths past the run count are zeroed, so the scan over all N entries is defined
    CUDA_CHECK(cudaMemsetAsync(run_length, 0, ints, stream));
    temp_bytes = encode_bytes;
    CUDA_CHECK(cub::DeviceRunLengthEncode::Encode(temp.data(), temp_bytes, sorted_tokens,
                                                  run_token, run_length, num_runs, N, stream));
    temp_bytes = scan_bytes;
    CUDA_CHECK(cub::DeviceScan::ExclusiveSum(temp.data(), temp_bytes, run_length, run_start, N,
                                             stream));
    const dim3 grid(static_cast<unsigned>((C + kWteThreads - 1) / kWteThreads),
                    std::min(static_cast<unsigned>(N), kMaxRunBlocks));
    embedding_backward_wte_kernel<<<grid, kWteThreads, 0, stream>>>(
        dwte, dout, run_token, run_start, run_length, num_runs, sorted_positions, C);
    CUDA_CHECK(cudaGetLastError());
}

void CudaBackend::embedding_backward(float* dwte, float* dwpe, const float* dout,
                                     const int32_t* tokens, int B, int T, int C) {
    if (B <= 0 || T <= 0 || C <= 0) return;
    if (dwte) embedding_backward_wte(dwte, dout, tokens, B * T, C);
    if (dwpe) {
        const std::int64_t total = static_cast<std::int64_t>(T) * C;
        embedding_backward_wpe_kernel<<<gpu::blocks_for(total), gpu::kThreads, 0,
                                        state_->stream>>>(dwpe, dout, B, T, C);
        CUDA_CHECK(cudaGetLastError());
    }
}

}  // namespace upcycle
