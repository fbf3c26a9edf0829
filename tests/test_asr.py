"""Decode batches sized by memory (asr.windows_per_batch, WhisfusionASR.batch_size)."""

from __future__ import annotations

import torch

from whisfusion_cli.asr import CPU_DECODE_BUDGET, decode_memory_budget, windows_per_batch
from whisfusion_cli.config import DecodingOptions
from whisfusion_cli.decoding import canvas_length

VOCAB = 51865  # the bundled model's


def test_windows_per_batch_shrinks_as_k_or_canvas_grows() -> None:
    budget = 8e9
    by_k = [windows_per_batch(k, 128, VOCAB, budget) for k in (1, 5, 10, 15)]
    by_canvas = [windows_per_batch(5, n, VOCAB, budget) for n in (32, 64, 128, 256)]
    assert by_k == sorted(by_k, reverse=True) and by_k[0] > by_k[-1]
    assert by_canvas == sorted(by_canvas, reverse=True) and by_canvas[0] > by_canvas[-1]


def test_windows_per_batch_is_at_least_one_and_at_most_the_limit() -> None:
    assert windows_per_batch(15, 256, VOCAB, 0.0) == 1
    assert windows_per_batch(15, 256, VOCAB, 1e6) == 1
    assert windows_per_batch(1, 16, 320, 1e15, limit=7) == 7
    assert windows_per_batch(1, 16, 320, 1e15, limit=1) == 1


def test_accurate_on_the_cpu_decodes_one_long_window_at_a_time() -> None:
    """k=15 on a 30 s canvas: ~0.8 GB of logits per window, so the CPU budget holds one."""
    budget = decode_memory_budget(torch.device("cpu"))
    assert 0 < budget <= CPU_DECODE_BUDGET
    assert windows_per_batch(15, canvas_length(30.0, 256), VOCAB, CPU_DECODE_BUDGET) == 1
    assert windows_per_batch(5, canvas_length(5.0, 256), VOCAB, CPU_DECODE_BUDGET) > 1


def test_model_batch_size_follows_the_options(tiny_model) -> None:
    small = tiny_model.batch_size(DecodingOptions(k=1, steps=2, schedule=(1.0, 0.5)), 5.0)
    large = tiny_model.batch_size(DecodingOptions(k=15, steps=2, schedule=(1.0, 0.5)), 30.0)
    assert 1 <= large <= small
