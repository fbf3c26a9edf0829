"""choose_tokens: the argmax / Gumbel-max choice and its probability (torch on CPU, Triton on CUDA)."""

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


@pytest.mark.requires_cuda
def test_triton_kernel_matches_torch_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from whisfusion_cli import token_stats

    assert token_stats.triton is not None
    padded = _logits((6, 9, 51904), "cuda", torch.bfloat16)
    logits = padded[..., :51865]  # strided rows, as the padded head returns them
    ids, probs = choose_tokens(logits)
    ref_ids, ref_probs = token_stats._argmax_torch(logits.float())
    assert torch.equal(ids, ref_ids)
    assert torch.allclose(probs, ref_probs, rtol=1e-3)
    k, n_windows = 4, 500
    dist = torch.log(torch.tensor([0.5, 0.25, 0.15, 0.1], device="cuda"))
    logits = dist[None, None].expand(n_windows * k, 1, 4).contiguous()
    gen = torch.Generator(device="cuda").manual_seed(0)
    ids, probs = choose_tokens(logits, sample=True, k=k, generator=gen)
    assert (ids[::k] == 0).all()
    others = ids.view(n_windows, k)[:, 1:].flatten()
    freq = torch.bincount(others, minlength=4).float() / others.numel()
    assert torch.allclose(freq, dist.exp(), atol=0.04)
    again, _ = choose_tokens(logits, sample=True, k=k, generator=torch.Generator(device="cuda").manual_seed(0))
    assert torch.equal(ids, again)  # seeded: reproducible
