/*
 * AccmTokenTopK: the selection rule, shared verbatim by the CUDA kernel and its host twin.
 *
 * Keep the k highest scores of a row; ties go to the lower index; kept indices come out in
 * ascending order, discarded ones too (exactly accm.pruning.select_tokens). The rank of j is
 * the number of elements that come before it under that order; j is kept iff rank < k.
 * NaN scores sort last (the Python reference rejects them; a kernel cannot raise).
 */
#pragma once

#include <cstdint>
#include <math.h>

#if defined(__CUDACC__)
#define ACCM_HD __host__ __device__
#else
#define ACCM_HD
#endif

namespace accm
{

ACCM_HD inline float canonicalScore(float x)
{
    return x != x ? -INFINITY : x;
}

//! Does element (a, ia) come before element (b, ib)? Higher score first, then lower index.
ACCM_HD inline bool ranksBefore(float a, int32_t ia, float b, int32_t ib)
{
    return a > b || (a == b && ia < ib);
}

//! Rank of element j among n canonical scores (0 = best).
ACCM_HD inline int32_t rankOf(float const* scores, int32_t n, int32_t j)
{
    int32_t rank = 0;
    for (int32_t i = 0; i < n; ++i)
    {
        rank += ranksBefore(scores[i], i, scores[j], j) ? 1 : 0;
    }
    return rank;
}

//! Where element j goes: its slot in the kept output (if kept) or in the discarded output.
//! ``keptFlags[i]`` must hold (rankOf(i) < k) for every i < j.
ACCM_HD inline int32_t outputSlot(uint8_t const* keptFlags, int32_t j)
{
    int32_t keptBefore = 0;
    for (int32_t i = 0; i < j; ++i)
    {
        keptBefore += keptFlags[i];
    }
    return keptFlags[j] ? keptBefore : j - keptBefore;
}

} // namespace accm
