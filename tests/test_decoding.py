"""PDD on fake decoders (exact expectations) and on a tiny random whisfusion model."""

import numpy as np
import pytest
import torch

from whisfusion_cli.config import PRESETS, DecodingOptions
from whisfusion_cli.decoding import canvas_to_ids, content_mask, mean_confidence, pdd
from whisfusion_cli.errors import ConfigError

V, MASK, EOS = 12, 12, 2
CPU = torch.device("cpu")


class Recorder:
    """A fake decoder: fixed per-position logits; records what each call saw."""

    def __init__(self, logits_fn):
        self.logits_fn = logits_fn
        self.calls: list[torch.Tensor] = []

    def __call__(self, canvas: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        self.calls.append(canvas.clone())
        return at(self.logits_fn(canvas), positions)


def at(logits: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    """The full head's logits (N, L, V) at positions (N, P): the reference a decoder fn must match."""
    if positions is None:
        return logits
    return logits.gather(1, positions[..., None].expand(-1, -1, logits.shape[-1]))


def peaked(canvas: torch.Tensor, scale: float = 30.0) -> torch.Tensor:
    """Position p predicts token 3 + p % 5 for p < 6, then EOS; almost surely."""
    n, length = canvas.shape
    target = torch.tensor([3 + p % 5 if p < 6 else EOS for p in range(length)])
    return torch.nn.functional.one_hot(target, V).float().expand(n, -1, -1) * scale


def test_presets_are_the_papers():
    assert (PRESETS["fast"].k, PRESETS["fast"].steps, PRESETS["fast"].schedule) == (5, 3, (1.0, 0.9, 0.8))
    assert (PRESETS["balanced"].k, PRESETS["balanced"].schedule) == (10, (1.0, 0.9, 0.85, 0.8))
    assert (PRESETS["accurate"].k, PRESETS["accurate"].steps) == (15, 4)
    with pytest.raises(ConfigError):
        DecodingOptions(k=3, steps=2, schedule=(1.0, 0.9, 0.8))
    with pytest.raises(ConfigError):
        DecodingOptions(k=3, steps=2, schedule=(0.5, 0.9))
    with pytest.raises(ConfigError):
        DecodingOptions.from_preset("turbo")


@pytest.mark.parametrize("rule", ["low_confidence", "random"])
def test_step_count_and_remask_fractions(rule):
    dec = Recorder(peaked)
    opts = DecodingOptions(k=4, steps=3, schedule=(1.0, 0.9, 0.5), remask=rule, scope="canvas")
    out = pdd(dec, n_windows=3, canvas_len=20, mask_id=MASK, eos_id=EOS, options=opts, device=CPU)
    assert out.n_forward == 3 and len(dec.calls) == 3
    assert [c.shape for c in dec.calls] == [(3, 20), (12, 20), (12, 20)]  # first pass: one row per window
    masked_per_row = [(c == MASK).sum(1) for c in dec.calls]
    assert (masked_per_row[0] == 20).all() and (masked_per_row[1] == 18).all() and (masked_per_row[2] == 10).all()
    assert not (out.candidates == MASK).any()


@pytest.mark.parametrize("rule", ["low_confidence", "random"])
def test_text_scope_remasks_a_fraction_of_the_predicted_text_only(rule):
    """6 text tokens + their end-of-text = a scope of 7: rho 0.9 -> 6, 0.5 -> 4 (round half to even);
    the 13 confident padding positions are never re-masked."""
    dec = Recorder(peaked)
    opts = DecodingOptions(k=4, steps=3, schedule=(1.0, 0.9, 0.5), remask=rule, scope="text")
    out = pdd(dec, n_windows=3, canvas_len=20, mask_id=MASK, eos_id=EOS, options=opts, device=CPU)
    masked_per_row = [(c == MASK).sum(1) for c in dec.calls]
    assert (masked_per_row[1] == 6).all() and (masked_per_row[2] == 4).all()
    assert not (dec.calls[1][:, 7:] == MASK).any() and not (dec.calls[2][:, 7:] == MASK).any()
    assert (out.candidates[..., 7:] == EOS).all()


def test_text_scope_keeps_doubtful_padding_open():
    """Padding predicted with probability < DOUBT counts as text: the length can still grow."""
    def unsure_tail(canvas):
        logits = peaked(canvas).clone()
        logits[:, 6:, :] = 0.0  # after the text: flat over the vocabulary (EOS not confident)
        logits[:, 6:, EOS] = 1.0
        return logits

    dec = Recorder(unsure_tail)
    opts = DecodingOptions(k=1, steps=2, schedule=(1.0, 0.5), scope="text")
    pdd(dec, 1, 20, MASK, EOS, opts, CPU)
    assert (dec.calls[1] == MASK).sum() == 10  # 0.5 x (6 text + 14 doubtful padding)


def test_dedupe_merges_only_unsure_adjacent_repeats():
    ids = [5, 5, 6, 7, 7, 8, EOS, 9]
    conf = [0.9, 0.3, 0.9, 0.95, 0.97, 0.9, 1.0, 1.0]
    assert canvas_to_ids(ids, EOS, None, conf, dedupe=0.5) == [5, 6, 7, 7, 8]  # 7 7: both confident
    assert canvas_to_ids(ids, EOS, None, conf, dedupe=0.0) == [5, 5, 6, 7, 7, 8]
    assert canvas_to_ids([5, 5, 5], EOS, None, [0.9, 0.2, 0.9], dedupe=0.5) == [5]  # a run of three


def test_candidates_are_window_major_batches():
    def per_window(canvas):  # every row of window w (n // 2 rows each) predicts token 3 + w everywhere
        n, length = canvas.shape
        w = torch.arange(n) // (n // 2)
        return torch.nn.functional.one_hot(3 + w, V).float()[:, None, :].expand(n, length, V) * 40

    out = pdd(Recorder(per_window), 2, 8, MASK, EOS, DecodingOptions(k=5, steps=2, schedule=(1.0, 0.5)), CPU)
    assert out.candidates.shape == (2, 5, 8)
    assert (out.candidates[0] == 3).all() and (out.candidates[1] == 4).all()


def test_selects_the_most_confident_candidate():
    k = 4
    scales = torch.tensor([1.0, 4.0, 2.0, 3.0])  # candidate 1 is the most confident

    def graded(canvas):  # the first pass (one row per window) flat; then candidate c's logits scaled by scales[c]
        n, length = canvas.shape
        if n == 2:
            return torch.zeros(n, length, V)
        return peaked(canvas, 1.0) * scales.repeat(n // k)[:, None, None]

    opts = DecodingOptions(k=k, steps=2, schedule=(1.0, 1.0), scope="canvas")  # step 2 re-predicts everything
    out = pdd(graded, 2, 10, MASK, EOS, opts, CPU)
    assert out.candidate_confidence.argmax(-1).tolist() == [1, 1]
    assert torch.equal(out.tokens, out.candidates[:, 1])
    expected = torch.softmax(torch.tensor([4.0] + [0.0] * (V - 1)), 0)[0]
    assert torch.allclose(out.confidence, expected.expand(2))


def test_eos_and_padding_never_leak_into_text():
    canvas = torch.tensor([[5, 6, EOS, 7, 8, EOS], [EOS, 9, 9, 9, 9, 9], [5, 5, 5, 5, 5, 5]])
    assert canvas_to_ids(canvas[0], EOS) == [5, 6]
    assert canvas_to_ids(canvas[1], EOS) == []
    assert canvas_to_ids(canvas[2], EOS, vocab_limit=5) == []
    assert content_mask(canvas, EOS)[0].tolist() == [True, True, True, False, False, False]
    conf = torch.tensor([[0.5, 0.7, 0.9, 0.0, 0.0, 0.0]] * 3)
    assert torch.allclose(mean_confidence(canvas, conf, EOS)[0], torch.tensor(0.7))


def test_pdd_on_tiny_model_is_deterministic(tiny_model):
    net, cfg = tiny_model.net, tiny_model.cfg
    xa = net.encoder(torch.randn(2, 80, 3000))
    kv = net.decoder.cross_kv(xa)

    def run(seed: int, preset: str = "fast", **overrides) -> torch.Tensor:
        opts = tiny_model.options(preset, seed=seed, **overrides)
        return pdd(lambda c, positions=None: net.decoder(c, kv, positions=positions), 2, 32, cfg.decoder.mask_id,
                   cfg.eos_id, opts, CPU).candidates

    a, b = run(123), run(123)
    assert a.shape == (2, 5, 32) and torch.equal(a, b)
    assert torch.equal(run(5, "accurate", remask="random"), run(5, "accurate", remask="random"))
    # the seed drives the sampled candidates (a random model's later argmax steps may wash them out)
    first, other = run(123, steps=1, schedule=(1.0,)), run(7, steps=1, schedule=(1.0,))
    assert not torch.equal(first, other)
    assert torch.equal(first[:, 0], other[:, 0])  # candidate 0 is greedy whatever the seed
    rng = np.random.default_rng(0)
    windows = [rng.standard_normal(16000 * s).astype(np.float32) * 0.1 for s in (3, 7)]
    opts = tiny_model.options("fast", seed=123)
    assert tiny_model.decode_windows(windows, opts) == tiny_model.decode_windows(windows, opts)


def test_candidate_zero_is_greedy_and_independent_of_batch(tiny_model):
    rng = np.random.default_rng(1)
    windows = [rng.standard_normal(16000 * 4).astype(np.float32) * 0.1 for _ in range(3)]
    opts = DecodingOptions(k=3, steps=1, schedule=(1.0,), canvas_len=24)
    batched = tiny_model.decode_windows(windows, opts)
    for w, r in zip(windows, batched):
        solo = tiny_model.decode_windows([w], DecodingOptions(k=1, steps=1, schedule=(1.0,), canvas_len=24))
        assert r.candidates[0] == solo[0].text


def test_canvas_length_follows_duration():
    from whisfusion_cli.decoding import MIN_CANVAS, canvas_length

    assert canvas_length(0.5, 256) == MIN_CANVAS
    assert canvas_length(10.0, 256) < canvas_length(20.0, 256) <= canvas_length(30.0, 256) <= 256
    assert canvas_length(30.0, 256) >= 30 * 6  # room for fast speech
    assert canvas_length(30.0, 64) == 64


def test_default_schedule_for_a_bare_step_count():
    from whisfusion_cli.config import default_schedule

    assert default_schedule(1) == (1.0,)
    assert default_schedule(3) == (1.0, 0.9, 0.8)
    s = default_schedule(8)
    assert len(s) == 8 and s[0] == 1.0 and s[1] == 0.9 and s[-1] == 0.8 and list(s[1:]) == sorted(s[1:], reverse=True)
    DecodingOptions(k=2, steps=8, schedule=s)  # valid


def test_preset_name_ignores_the_seed():
    assert DecodingOptions.from_preset("fast", seed=42).preset_name == "fast"
    assert DecodingOptions.from_preset("fast", k=7).preset_name is None


def _tiny_decoders(family: str, tiny_model):
    """(decoder, cross K/V of 2 random windows, mask id) for either decoder family."""
    if family == "smdm":
        dec, mask_id = tiny_model.net.decoder, tiny_model.cfg.decoder.mask_id
    else:
        from whisfusion_cli.config import WhisperMDMConfig
        from whisfusion_cli.whisper_mdm import WhisperMDMDecoder

        cfg = WhisperMDMConfig(n_vocab=300, n_text_ctx=64, n_text_state=64, n_text_head=4, n_text_layer=2,
                               n_text_mlp=128, prefix=(290, 291), max_seq_len=48)
        torch.manual_seed(0)
        dec, mask_id = WhisperMDMDecoder(cfg).eval(), cfg.mask_id
    torch.manual_seed(1)
    return dec, dec.cross_kv(torch.randn(2, 40, 64), torch.tensor([30, 40])), mask_id


@pytest.mark.parametrize("family", ["smdm", "whisper-mdm"])
def test_forward_at_positions_equals_the_full_head(family, tiny_model):
    dec, kv, mask_id = _tiny_decoders(family, tiny_model)
    tokens = torch.randint(0, 250, (6, 20))
    tokens[:, ::3] = mask_id
    positions = torch.stack([torch.randperm(20)[:7] for _ in range(6)])  # (6, 7)
    with torch.no_grad():
        full, part = dec(tokens, kv), dec(tokens, kv, positions=positions)
    assert part.shape == (6, 7, full.shape[-1])
    assert torch.allclose(part, full.gather(1, positions[..., None].expand(-1, -1, full.shape[-1])), atol=1e-5)


@pytest.mark.parametrize("family", ["smdm", "whisper-mdm"])
@pytest.mark.parametrize("scope", ["text", "canvas"])
def test_head_at_remasked_positions_only_gives_the_same_pdd(family, scope, tiny_model):
    dec, kv, mask_id = _tiny_decoders(family, tiny_model)
    seen: list[int] = []

    def at_positions(canvas, positions=None):
        seen.append(canvas.shape[1] if positions is None else positions.shape[1])
        return dec(canvas, kv, positions=positions)

    for rule in ("low_confidence", "random"):
        opts = DecodingOptions(k=3, steps=4, schedule=(1.0, 0.6, 0.35, 0.15), remask=rule, scope=scope, seed=11)
        full = pdd(lambda c, positions=None: at(dec(c, kv), positions), 2, 32, mask_id, EOS, opts, CPU)
        seen.clear()
        part = pdd(at_positions, 2, 32, mask_id, EOS, opts, CPU)
        assert seen == [32, 20, 12, 5]  # ceil(rho_t * 32) after the full first step
        assert torch.equal(part.candidates, full.candidates) and torch.equal(part.best, full.best)
        assert torch.allclose(part.token_confidence, full.token_confidence, atol=1e-6)
        assert not (part.candidates == mask_id).any()


def test_head_sizes_bound_both_remask_rules():
    from whisfusion_cli.decoding import head_sizes

    assert head_sizes((1.0, 0.9, 0.5), 20) == (20, 18, 10)
    assert head_sizes((1.0, 1.0, 0.01), 16) == (16, 16, 1)
    for length in range(1, 80):
        for rho in (0.15, 0.35, 0.5, 0.6, 0.8, 0.85, 0.9, 0.95):
            assert round(rho * length) <= head_sizes((1.0, rho), length)[1] <= length


def test_distinct_rows_decodes_each_windows_distinct_canvases_once():
    from whisfusion_cli.decoding import distinct_rows

    def window_aware(canvas):  # logits depend on the canvas and on the row's window: 2 windows, window-major
        n = canvas.shape[0]
        w = (torch.arange(n) // (n // 2)).float()[:, None, None]
        return peaked(canvas) + w * torch.arange(V).float() + (canvas == MASK).float()[..., None]

    rec = Recorder(window_aware)
    canvas = torch.full((8, 6), MASK)
    canvas[1, 0] = canvas[2, 0] = 5  # window 0: rows {0, 3}, {1, 2}; window 1: all four equal
    positions = torch.arange(6).expand(8, -1)[:, :4].contiguous()
    for pos in (None, positions):
        logits, rows = distinct_rows(rec, 2)(canvas, positions=pos)
        assert rec.calls[-1].shape == (4, 6) and logits.shape[0] == 4  # 2 windows x 2 rows (window 1 repeats one)
        assert torch.equal(logits[rows], at(window_aware(canvas), pos))  # canvas row n reads logits[rows[n]]
    logits, rows = distinct_rows(rec, 2)(canvas[:4].repeat(2, 1))
    assert logits[rows].shape == (8, 6, V)
    every = torch.arange(48).view(8, 6) % 7  # every row distinct: the plain decoder's logits
    assert torch.equal(distinct_rows(rec, 2)(every), window_aware(every))


@pytest.mark.parametrize("family", ["smdm", "whisper-mdm"])
def test_pdd_on_distinct_rows_is_the_same_pdd(family, tiny_model):
    from whisfusion_cli.decoding import distinct_rows

    dec, kv, mask_id = _tiny_decoders(family, tiny_model)
    rows: list[int] = []

    def plain(canvas, positions=None):
        rows.append(canvas.shape[0])
        return dec(canvas, kv, positions=positions)

    opts = DecodingOptions(k=4, steps=4, schedule=(1.0, 0.6, 0.35, 0.15), seed=3)
    full = pdd(plain, 2, 32, mask_id, EOS, opts, CPU)
    rows.clear()
    fewer = pdd(distinct_rows(plain, 2), 2, 32, mask_id, EOS, opts, CPU)
    assert rows[0] == 2 and all(r <= 8 for r in rows)  # the all-[MASK] first pass: one row per window
    assert torch.equal(fewer.candidates, full.candidates) and torch.equal(fewer.best, full.best)
    assert torch.allclose(fewer.token_confidence, full.token_confidence, atol=1e-5)


@pytest.mark.parametrize("family", ["smdm", "whisper-mdm"])
def test_decoders_take_one_row_per_window_or_k(family, tiny_model):
    """Row n of a (B * R, L) canvas reads window n // R's audio: R = 1 (PDD's first pass) gives each
    window the logits that any of its R = k rows gets, and the eager DecoderFn passes it straight through."""
    from whisfusion_cli.decoding import eager_decoder

    dec, kv, mask_id = _tiny_decoders(family, tiny_model)
    k = 3
    canvas = torch.randint(0, 250, (2, 16))
    canvas[:, ::2] = mask_id
    with torch.no_grad():
        one = dec(canvas, kv)  # (2, 16, V)
        spelled = dec(canvas.repeat_interleave(k, 0), kv).view(2, k, 16, -1)
        assert not torch.allclose(one[0], one[1], atol=1e-3)  # the windows' audio differs
        for r in range(k):
            assert torch.allclose(spelled[:, r], one, atol=1e-5)
        assert torch.equal(eager_decoder(dec, kv, 2)(canvas), one)  # a plain tensor: nothing to share


@pytest.mark.parametrize("family", ["smdm", "whisper-mdm"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_first_pass_decodes_one_row_per_window_and_draws_what_k_rows_drew(family, temperature, tiny_model):
    """The first pass calls the decoder on (windows, L) all-[MASK] rows; its k candidates per window are the
    same draws (same seed) as sampling from the logits of every candidate's own row, as PDD did before."""
    from whisfusion_cli.decoding import make_generator
    from whisfusion_cli.token_stats import choose_tokens

    dec, kv, mask_id = _tiny_decoders(family, tiny_model)
    k, length = 5, 32
    calls: list[torch.Tensor] = []

    def spy(canvas, positions=None):
        calls.append(canvas.clone())
        return dec(canvas, kv, positions=positions)

    opts = DecodingOptions(k=k, steps=3, schedule=(1.0, 0.6, 0.3), temperature=temperature, seed=4)
    out = pdd(spy, 2, length, mask_id, EOS, opts, CPU)
    assert [c.shape[0] for c in calls] == [2, 2 * k, 2 * k] and (calls[0] == mask_id).all()
    first = pdd(spy, 2, length, mask_id, EOS, DecodingOptions(k=k, steps=1, schedule=(1.0,), temperature=temperature,
                                                              seed=4), CPU)
    with torch.no_grad():  # before: the decoder on all k x windows rows, one logits row per candidate
        logits = dec(torch.full((2 * k, length), mask_id), kv)
    ids, probs = choose_tokens(logits, None, True, k, temperature, make_generator(CPU, 4))
    assert torch.equal(first.candidates.view(2 * k, length), ids)
    assert torch.allclose(first.token_confidence.view(2 * k, length), probs, atol=1e-5)
    assert len({tuple(c) for c in ids.tolist()}) > 2  # the candidates differ: samples, not k copies
    assert not (out.candidates == mask_id).any()


def test_masked_first_is_a_stable_sort_of_the_mask():
    from whisfusion_cli.decoding import masked_first

    masked = torch.rand(6, 37, generator=torch.Generator().manual_seed(0)) < 0.4
    expected = masked.to(torch.uint8).sort(dim=-1, descending=True, stable=True).indices
    assert torch.equal(masked_first(masked), expected)
