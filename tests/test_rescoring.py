"""rescoring.py: Whisper's AR decoder reading PDD's candidates (teacher-forced scores, verified drafts)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from whisfusion_cli import rescoring, verification, verify_graphs
from whisfusion_cli.config import WhisperTextConfig
from whisfusion_cli.rescoring import Rescorer
from whisfusion_cli.verification import Row
from whisfusion_cli.whisper import WhisperTextDecoder

EOT, PROMPT, N_NEW = 50, [60, 61], 10


@pytest.fixture()
def ar(one_thread, monkeypatch):
    """(a random AR decoder, its Rescorer sharing the embedding, audio states (2, 30, 32))."""
    monkeypatch.setattr(verification, "MAX_NEW_TOKENS", N_NEW)
    torch.manual_seed(0)
    dec = WhisperTextDecoder(WhisperTextConfig(64, 32, 32, 4, 2, 64)).eval()
    with torch.no_grad():  # varied greedy texts (a random tied head repeats its input token) that hear the audio
        dec.embed_tokens.weight.normal_(0, 1)
        dec.embed_positions.weight.normal_(0, 4)
        for layer in dec.layers:
            layer.encoder_attn.out_proj.weight.mul_(20)
    rescorer = Rescorer(copy.deepcopy(dec), dec.embed_tokens, PROMPT, EOT).eval()
    return dec, rescorer, torch.randn(2, 30, 32)


@pytest.fixture(params=["eager", "fixed"])
def verifier(request, ar):
    """`ar` with its verification eager (rows of each pass's own shape) or in fixed shapes (verify_graphs:
    the GPU's path, here without graphs)."""
    if request.param == "fixed":
        ar[1].fixed = verify_graphs.FixedVerifier(ar[1], graphs=False)
    return ar


def greedy(dec: WhisperTextDecoder, xa: torch.Tensor) -> list[list[int]]:
    """Whisper greedy decoding (whisper.WhisperModel.greedy's loop) of each window."""
    from whisfusion_cli.whisper import WhisperModel

    return WhisperModel.greedy(type("M", (), {"decoder": dec})(), xa, PROMPT, EOT, EOT, N_NEW)[0]


def test_read_matches_a_direct_forward_whatever_the_padding_and_chunking(ar, monkeypatch):
    dec, rescorer, xa = ar
    seqs = [[5, 9, 13, 7], [3], [8, 8, 2]]
    windows = [0, 1, 1]
    kv = rescorer.cross_kv(xa)
    rows = [Row(w, s) for s, w in zip(seqs, windows)]
    whole = rescorer.read(kv, rows)
    monkeypatch.setattr(rescoring, "LOGITS_BUDGET", 1)  # one row per chunk
    for a, b in zip(rescorer.read(kv, rows), whole):
        assert a.best == b.best and a.token_logprob == pytest.approx(b.token_logprob, abs=1e-4)
    for seq, w, r in zip(seqs, windows, whole):
        tokens = torch.tensor([PROMPT + seq + [EOT]])
        with torch.no_grad():
            logits = dec(tokens[:, :-1], dec.cross_kv(xa[w: w + 1]), dec.new_cache(1, tokens.shape[1]), 0).float()
        logits[..., EOT + 1:] = -torch.inf
        logits[:, len(PROMPT) - 1, EOT] = -torch.inf
        lp = logits.log_softmax(-1)[0, len(PROMPT) - 1:]  # predicts seq + [EOT]
        want = lp.gather(-1, tokens[0, len(PROMPT):, None])[:, 0]
        assert r.token_logprob == pytest.approx(want.tolist(), abs=1e-5)
        assert r.best == lp.argmax(-1).tolist()
        assert r.total == pytest.approx(float(want.sum()), abs=1e-4)


@pytest.mark.parametrize("head_span", [16, 3, 1])
def test_verify_at_ratio_one_is_whisper_greedy_from_any_draft(verifier, monkeypatch, head_span):
    """Whatever the draft, and however many positions at a time the head reads (it stops at a rejection)."""
    monkeypatch.setattr(rescoring, "HEAD_SPAN", head_span)
    dec, rescorer, xa = verifier
    want = greedy(dec, xa)
    kv = rescorer.cross_kv(xa)
    g = torch.Generator().manual_seed(1)
    for drafts in (want, [[7], [EOT - 1]], [torch.randint(0, EOT, (n,), generator=g).tolist() for n in (3, 12)]):
        assert rescorer.verify(kv, drafts, 1.0)[0] == want
    assert rescorer.verify(kv, [[], want[1]], 1.0)[0] == [[], want[1]]  # no speech drafted: none written


def test_verify_stops_at_each_windows_limit(verifier):
    """A window's text never grows past its limit (the canvas its audio allows), however short the
    draft and whatever the AR decoder would go on writing; a window within its limit is untouched."""
    dec, rescorer, xa = verifier
    want = greedy(dec, xa)
    kv = rescorer.cross_kv(xa)
    got, passes = rescorer.verify(kv, [[7], want[1]], 1.0, limits=[3, len(want[1]) + 1])
    assert got == [want[0][:3], want[1]] and len(want[0]) > 3
    assert passes <= 3  # a looping AR decoder would have gone on to MAX_NEW_TOKENS


def test_a_verified_text_that_loops_keeps_the_draft(tiny_model):
    """Whisper's compression-ratio test: the AR decoder looping ("all the way all the way ...") where
    the draft did not gives the draft; a verified text that only corrects the draft is kept."""
    from whisfusion_cli.config import DecodingOptions
    from whisfusion_cli.verification import compression_ratio, looped

    tok = tiny_model.tokenizer
    loop = "I all the way" + " all the way" * 30
    assert compression_ratio(loop) > 2.4 > compression_ratio("I always thought he was a good person.")
    assert looped(loop, "I always thought") and not looped("I always thought so.", "I always thought")
    assert not looped(loop, loop)  # the draft loops too: nothing better to fall back on

    class Verifier:
        verify_texts = Rescorer.verify_texts  # the real glue around this fake pass

        def __init__(self, text):
            self.text = text

        def cross_kv(self, xa):
            return []

        def verify(self, kv, drafts, ratio, margins=None, limits=None):
            return tok.encode_transcripts([self.text]), 5

    options = DecodingOptions(k=1, steps=1, schedule=(1.0,), select="confidence", verify=1.0)
    draft = tok.encode_transcripts(["I always thought"])[0]
    for verified, want in ((loop, "I always thought"), ("I always thought so.", "I always thought so.")):
        tiny_model.rescorer = Verifier(verified)
        out = tiny_model._results([("I always thought",)], [(draft,)], [0], [[0.9]], None, options, [([0.9] * len(draft),)])
        assert out[0].text.strip() == want and out[0].ar_passes == 5


@pytest.mark.parametrize("head_span", [16, 2])
def test_verify_needs_one_pass_per_disagreement(verifier, monkeypatch, head_span):
    monkeypatch.setattr(rescoring, "HEAD_SPAN", head_span)
    dec, rescorer, xa = verifier
    want = greedy(dec, xa)
    kv = rescorer.cross_kv(xa)
    assert all(len(w) >= 4 for w in want)
    assert rescorer.verify(kv, want, 1.0) == (want, 1)  # the AR decoder agrees: one pass
    other = [(t + 1) % EOT for t in (want[0][2], want[1][1])]
    substituted = [want[0][:2] + [other[0]] + want[0][3:], want[1][:1] + [other[1]] + want[1][2:]]
    dropped = [want[0][:2] + want[0][3:], want[1][1:]]
    inserted = [want[0][:2] + [other[0]] + want[0][2:], want[1][:1] + [other[1]] + want[1][1:]]
    for drafts in (substituted, dropped, inserted):  # one wrong token each: found, fixed, realigned
        assert rescorer.verify(kv, drafts, 1.0) == (want, 2)


def test_verify_resynchronises_a_draft_off_by_several_tokens(verifier, monkeypatch):
    """A draft that wrote three tokens too many, or repeated three, and stops three short of the cap: the
    first pass finds the error, the second reads the rest in step; the last three tokens cost a pass
    each but the cap's own (4). Realigned by one token only, as before resynchronisation: 9 and 7."""
    dec, rescorer, xa = verifier
    want = greedy(dec, xa)
    kv = rescorer.cross_kv(xa)
    assert len(want[0]) == N_NEW
    junk = [t for t in [w[0] for w in want] + [7] if t != want[0][1]][:3]
    extra = [want[0][:1] + junk + want[0][1:N_NEW - 3], want[1]]
    repeated = [want[0][:3] + want[0][:3] + want[0][3:N_NEW - 3], want[1]]
    for drafts in (extra, repeated):
        got = rescorer.verify(kv, drafts, 1.0)
        with monkeypatch.context() as m:
            m.setattr(verification, "RESYNC_SPAN", 1)
            by_one = rescorer.verify(kv, drafts, 1.0)
        assert got[0] == by_one[0] == want and got[1] == 4 < by_one[1]


def test_fixed_shape_passes_too_narrow_for_a_row_read_on_in_the_next(ar, monkeypatch):
    """A row longer than a pass's width: all it read passes, the next pass goes on after it. Same texts; a
    draft the AR agrees with costs one pass per width; windows beyond a group run in the next group."""
    dec, rescorer, xa = ar
    want = greedy(dec, xa)
    kv = rescorer.cross_kv(xa)
    fixed = verify_graphs.FixedVerifier(rescorer, graphs=False)
    monkeypatch.setattr(verify_graphs, "WIDTHS", (4,))
    assert len(want[0]) == N_NEW
    # 11 targets (10 tokens, end-of-text) read by 12 inputs, 4 a pass: the first pass's first input only reads
    assert fixed.verify([(k[:1], v[:1]) for k, v in kv], want[:1], 1.0) == (want[:1], 3)
    wrong = [want[0][:2] + want[0][3:], [(want[1][0] + 1) % EOT] + want[1][1:]]
    assert fixed.verify(kv, wrong, 1.0)[0] == want
    monkeypatch.setattr(verify_graphs, "MAX_WINDOWS", 1)
    texts, passes = fixed.verify(kv, want, 1.0)
    assert texts == want and passes == sum(fixed.verify([(k[i: i + 1], v[i: i + 1]) for k, v in kv], [w], 1.0)[1]
                                             for i, w in enumerate(want)) > 3  # one by one


def test_fixed_shape_windows_move_to_a_smaller_shape_as_they_finish(ar, monkeypatch):
    """Three windows (shape 4); once two are final the last moves, its winner's cache with it, to shape 1."""
    dec, rescorer, _ = ar
    xa = torch.randn(3, 30, 32, generator=torch.Generator().manual_seed(3))
    kv = rescorer.cross_kv(xa)
    want = greedy(dec, xa)
    drafts = [want[0], want[1], [(t + 1) % EOT for t in want[2]]]  # the last is wrong everywhere
    fixed = verify_graphs.FixedVerifier(rescorer, graphs=False)
    monkeypatch.setattr(verify_graphs, "MAX_SHAPES", 8)
    texts, passes = fixed.verify(kv, drafts, 1.0)
    assert texts == want and passes > 2
    assert sorted(key[0] for key in fixed.buffers) == [1, 4]
    assert (texts, passes) == rescorer.verify(kv, drafts, 1.0)  # eager: the same texts and passes


def test_resync_tries_the_nearest_places_of_the_choice_either_way():
    draft = [5, 6, 7, 8, 6, 9, 6]
    assert verification.resync(draft, 3, 6) == [4, 3, 5, 2, 7]  # after d, at d, after the 6s at 4, 1, 6
    assert verification.resync(draft, 3, 4) == [4, 3]  # a token the draft lacks: substituted or dropped
    assert verification.resync(draft, 7, 9) == [7, 6]  # past the draft's end: the AR went on; it lagged by two


def test_a_lenient_ratio_keeps_the_drafts_likely_tokens(verifier):
    dec, rescorer, xa = verifier
    want = greedy(dec, xa)
    kv = rescorer.cross_kv(xa)
    reading = rescorer.read(kv, [Row(0, want[0])])
    # at a position where greedy's token is the argmax, the runner-up is what a lenient ratio may keep
    pos = 1
    seq = list(want[0])
    tokens = torch.tensor([PROMPT + seq[:pos]])
    with torch.no_grad():
        logits = dec(tokens, dec.cross_kv(xa[:1]), dec.new_cache(1, tokens.shape[1]), 0)[0, -1].float()
    logits[EOT + 1:] = -torch.inf
    lp = logits.log_softmax(-1)
    second = int(lp.topk(2).indices[1])
    share = float((lp[second] - lp.max()).exp())
    draft = seq[:pos] + [second] + seq[pos + 1:]
    assert rescorer.verify(kv, [draft, want[1]], 1.0)[0][0] == want[0]  # strict: the AR's own token
    kept = rescorer.verify(kv, [draft, want[1]], share * 0.99)[0][0]
    assert kept[: pos + 1] == draft[: pos + 1]  # lenient: the draft's runner-up stays
    assert reading[0].best[pos] == want[0][pos]


def test_a_trusted_tokens_margin_keeps_it_where_the_ratio_would_not(verifier):
    dec, rescorer, xa = verifier
    want = greedy(dec, xa)
    kv = rescorer.cross_kv(xa)
    seq, pos = list(want[0]), 1
    tokens = torch.tensor([PROMPT + seq[:pos]])
    with torch.no_grad():
        lp = dec(tokens, dec.cross_kv(xa[:1]), dec.new_cache(1, tokens.shape[1]), 0)[0, -1, :EOT].float().log_softmax(-1)
    unlikely = int(lp.argmin())  # a token the AR decoder would not have written there
    gap = float(lp.max() - lp[unlikely])
    draft = seq[:pos] + [unlikely] + seq[pos + 1:]
    strict, other = [0.0] * len(draft), [0.0] * len(want[1])
    assert rescorer.verify(kv, [draft, want[1]], 1.0, [strict, other])[0][0] == want[0]
    trusted = strict[:pos] + [-(gap + 0.05)] + strict[pos + 1:]  # it alone may fall short, by more than it does
    kept = rescorer.verify(kv, [draft, want[1]], 1.0, [trusted, other])[0]
    assert kept[0][: pos + 1] == draft[: pos + 1] and kept[1] == want[1]


def test_draft_tokens_read_again_behind_a_rejection_are_not_trusted():
    """The AR decoder writes a token the draft had a few places back, and the draft goes on from there: the
    tokens it reads a second time have no margin (a trusted replay could loop), those past it keep theirs."""
    state = verification.Draft.of([1, 2, 3, 4, 5, 6], margins=[-1.0, -2.0, -3.0, -4.0, -5.0, -6.0])
    row = state.row(0, 0)
    assert row.margins == [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0]
    n = len(row.seq) + 1
    lp, best = [0.0] * 3 + [-9.0] + [0.0] * (n - 4), row.seq + [EOT]
    best[3] = 2  # after 1 2 3 the AR writes 2, not 4: the draft may go on after its own 2
    state.advance([(row, verification.Reading(lp, best, [0.0] * n))], 0.0, EOT, len(PROMPT))
    assert state.accepted == [1, 2, 3, 2] and state.starts == [4, 3, 2]
    assert state.row(0, 2).margins == [0.0, -4.0, -5.0, -6.0]  # 3 again: strict; 4 on: as before
    assert state.row(0, 4).margins == [-5.0, -6.0]


def test_trusted_margins_widen_for_confident_tokens_and_narrow_for_doubtful_ones():
    m = verification.trusted_margins([5, 6, 7], [5, 6, 7], [0.99, 0.5, 0.2], 0.5, 0.5)
    assert m[1] == pytest.approx(math.log(0.5))  # q = 0.5: the ratio alone
    assert m[0] == pytest.approx(math.log(0.5) - 0.5 * math.log(99)) and m[2] == 0.0  # capped: never stricter than 1
    # a re-encoded draft: its tokens matched to the candidate's; one the candidate lacks is neutral
    assert verification.trusted_margins([5, 9, 7], [5, 6, 7], [0.99, 0.99, 0.99], 0.5, 0.5)[1] == pytest.approx(math.log(0.5))
    assert verification.trusted_margins([5, 7], [5, 6, 7], [0.9, 0.1, 0.99], 1.0, 0.0) == [0.0, 0.0]


def test_the_chosen_candidates_token_probabilities_set_verifications_margins(tiny_model):
    from whisfusion_cli.config import DecodingOptions

    class Spy:  # the AR decoder's verification, recording the margins it is given
        verify_texts = Rescorer.verify_texts

        def cross_kv(self, xa):
            return []

        def verify(self, kv, drafts, ratio, margins=None, limits=None):
            self.margins = margins
            return drafts, 1

    tiny_model.rescorer = spy = Spy()
    ids = tiny_model.tokenizer.encode_transcripts(["hello world"])[0]
    probs = [0.99] + [0.5] * (len(ids) - 1)
    texts, cands = ("hello world", "hello"), (ids, ids[:1])

    def margins(**fields):
        options = DecodingOptions(k=2, steps=1, schedule=(1.0,), select="confidence", **fields)
        out = tiny_model._results([texts], [cands], [0], [[0.9, 0.1]], None, options, [(probs, probs[:1])])
        assert out[0].text == "hello world"
        return spy.margins

    got = margins(verify=0.5, trust=0.5)[0]
    assert got == pytest.approx([math.log(0.5) - 0.5 * math.log(99)] + [math.log(0.5)] * (len(ids) - 1))
    assert margins(verify=0.5) is None and margins(verify=1.0, trust=0.5) is None  # verify 1: greedy exactly


def test_scores_rank_every_windows_candidates(verifier):
    dec, rescorer, xa = verifier
    want = greedy(dec, xa)
    kv = rescorer.cross_kv(xa)
    garbage = [[(t * 7 + 3) % EOT for t in w] for w in want]
    scores = rescorer.scores(kv, [[garbage[0], want[0]], [want[1]]])
    assert [len(s) for s in scores] == [2, 1]
    assert scores[0][1] > scores[0][0]  # greedy's text is far likelier than a scramble of it
    assert scores[1][0] == pytest.approx(rescorer.read(kv, [Row(1, want[1])])[0].total, abs=1e-4)
    many = [[want[0][:n] for n in range(1, 8)], [want[1]]]  # more candidates than a window's rows: eager
    assert rescorer.scores(kv, many)[0] == pytest.approx([r.total for r in rescorer.read(kv, [Row(0, c) for c in many[0]])],
                                                          abs=1e-4)


@pytest.mark.slow
@pytest.mark.real_weights
def test_verified_whisfusion_writes_whispers_greedy_transcript(weights_dir, real_clips, tmp_path):
    """An untrained whisper-mdm drafts, tiny.en's own AR decoder verifies: AR tiny.en's text exactly
    (where the draft is not empty: no speech drafted, none written)."""
    from whisfusion_cli.asr import load_model
    from whisfusion_cli.audio import load_audio
    from whisfusion_cli.checkpoint import add_rescorer, init_from_whisper, save_whisfusion

    whisper = weights_dir / "whisper-tiny.en"
    model, cfg, tok = init_from_whisper(whisper)
    save_whisfusion(model, cfg, tok, tmp_path / "m")
    files = add_rescorer(tmp_path / "m", whisper)
    assert files and all(f.stat().st_size <= 15_000_000 for f in files)
    pdd, ar_asr = load_model(tmp_path / "m", "cpu"), load_model(whisper, "cpu")
    assert pdd.rescorer is not None
    audio = [load_audio(p) for p, _ in sorted(real_clips, key=lambda c: len(c[1]))[:2]]  # the two shortest
    want = [r.text for r in ar_asr.decode_windows(audio)]
    options = pdd.options("fast", select="rescore", verify=1.0)
    got = [pdd.decode_windows([a], options)[0] for a in audio]
    verified = [(r.text, w) for r, w in zip(got, want) if r.ar_passes]  # an empty draft stays empty
    assert verified and all(text == w for text, w in verified)
    assert all(r.text == "" for r in got if not r.ar_passes)


def test_rescore_and_verify_need_a_rescorer(tiny_model):
    import numpy as np

    from whisfusion_cli.errors import ConfigError

    for fields in ({"select": "rescore"}, {"verify": 0.5}):
        with pytest.raises(ConfigError, match="no rescorer"):
            tiny_model.decode_windows([np.zeros(8000, np.float32)], tiny_model.options("fast", **fields))


def test_a_read_after_a_cached_prefix_equals_a_read_of_the_whole(ar):
    """Rows that start after a kept prefix (keys/values of different lengths, left-padded) read as the
    whole sequences do: the verifier's passes read only the unverified rest."""
    _, rescorer, xa = ar
    kv = rescorer.cross_kv(xa)
    seqs = [[5, 9, 13, 7, 2, 4], [3, 8, 8, 1], [11, 12]]
    whole = rescorer.read(kv, [Row(w, s) for w, s in zip((0, 1, 1), seqs)], keep_kv=True)
    rows = []
    for (w, s, start), r in zip(((0, seqs[0], 3), (1, seqs[1], 1), (1, seqs[2], 2)), whole):
        n_past = len(PROMPT) + start - 1  # the prompt and the tokens before the last one read
        rows.append(Row(w, s, start, [(k[:, :n_past], v[:, :n_past]) for k, v in r.kv]))
    for r, full, (_, s, start) in zip(rescorer.read(kv, rows), whole, ((0, seqs[0], 3), (1, seqs[1], 1),
                                                                      (1, seqs[2], 2))):
        assert r.best == full.best[start:]
        assert r.token_logprob == pytest.approx(full.token_logprob[start:], abs=1e-4)


@pytest.mark.requires_cuda
def test_graphed_passes_on_cuda_write_the_eager_texts(ar, monkeypatch):
    """The CUDA graphs (replayed, their cache carried across passes and calls) verify and score as the
    eager rows do, for any number of windows (buckets of 1, 2, 4)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    dec, rescorer, xa = ar
    dec.cuda(), rescorer.cuda()
    xa = torch.randn(3, 30, 32, generator=torch.Generator().manual_seed(3)).cuda()
    kv = rescorer.cross_kv(xa)
    want = greedy(dec, xa)
    g = torch.Generator().manual_seed(1)
    graphed = verify_graphs.FixedVerifier(rescorer, graphs=True)
    for drafts in (want, [w[1:] for w in want], [torch.randint(0, EOT, (n,), generator=g).tolist() for n in (3, 12, 6)]):
        for n in (1, 2, 3):
            sub = [(k[:n], v[:n]) for k, v in kv]
            rescorer.fixed = None
            monkeypatch.setattr(rescoring, "USE_GRAPHS", False)
            cands = [[d, w] for d, w in zip(drafts[:n], want)]
            eager = rescorer.verify(sub, drafts[:n], 1.0), rescorer.verify(sub, drafts[:n], 0.3)
            eager_scores = [x for w in rescorer.scores(sub, cands) for x in w]
            assert eager[0][0] == want[:n]
            monkeypatch.setattr(rescoring, "USE_GRAPHS", True)
            assert (graphed.verify(sub, drafts[:n], 1.0), graphed.verify(sub, drafts[:n], 0.3)) == eager
            assert [x for w in graphed.scores(sub, cands) for x in w] == pytest.approx(eager_scores, abs=1e-3)
    assert len(graphed.buffers) == 3 and all(b.graphs for b in graphed.buffers.values())
