/*
 * AccmTokenTopK CUDA launchers. Scores and tokens are float or half; indices are int32.
 */
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

namespace accm
{

enum class ElementType : int32_t
{
    kFLOAT = 0,
    kHALF = 1,
};

//! Largest row length the selection kernel handles (its scores and flags live in shared memory).
constexpr int32_t kMaxTokens = 8192;

//! Select per row: keptIndex [B, k] and (if not null) discardedIndex [B, n - k], both ascending.
cudaError_t launchTokenSelect(ElementType scoreType, void const* scores, int32_t batch, int32_t n, int32_t k,
    int32_t* keptIndex, int32_t* discardedIndex, cudaStream_t stream);

//! out[b, r, :] = tokens[b, index[b, r], :] for r < m.
cudaError_t launchTokenGather(ElementType tokenType, void const* tokens, int32_t batch, int32_t n, int32_t dim,
    int32_t const* index, int32_t m, void* out, cudaStream_t stream);

} // namespace accm
