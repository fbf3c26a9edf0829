"""choose_tokens: the argmax / inverse-CDF sampled choice and its probability (torch on CPU, Triton on CUDA)."""

import pytest
import torch

from whisfusion_cli.token_stats import choose_tokens


def _logits(shape, device="cpu", dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 3).to(device=device, dtype=dtype)


def test_greedy_choice_is_argmax_with_its_softmax_probability():
    logits = _logits((4, 7, 50))
    ids, probs = choose_tokens(logits)
    assert torch.equal(ids, logits.argmax(-1))
    assert torch.allclose(probs, logits.softmax(-1).amax(-1), atol=1e-6)


def test_shared_rows_give_the_same_choice_as_spelled_out_logits():
    logits = _logits((3, 7, 50))
    rows = torch.tensor([0, 0, 2, 1, 2, 2])
    ids, probs = choose_tokens(logits, rows=rows)
    ref_ids, ref_probs = choose_tokens(logits[rows])
    assert torch.equal(ids, ref_ids) and torch.equal(probs, ref_probs)
    a = choose_tokens(logits, rows=rows, sample=True, k=3, generator=torch.Generator().manual_seed(1))
    b = choose_tokens(logits[rows], sample=True, k=3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # one draw per output row


def test_sampling_keeps_candidate_zero_greedy_and_follows_the_distribution():
    k, n_windows = 5, 200
    logits = torch.log(torch.tensor([0.6, 0.3, 0.1]))[None, None].expand(n_windows * k, 1, 3).contiguous()
    gen = torch.Generator().manual_seed(0)
    ids, probs = choose_tokens(logits, sample=True, k=k, temperature=1.0, generator=gen)
    assert (ids[::k] == 0).all()  # candidate 0 of every window
    others = ids.view(n_windows, k)[:, 1:].flatten()
    freq = torch.bincount(others, minlength=3).float() / others.numel()
    assert torch.allclose(freq, torch.tensor([0.6, 0.3, 0.1]), atol=0.05)
    assert torch.allclose(probs, torch.tensor([0.6, 0.3, 0.1])[ids], atol=1e-5)  # the sampled token's p


def test_kernel_table_is_a_view_of_padded_logits():
    from whisfusion_cli.token_stats import _as_table

    padded = _logits((4, 6, 60))
    table = _as_table(padded[..., :50])  # a padded head's slice: strided rows, no copy
    assert table.shape == (4, 6, 50) and table.data_ptr() == padded.data_ptr() and table.stride(1) == 60
    assert _as_table(padded[:, 0]).shape == (4, 1, 60)  # (M, V): one position per row
    odd = _logits((6, 4, 50)).transpose(0, 1)  # middle dims that do not merge: one contiguous copy
    assert torch.equal(_as_table(odd), odd.contiguous())


def _cuda_kernel():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("triton")
    from whisfusion_cli import token_stats

    assert token_stats.triton is not None
    return token_stats


def _chi_square(ids: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's statistic of the drawn ids against the expected probabilities (zero-mass ids must not occur)."""
    counts = torch.bincount(ids.flatten().cpu(), minlength=probs.numel()).double()
    expected = probs.double().cpu() * ids.numel()
    assert (counts[expected == 0] == 0).all()
    live = expected > 0
    return float(((counts[live] - expected[live]) ** 2 / expected[live]).sum())


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_triton_kernel_matches_torch_on_cuda(dtype):
    token_stats = _cuda_kernel()
    padded = _logits((6, 9, 51904), "cuda", dtype)
    padded[..., 51865:] = 1e4  # the padded head's spare columns: never read
    logits = padded[..., :51865]  # strided rows, as the padded head returns them
    ids, probs = choose_tokens(logits)
    ref_ids, ref_probs = token_stats._argmax_torch(logits.float())
    assert torch.equal(ids, ref_ids)
    assert torch.allclose(probs, ref_probs, rtol=1e-3)
    rows = torch.tensor([2, 2, 2, 0, 0, 0, 5, 5, 5, 1, 1, 1], device="cuda")  # 4 windows x k = 3, shared rows
    gen = torch.Generator(device="cuda").manual_seed(0)
    ids, probs = choose_tokens(logits, rows, sample=True, k=3, generator=gen)
    assert ids.shape == (12, 9) and (ids < 51865).all()
    assert torch.equal(ids[::3], ref_ids[rows[::3]])  # candidate 0 of each window: the argmax
    p_ref = logits.float().softmax(-1)[rows].gather(-1, ids[..., None])[..., 0]
    assert torch.allclose(probs, p_ref, rtol=1e-3, atol=1e-7)  # the sampled token's p at temperature 1
    assert (ids[1::3] != ids[::3]).any()  # the others sample
    spelled = choose_tokens(logits[rows].contiguous(), sample=True, k=3,
                            generator=torch.Generator(device="cuda").manual_seed(0))
    assert torch.equal(ids, spelled[0])  # a row map reads the same values (the padded rows' other stride
    assert torch.allclose(probs, spelled[1], rtol=1e-5, atol=0)  # may order the block sums otherwise)
    again = choose_tokens(logits, rows, sample=True, k=3, generator=torch.Generator(device="cuda").manual_seed(0))
    assert torch.equal(ids, again[0])  # seeded: reproducible
    greedy_ids, greedy_probs = choose_tokens(logits, rows)
    assert torch.equal(greedy_ids, ref_ids[rows]) and torch.equal(greedy_probs, choose_tokens(logits)[1][rows])


@pytest.mark.requires_cuda
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_triton_samples_follow_the_softmax_on_cuda(temperature):
    """Small vocabulary, many rows read through a row map: frequencies against softmax(logits / T)."""
    _cuda_kernel()
    k, n_windows, n_pos = 4, 600, 3
    dist = torch.tensor([0.05, 0.3, 0.0, 0.15, 0.2, 0.1, 0.2], device="cuda")  # token 2 has no mass
    logits = dist.log()[None, None].expand(n_windows, n_pos, 7)  # (B, P, V), one stored row
    rows = torch.arange(n_windows, device="cuda").repeat_interleave(k)
    gen = torch.Generator(device="cuda").manual_seed(0)
    ids, probs = choose_tokens(logits, rows, sample=True, k=k, temperature=temperature, generator=gen)
    assert (ids.view(n_windows, k, n_pos)[:, 0] == 1).all()
    others = ids.view(n_windows, k, n_pos)[:, 1:]  # 5,400 draws
    assert _chi_square(others, torch.softmax(dist.log() / temperature, 0)) < 25.0  # 5 dof: p ~ 1e-4
    assert torch.allclose(probs, dist[ids], atol=1e-6)  # temperature-1 probability whatever T


@pytest.mark.requires_cuda
def test_triton_samples_across_vocabulary_blocks_on_cuda():
    """Mass on both sides of BLOCK boundaries and at the last token: the second read's block loop and its stop."""
    token_stats = _cuda_kernel()
    block = token_stats.BLOCK
    vocab = 3 * block + 123
    hot = torch.tensor([5, block - 1, block, 2 * block + 7, vocab - 1])
    dist = torch.zeros(vocab)
    dist[hot] = torch.tensor([0.1, 0.2, 0.3, 0.15, 0.25])
    padded = torch.full((1, 1, vocab + 64), 1e4, device="cuda")  # spare columns never read
    padded[..., :vocab] = torch.where(dist > 0, dist.log(), torch.tensor(-1e4)).cuda()
    n = 8000
    ids, _ = choose_tokens(padded[..., :vocab], torch.zeros(n, dtype=torch.long, device="cuda"), sample=True, k=n,
                           generator=torch.Generator(device="cuda").manual_seed(3))
    assert ids[0].item() == block  # the greedy one
    assert _chi_square(ids[1:], dist) < 25.0  # 4 dof


@pytest.mark.requires_cuda
def test_triton_sampling_reads_shared_rows_in_place():
    """PDD's first pass: k candidates per window from one logits row each, without a (B*k, L, V) copy."""
    _cuda_kernel()
    logits = _logits((2, 64, 51865), "cuda", torch.float32)  # 27 MB
    rows = torch.arange(2, device="cuda").repeat_interleave(15)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    choose_tokens(logits, rows, sample=True, k=15, generator=torch.Generator(device="cuda").manual_seed(0))
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - before < logits.nbytes // 4  # a copy would be 15 x logits
