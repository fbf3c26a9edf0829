import torch

from whisfusion_cli.diffusion import forward_process, masked_diffusion_loss, select_remask


def test_forward_process_ratio_and_range():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 100, (2000, 64))
    xt, masked, t = forward_process(x0, mask_id=100, t_min=0.7, t_max=1.0, generator=g)
    assert ((t >= 0.7) & (t <= 1.0)).all()
    assert torch.equal(xt == 100, masked) and torch.equal(xt[~masked], x0[~masked])
    frac = masked.float().mean(1)
    assert (frac - t).abs().mean() < 0.05  # each row masked at its own ratio t
    assert abs(masked.float().mean().item() - 0.85) < 0.01


def test_loss_counts_only_masked_positions_weighted_by_inverse_t():
    logits = torch.randn(2, 4, 10)
    x0 = torch.randint(0, 10, (2, 4))
    masked = torch.tensor([[True, False, False, False], [True, True, False, False]])
    t = torch.tensor([0.25, 0.5])
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x0.flatten(), reduction="none").view(2, 4)
    expected = (ce[0, 0] / 0.25 + (ce[1, 0] + ce[1, 1]) / 0.5) / 8
    assert torch.allclose(masked_diffusion_loss(logits, x0, masked, t), expected)
    logits2 = logits.clone()
    logits2[0, 1] += 100  # an unmasked position does not change the loss
    assert torch.allclose(masked_diffusion_loss(logits2, x0, masked, t), expected)


def test_select_remask_low_confidence_and_random():
    conf = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.8]])
    low = select_remask(conf, 2, "low_confidence")
    assert low.tolist() == [[False, True, False, True, False]]
    g = torch.Generator().manual_seed(0)
    rnd = select_remask(torch.rand(100, 40), 30, "random", g)
    assert (rnd.sum(1) == 30).all()
    assert not torch.equal(rnd[0], rnd[1])
    assert select_remask(conf, 0, "random").sum() == 0 and select_remask(conf, 9, "random").all()
