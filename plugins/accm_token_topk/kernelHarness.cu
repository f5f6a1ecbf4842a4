/*
 * A C entry point around the AccmTokenTopK CUDA launchers, for testing and timing the kernels on
 * a GPU without TensorRT: host arrays in, select + ordered gather of kept and discarded rows on
 * the device, host arrays out. Not part of the plugin library.
 */
#include "accmTokenTopKKernel.h"

#include <cstdint>
#include <cuda_runtime.h>

namespace
{

struct DeviceBuffers
{
    void* scores = nullptr;
    void* tokens = nullptr;
    int32_t* keptIndex = nullptr;
    int32_t* discardedIndex = nullptr;
    void* kept = nullptr;
    void* discarded = nullptr;

    ~DeviceBuffers()
    {
        cudaFree(scores);
        cudaFree(tokens);
        cudaFree(keptIndex);
        cudaFree(discardedIndex);
        cudaFree(kept);
        cudaFree(discarded);
    }
};

cudaError_t runOnce(accm::ElementType type, DeviceBuffers const& d, int32_t batch, int32_t n, int32_t dim,
    int32_t k, cudaStream_t stream)
{
    cudaError_t err = accm::launchTokenSelect(type, d.scores, batch, n, k, d.keptIndex, d.discardedIndex, stream);
    if (err == cudaSuccess)
    {
        err = accm::launchTokenGather(type, d.tokens, batch, n, dim, d.keptIndex, k, d.kept, stream);
    }
    if (err == cudaSuccess)
    {
        err = accm::launchTokenGather(type, d.tokens, batch, n, dim, d.discardedIndex, n - k, d.discarded, stream);
    }
    return err;
}

} // namespace

#define ACCM_CHECK(call)                                                                                          \
    do                                                                                                             \
    {                                                                                                              \
        cudaError_t const e_ = (call);                                                                             \
        if (e_ != cudaSuccess)                                                                                     \
        {                                                                                                          \
            return static_cast<int32_t>(e_);                                                                       \
        }                                                                                                          \
    } while (0)

//! elementType: 0 float, 1 half (scores and tokens alike). Returns a cudaError_t value (0 = success).
//! With repeats > 0 also times select + both gathers on the device: mean milliseconds per call in
//! *msPerCall, after one untimed warm-up.
extern "C" int32_t accm_token_topk_device(int32_t elementType, void const* scores, void const* tokens,
    int32_t batch, int32_t n, int32_t dim, int32_t k, int32_t* keptIndex, int32_t* discardedIndex, void* kept,
    void* discarded, int32_t repeats, float* msPerCall)
{
    if (k < 0 || k > n || batch < 0 || dim < 0)
    {
        return static_cast<int32_t>(cudaErrorInvalidValue);
    }
    auto const type = static_cast<accm::ElementType>(elementType);
    size_t const element = type == accm::ElementType::kFLOAT ? 4 : 2;
    size_t const rows = static_cast<size_t>(batch);
    DeviceBuffers d;
    ACCM_CHECK(cudaMalloc(&d.scores, rows * n * element));
    ACCM_CHECK(cudaMalloc(&d.tokens, rows * n * dim * element));
    ACCM_CHECK(cudaMalloc(&d.keptIndex, rows * k * sizeof(int32_t) + 1));
    ACCM_CHECK(cudaMalloc(&d.discardedIndex, rows * (n - k) * sizeof(int32_t) + 1));
    ACCM_CHECK(cudaMalloc(&d.kept, rows * k * dim * element + 1));
    ACCM_CHECK(cudaMalloc(&d.discarded, rows * (n - k) * dim * element + 1));
    ACCM_CHECK(cudaMemcpy(d.scores, scores, rows * n * element, cudaMemcpyHostToDevice));
    ACCM_CHECK(cudaMemcpy(d.tokens, tokens, rows * n * dim * element, cudaMemcpyHostToDevice));

    ACCM_CHECK(runOnce(type, d, batch, n, dim, k, nullptr));
    ACCM_CHECK(cudaDeviceSynchronize());
    if (repeats > 0)
    {
        cudaEvent_t start;
        cudaEvent_t stop;
        ACCM_CHECK(cudaEventCreate(&start));
        ACCM_CHECK(cudaEventCreate(&stop));
        ACCM_CHECK(cudaEventRecord(start));
        for (int32_t i = 0; i < repeats; ++i)
        {
            ACCM_CHECK(runOnce(type, d, batch, n, dim, k, nullptr));
        }
        ACCM_CHECK(cudaEventRecord(stop));
        ACCM_CHECK(cudaEventSynchronize(stop));
        float total = 0.F;
        ACCM_CHECK(cudaEventElapsedTime(&total, start, stop));
        *msPerCall = total / static_cast<float>(repeats);
        cudaEventDestroy(start);
        cudaEventDestroy(stop);
    }
    ACCM_CHECK(cudaMemcpy(keptIndex, d.keptIndex, rows * k * sizeof(int32_t), cudaMemcpyDeviceToHost));
    ACCM_CHECK(cudaMemcpy(discardedIndex, d.discardedIndex, rows * (n - k) * sizeof(int32_t), cudaMemcpyDeviceToHost));
    ACCM_CHECK(cudaMemcpy(kept, d.kept, rows * k * dim * element, cudaMemcpyDeviceToHost));
    ACCM_CHECK(cudaMemcpy(discarded, d.discarded, rows * (n - k) * dim * element, cudaMemcpyDeviceToHost));
    return 0;
}
