/*
 * AccmTokenTopK CUDA kernels: exact top-k selection (one block per batch row) and an ordered
 * gather of the kept and discarded token rows. Uses the CUDA runtime API only (CUDA 12.x and
 * 13.x), no CUDA-13-only features, so it builds with JetPack 6's CUDA 12.6 for Orin (sm_87).
 */
#include "accmTokenTopKKernel.h"
#include "accmTokenTopKSelect.h"

#include <cuda_fp16.h>

namespace accm
{
namespace
{

__device__ inline float toFloat(float x)
{
    return x;
}

__device__ inline float toFloat(__half x)
{
    return __half2float(x);
}

template <typename S>
__global__ void selectKernel(S const* scores, int32_t n, int32_t k, int32_t* keptIndex, int32_t* discardedIndex)
{
    extern __shared__ unsigned char shared[];
    float* row = reinterpret_cast<float*>(shared);
    uint8_t* kept = reinterpret_cast<uint8_t*>(row + n);
    int32_t const b = blockIdx.x;
    S const* src = scores + static_cast<size_t>(b) * n;
    for (int32_t j = threadIdx.x; j < n; j += blockDim.x)
    {
        row[j] = canonicalScore(toFloat(src[j]));
    }
    __syncthreads();
    for (int32_t j = threadIdx.x; j < n; j += blockDim.x)
    {
        kept[j] = rankOf(row, n, j) < k ? 1 : 0;
    }
    __syncthreads();
    for (int32_t j = threadIdx.x; j < n; j += blockDim.x)
    {
        int32_t const slot = outputSlot(kept, j);
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

template <typename T>
__global__ void gatherKernel(T const* tokens, int32_t n, int32_t dim, int32_t const* index, int32_t m, T* out)
{
    int32_t const row = blockIdx.x; // b * m + r
    int32_t const b = row / m;
    int32_t const srcRow = index[row];
    T const* src = tokens + (static_cast<size_t>(b) * n + srcRow) * dim;
    T* dst = out + static_cast<size_t>(row) * dim;
    for (int32_t c = threadIdx.x; c < dim; c += blockDim.x)
    {
        dst[c] = src[c];
    }
}

int32_t threadsFor(int32_t work, int32_t cap)
{
    int32_t threads = 32;
    while (threads < work && threads < cap)
    {
        threads *= 2;
    }
    return threads;
}

} // namespace

cudaError_t launchTokenSelect(ElementType scoreType, void const* scores, int32_t batch, int32_t n, int32_t k,
    int32_t* keptIndex, int32_t* discardedIndex, cudaStream_t stream)
{
    if (n > kMaxTokens || k < 0 || k > n)
    {
        return cudaErrorInvalidValue;
    }
    if (batch == 0 || n == 0)
    {
        return cudaSuccess;
    }
    size_t const shared = static_cast<size_t>(n) * (sizeof(float) + sizeof(uint8_t));
    // Each thread ranks its elements against the whole row (O(n) each): use the most threads.
    int32_t const threads = threadsFor(n, 1024);
    if (scoreType == ElementType::kFLOAT)
    {
        selectKernel<float><<<batch, threads, shared, stream>>>(
            static_cast<float const*>(scores), n, k, keptIndex, discardedIndex);
    }
    else
    {
        selectKernel<__half><<<batch, threads, shared, stream>>>(
            static_cast<__half const*>(scores), n, k, keptIndex, discardedIndex);
    }
    return cudaGetLastError();
}

cudaError_t launchTokenGather(ElementType tokenType, void const* tokens, int32_t batch, int32_t n, int32_t dim,
    int32_t const* index, int32_t m, void* out, cudaStream_t stream)
{
    if (batch == 0 || m == 0 || dim == 0)
    {
        return cudaSuccess;
    }
    int32_t const threads = threadsFor(dim, 256);
    if (tokenType == ElementType::kFLOAT)
    {
        gatherKernel<float><<<batch * m, threads, 0, stream>>>(
            static_cast<float const*>(tokens), n, dim, index, m, static_cast<float*>(out));
    }
    else
    {
        gatherKernel<__half><<<batch * m, threads, 0, stream>>>(
            static_cast<__half const*>(tokens), n, dim, index, m, static_cast<__half*>(out));
    }
    return cudaGetLastError();
}

} // namespace accm
