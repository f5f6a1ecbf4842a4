"""select_tokens / image_scores on small hand-checked vectors (docs/DESIGN.md "Token selection")."""

import numpy as np
import pytest
import torch

from accm.pruning import image_scores, select_tokens


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_basic_topk_ascending(lib):
    scores = [0.1, 0.9, 0.3, 0.8, 0.2]
    s = np.array(scores) if lib == "numpy" else torch.tensor(scores)
    kept = select_tokens(s, 3)
    assert list(np.asarray(kept)) == [1, 2, 3]  # 0.9, 0.8, 0.3 in original order
    assert np.asarray(kept).dtype == np.int64


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_all_tied_keeps_lowest_indices(lib):
    s = np.full(7, 0.25) if lib == "numpy" else torch.full((7,), 0.25)
    assert list(np.asarray(select_tokens(s, 3))) == [0, 1, 2]


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_tie_at_the_boundary_goes_to_lower_index(lib):
    vals = [0.5, 0.2, 0.7, 0.2, 0.2, 0.1]  # top-2 clear; 3rd place tied between 1, 3, 4
    s = np.array(vals) if lib == "numpy" else torch.tensor(vals)
    assert list(np.asarray(select_tokens(s, 3))) == [0, 1, 2]
    assert list(np.asarray(select_tokens(s, 4))) == [0, 1, 2, 3]


def test_torch_topk_is_not_the_rule():
    # a tie pattern where a topk-style unstable choice could differ; the stable rule is fixed
    s = torch.tensor([1.0] * 64)
    assert select_tokens(s, 5).tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_k_bounds(lib):
    vals = [0.3, 0.1, 0.2]
    s = np.array(vals) if lib == "numpy" else torch.tensor(vals)
    assert len(select_tokens(s, 0)) == 0
    assert list(np.asarray(select_tokens(s, 3))) == [0, 1, 2]
    assert list(np.asarray(select_tokens(s, 10))) == [0, 1, 2]  # capped at N
    with pytest.raises(ValueError):
        select_tokens(s, -1)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_nan_is_an_error(lib):
    vals = [0.3, float("nan"), 0.2]
    s = np.array(vals) if lib == "numpy" else torch.tensor(vals)
    with pytest.raises(ValueError):
        select_tokens(s, 1)


def test_batched_rows_select_independently():
    s = np.array([[0.1, 0.9, 0.5, 0.5], [0.4, 0.4, 0.4, 0.9]])
    assert select_tokens(s, 2).tolist() == [[1, 2], [0, 3]]
    assert select_tokens(torch.tensor(s), 2).tolist() == [[1, 2], [0, 3]]


def test_head_mean_not_head_max():
    # token 0: one very confident head; token 1: consistently high
    attn = np.array([[[0.0, 0.95, 0.05], [0.0, 0.0, 0.5], [0.0, 0.0, 0.5]]])  # [B=1, H=3, L=3]
    scores = image_scores(attn, image_start=1, n_image=2)
    np.testing.assert_allclose(scores, [[0.95 / 3, 1.05 / 3]])
    assert select_tokens(scores, 1).tolist() == [[1]]  # head-max would pick token 0


def test_attention_sink_on_text_is_ignored():
    # BOS soaks up most attention; only the image span [2, 6) is ranked, offsets relative to it
    row = np.array([0.80, 0.05, 0.01, 0.04, 0.02, 0.03, 0.05])
    attn = np.tile(row, (1, 2, 1))
    scores = image_scores(attn, image_start=2, n_image=4)
    assert scores.shape == (1, 4)
    assert select_tokens(scores, 2).tolist() == [[1, 3]]


def test_left_padding_shifts_the_span_per_sample():
    # sample 0 is left-padded by 2, so its image starts at 3 instead of 1
    a = np.zeros((2, 1, 7))
    a[0, 0, 3:6] = [0.1, 0.5, 0.2]
    a[1, 0, 1:4] = [0.1, 0.5, 0.2]
    scores = image_scores(a, image_start=[3, 1], n_image=3)
    np.testing.assert_array_equal(scores[0], scores[1])
    assert select_tokens(scores, 2).tolist() == [[1, 2], [1, 2]]


def test_per_sample_image_start_and_torch_input():
    a = torch.zeros(2, 2, 6, dtype=torch.float32)
    a[0, :, 0:3] = torch.tensor([0.3, 0.2, 0.1])
    a[1, :, 2:5] = torch.tensor([0.1, 0.2, 0.3])
    scores = image_scores(a, image_start=torch.tensor([0, 2]), n_image=3)
    assert scores.dtype == torch.float64
    assert select_tokens(scores, 1).tolist() == [[0], [2]]


def test_float64_accumulation_breaks_float32_ties():
    # in float32, 1 + 2**-30 == 1, so both tokens would tie and the lower index would win
    attn = np.array([[[1.0, 1.0], [0.0, 2.0**-30], [0.0, 0.0]]], dtype=np.float32)  # [1, H=3, L=2]
    scores = image_scores(attn, 0, 2)
    assert scores.dtype == np.float64
    assert scores[0, 1] > scores[0, 0]
    assert select_tokens(scores, 1).tolist() == [[1]]
    # the same sums in float32 would tie
    assert np.float32(1.0) + np.float32(2.0**-30) == np.float32(1.0)


def test_span_outside_row_is_an_error():
    with pytest.raises(ValueError):
        image_scores(np.zeros((1, 1, 4)), image_start=2, n_image=4)


def test_dyadic_inputs_rank_identically_for_mean_and_sum():
    rng = np.random.default_rng(0)
    attn = rng.integers(0, 2**16, size=(3, 32, 600)) / 2**16
    mean = image_scores(attn, 5, 576)
    total = mean * 32
    assert np.array_equal(select_tokens(mean, 64), select_tokens(total, 64))
    assert np.array_equal(select_tokens(mean, 64), select_tokens(mean * 4, 64))
    # tie-heavy: integers in [0, 16)
    tied = rng.integers(0, 16, size=(3, 4, 600)).astype(np.float64)
    kept = select_tokens(image_scores(tied, 5, 576), 100)
    ref = np.stack([np.sort(np.lexsort((np.arange(576), -image_scores(tied, 5, 576)[b]))[:100]) for b in range(3)])
    assert np.array_equal(kept, ref)
