"""AccmTokenTopK: host twin against select_tokens, CUDA compile checks, GPU tests (skipped here)."""

import numpy as np
import pytest

from accm.kernels import build as plugin
from accm.pruning import select_tokens


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    return plugin.HostTwin(plugin.build_host_twin(tmp_path_factory.mktemp("twin")))


@pytest.mark.parametrize("levels", [2, 4, 16, 1 << 24], ids=["binary", "four", "sixteen", "dense"])
@pytest.mark.parametrize("k", [1, 17, 18, 64, 288, 575, 576])
def test_host_twin_equals_select_tokens(twin, levels, k):
    rng = np.random.default_rng(levels * 1000 + k)
    scores = (rng.integers(0, levels, size=(4, 576)) / levels).astype(np.float32)
    kept, dropped = twin.select(scores, k)
    expected = select_tokens(scores, k)
    assert np.array_equal(kept, expected)
    for b in range(4):
        assert np.array_equal(dropped[b], np.setdiff1d(np.arange(576), expected[b]))


def test_host_twin_on_real_softmax_rows_and_edge_values(twin):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 100)) * 4
    probs = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    assert np.array_equal(twin.select(probs, 10)[0], select_tokens(probs, 10))
    edge = np.array([[0.0, -0.0, np.inf, -np.inf, 1e-45, 0.0, np.inf]], dtype=np.float32)
    assert np.array_equal(twin.select(edge, 4)[0], select_tokens(edge, 4))
    with pytest.raises(ValueError):
        twin.select(probs, 101)


def test_host_twin_puts_nan_last(twin):
    scores = np.array([[0.5, np.nan, 0.1, 0.9]], dtype=np.float32)
    kept, dropped = twin.select(scores, 3)
    assert kept.tolist() == [[0, 2, 3]] and dropped.tolist() == [[1]]


@pytest.mark.skipif(plugin.nvcc() is None, reason="nvcc not installed")
def test_cuda_kernels_compile_for_orin_and_desktop_archs(tmp_path):
    cubins = plugin.compile_kernels(tmp_path, archs=plugin.ARCHS)
    assert sorted(cubins) == sorted(plugin.ARCHS)
    for path in cubins.values():
        data = path.read_bytes()
        assert data[:4] == b"\x7fELF" and b"selectKernel" in data and b"gatherKernel" in data


@pytest.mark.skipif(plugin.nvcc() is None or plugin.cuda12_ptxas() is None,
                    reason="needs nvcc and nvidia-cuda-nvcc-cu12 (CUDA 12.6 ptxas)")
def test_kernels_assemble_with_cuda_12_6_ptxas_for_orin(tmp_path):
    assert plugin.assemble_with_cuda12(tmp_path, arch="87").stat().st_size > 0


@pytest.mark.gpu
def test_plugin_kernel_on_gpu_matches_select_tokens(tmp_path):
    from accm.kernels.rig import PluginUnderTest

    runner = PluginUnderTest.build(tmp_path)
    rng = np.random.default_rng(3)
    for dtype in (np.float32, np.float16):
        scores = rng.integers(0, 8, size=(3, 576)).astype(dtype)
        tokens = rng.normal(size=(3, 576, 64)).astype(dtype)
        kept, kept_index, dropped, dropped_index = runner.run(scores, tokens, k=64)
        expected = select_tokens(scores.astype(np.float32), 64)
        assert np.array_equal(kept_index, expected)
        assert np.array_equal(kept, np.take_along_axis(tokens, expected[..., None], 1))


@pytest.mark.skipif(plugin.nvcc() is None, reason="nvcc not installed")
def test_kernel_harness_compiles(tmp_path):
    assert plugin.build_kernel_harness(tmp_path, archs=("87",)).stat().st_size > 0


@pytest.fixture(scope="module")
def device_kernels(tmp_path_factory):
    return plugin.KernelHarness(plugin.build_kernel_harness(tmp_path_factory.mktemp("harness")))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("n,k", [(576, 1), (576, 18), (576, 64), (576, 575), (576, 576), (2880, 144),
                                 (plugin.MAX_TOKENS, 64)])
def test_cuda_kernels_on_gpu_match_select_tokens(device_kernels, dtype, n, k):
    rng = np.random.default_rng(n + k)
    scores = (rng.integers(0, 8, size=(4, n)) / 8).astype(dtype)  # many ties
    scores[0] = rng.random(n)  # and one row without
    scores[1, :5] = [np.inf, -np.inf, -0.0, 0.0, 1e-45 if dtype == np.float32 else 6e-8]
    tokens = rng.normal(size=(4, n, 96)).astype(dtype)
    kept, kept_index, dropped, dropped_index, _ = device_kernels.run(scores, tokens, k)
    expected = select_tokens(scores.astype(np.float32), k)
    assert np.array_equal(kept_index, expected)
    rest = np.stack([np.setdiff1d(np.arange(n), row) for row in expected])
    assert np.array_equal(dropped_index, rest)
    assert np.array_equal(kept, np.take_along_axis(tokens, expected[..., None], 1))
    assert np.array_equal(dropped, np.take_along_axis(tokens, rest[..., None], 1))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_cuda_kernels_put_nan_last_like_the_host_twin(device_kernels, dtype):
    scores = np.array([[0.5, np.nan, 0.1, 0.9]], dtype=dtype)
    _, kept_index, _, dropped_index, _ = device_kernels.run(scores, np.zeros((1, 4, 2), dtype), 3)
    assert kept_index.tolist() == [[0, 2, 3]] and dropped_index.tolist() == [[1]]


@pytest.mark.cuda
def test_cuda_kernels_refuse_rows_longer_than_their_shared_memory(device_kernels):
    scores = np.zeros((1, plugin.MAX_TOKENS + 1), np.float32)
    with pytest.raises(RuntimeError, match="cudaError_t"):
        device_kernels.run(scores, np.zeros((1, plugin.MAX_TOKENS + 1, 8), np.float32), 4)


def test_python_knows_the_kernels_row_limit():
    header = (plugin.plugin_dir() / "accmTokenTopKKernel.h").read_text()
    assert f"kMaxTokens = {plugin.MAX_TOKENS};" in header
