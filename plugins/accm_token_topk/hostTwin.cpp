/*
 * Host twin of the AccmTokenTopK selection: the same header the CUDA kernel runs, compiled with
 * a host compiler into a small shared library so the selection rule is tested without a GPU.
 */
#include "accmTokenTopKSelect.h"

#include <cstdint>
#include <vector>

extern "C" int32_t accm_token_select_host(
    float const* scores, int32_t batch, int32_t n, int32_t k, int32_t* keptIndex, int32_t* discardedIndex)
{
    if (k < 0 || k > n)
    {
        return 1;
    }
    std::vector<float> row(n);
    std::vector<uint8_t> kept(n);
    for (int32_t b = 0; b < batch; ++b)
    {
        for (int32_t j = 0; j < n; ++j)
        {
            row[j] = accm::canonicalScore(scores[static_cast<size_t>(b) * n + j]);
        }
        for (int32_t j = 0; j < n; ++j)
        {
            kept[j] = accm::rankOf(row.data(), n, j) < k ? 1 : 0;
        }
        for (int32_t j = 0; j < n; ++j)
        {
            int32_t const slot = accm::outputSlot(kept.data(), j);
            if (kept[j])
            {
                keptIndex[static_cast<size_t>(b) * k + slot] = j;
            }
            else if (discardedIndex != nullptr)
            {
                discardedIndex[static_cast<size_t>(b) * (n - k) + slot] = j;
            }
        }
    }
    return 0;
}
