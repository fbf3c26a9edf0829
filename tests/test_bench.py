"""`whisfusion bench` on CPU with tiny random models: every section runs, the record is well-formed.

No timing assertions (speed belongs to the benchmark records, not to CI)."""

import json

import pytest
import torch

from whisfusion_cli.bench import (
    BenchOptions,
    random_models,
    record_to_dict,
    run_bench,
    summarize,
    synthetic_speech,
)
from whisfusion_cli.decoding import head_sizes
from whisfusion_cli.fastpath import graph_shapes
from whisfusion_cli.segment import split_windows

LATENCY_KEYS = {"engine", "duration_s", "total_ms", "encoder_ms", "decoder_ms", "overhead_ms",
                "decoder_tokens", "decoder_tokens_per_s"}


@pytest.fixture(scope="module")
def record():
    pdd_asr, ar_asr = random_models("test-tiny", "test-tiny", torch.device("cpu"), torch.float32)
    opts = BenchOptions(presets=("fast", "accurate"), durations=(3.0, 12.0), long_form_min=1.0, repeats=2,
                        warmup=1, canvas_sweep=(16, 32), ar_token_sweep=(4, 8))
    return run_bench(pdd_asr, ar_asr, opts, "random")


def test_record_schema(record):
    d = json.loads(json.dumps(record_to_dict(record)))  # JSON-safe
    assert set(d) == {"meta", "latency", "length_sweep", "long_form"}
    assert {"device", "dtype", "torch", "commit", "weights", "options", "date"} <= set(d["meta"])
    assert d["meta"]["weights"] == "random"
    engines = {r["engine"] for r in d["latency"]}
    assert engines == {"pdd-fast", "pdd-accurate", "ar-greedy"}
    assert len(d["latency"]) == 3 * 2
    for row in d["latency"]:
        assert set(row) == LATENCY_KEYS
        assert row["total_ms"] > 0 and row["decoder_ms"] > 0
        assert row["total_ms"] == pytest.approx(row["encoder_ms"] + row["decoder_ms"] + row["overhead_ms"], abs=1e-2)
    assert [r["tokens"] for r in d["length_sweep"] if r["engine"] == "ar-greedy"] == [4, 8]
    assert {r["engine"] for r in d["long_form"]} == engines
    for row in d["long_form"]:
        assert row["audio_s"] == 60 and row["windows"] >= 2 and row["rtfx"] > 0 and row["cold_wall_s"] > 0


def test_summary_names_the_targets(record):
    s = summarize(record)
    assert set(s) == {"accurate_longest_ms", "speedup_vs_ar", "decoder_tokens_per_s_accurate",
                      "latency_spread_accurate", "long_form_rtfx"}
    assert s["accurate_longest_ms"] > 0 and s["speedup_vs_ar"] > 0 and s["latency_spread_accurate"] >= 0


def test_ar_baseline_is_forced_to_a_realistic_length():
    _, ar_asr = random_models("test-tiny", "test-tiny", torch.device("cpu"), torch.float32)
    ar_asr.forced_tokens = 7
    result = ar_asr.decode_windows([synthetic_speech(2.0)])[0]
    assert result.n_tokens == 7


def test_synthetic_long_form_has_pauses_to_cut_at():
    audio = synthetic_speech(120.0, pauses=True)
    windows = split_windows(audio)
    assert len(windows) >= 4 and all(w.duration <= 30.0 for w in windows)


@pytest.mark.requires_cuda
def test_cuda_graphs_match_eager():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pdd_asr, _ = random_models("test-tiny", "test-tiny", torch.device("cuda"), torch.float32)
    clips = [synthetic_speech(s, seed=s) for s in (3, 9)]
    opts = pdd_asr.options("accurate", seed=1)
    pdd_asr.use_cuda_graphs(False)
    eager = pdd_asr.decode_windows(clips, opts)
    pdd_asr.use_cuda_graphs(True)
    assert pdd_asr.decode_windows(clips, opts) == eager
    assert pdd_asr.decode_windows(clips, opts) == eager  # replay of the captured graphs
    assert len(pdd_asr.graphs.graphs) == 1
    captured = next(iter(pdd_asr.graphs.graphs.values()))
    n_rows, length = captured.canvas.shape
    assert n_rows == 2 * opts.k
    assert set(captured.heads) == set(graph_shapes(2, n_rows, length, head_sizes(opts.schedule, length)))
    assert (2, length) in captured.heads and (n_rows, length) not in captured.heads  # first pass: a row per window
    assert captured.heads[2, length].logits.shape[:2] == (2, length)
    from whisfusion_cli import fastpath

    fastpath.MAX_GRAPH_TOKENS, limit = 1, fastpath.MAX_GRAPH_TOKENS  # every canvas "large": eager, uncaptured
    try:
        assert pdd_asr.decode_windows(clips[:1], opts) == pdd_asr.decode_windows(clips[:1], opts)
        assert len(pdd_asr.graphs.graphs) == 1
    finally:
        fastpath.MAX_GRAPH_TOKENS = limit


def test_graph_shapes_first_pass_one_row_per_window():
    assert graph_shapes(2, 30, 64, head_sizes((1.0, 0.9, 0.85, 0.8), 64)) == ((2, 64), (30, 52), (30, 55), (30, 58))
    assert graph_shapes(2, 30, 16, (16, 16, 8)) == ((2, 16), (30, 8), (30, 16))  # a later full pass: all rows
    assert graph_shapes(3, 3, 16, (16, 16)) == ((3, 16),)  # k = 1: the first pass's graph serves both
    assert graph_shapes(2, 10, 32, ()) == ((2, 32),)


def test_captured_decoder_dispatches_on_rows_and_positions():
    """The DecoderFn of a captured shape (run on CPU with stand-in graphs): (windows, L) canvases replay the
    first-pass graph, (windows x k, P) ones their head's; the static canvas and positions receive the inputs."""
    from whisfusion_cli.fastpath import _Captured, _Head

    class Graph:  # a stand-in for torch.cuda.CUDAGraph
        def __init__(self, name: str, log: list[str]):
            self.name, self.log = name, log

        def replay(self) -> None:
            self.log.append(self.name)

    log: list[str] = []
    eager: list[tuple[int, int | None]] = []
    first, later = torch.zeros(2, 8, 5), torch.ones(6, 3, 5)
    heads = {(2, 8): _Head(None, Graph("first", log), first),
             (6, 3): _Head(torch.zeros(6, 3, dtype=torch.long), Graph("later", log), later)}

    def forward(canvas, kv, positions=None):
        eager.append((canvas.shape[0], None if positions is None else positions.shape[1]))
        return torch.full((canvas.shape[0], 8 if positions is None else positions.shape[1], 5), 2.0)

    captured = _Captured(torch.zeros(2, 4, 3), torch.zeros(2), torch.zeros(6, 8, dtype=torch.long), Graph("kv", log),
                         [], heads, forward)
    assert captured.run(torch.full((2, 8), 7)) is first and log == ["first"]
    assert (captured.canvas[:2] == 7).all()  # the rows the first-pass graph reads
    positions = torch.arange(3).expand(6, 3) + 1
    assert captured.run(torch.full((6, 8), 9), positions=positions) is later and log == ["first", "later"]
    assert (captured.canvas == 9).all() and torch.equal(heads[6, 3].positions, positions)
    assert captured.run(torch.full((6, 8), 9)).shape == (6, 8, 5) and eager == [(6, None)]  # not captured: eager
    assert captured.nbytes == (first.numel() + later.numel()) * 4


@pytest.mark.requires_cuda
def test_graphed_first_pass_and_later_heads_match_the_plain_decoder():
    """One decoder graph per (rows, P): (windows, L) for the first pass beside the (windows x k, P_t) ones,
    sharing one memory pool; each replay equals the eager forward, also after the others' replays."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from whisfusion_cli.decoding import masked_first
    from whisfusion_cli.fastpath import GraphedDecoder

    pdd_asr, _ = random_models("test-tiny", "test-tiny", torch.device("cuda"), torch.float32)
    dec, mask_id, k, length = pdd_asr.net.decoder, pdd_asr.cfg.decoder.mask_id, 3, 32
    torch.manual_seed(0)
    for block in dec.blocks:  # a trained-looking adapter, so each window's audio matters
        torch.nn.init.normal_(block.cross_attn.out.weight, std=0.02)
    graphed = GraphedDecoder(dec)
    with torch.inference_mode():
        xa = pdd_asr.encode([synthetic_speech(s, seed=s) for s in (3, 5)])[:, :400]  # (2, S, C)
        n_frames = torch.tensor([300, 400], device="cuda")
        kv = dec.cross_kv(xa, n_frames)
        first = torch.full((2, length), mask_id, device="cuda")
        canvas = torch.randint(0, 250, (2 * k, length), device="cuda")
        canvas[:, ::2] = mask_id
        positions = masked_first(canvas == mask_id)[:, :16]  # (2k, 16)
        for _ in range(2):  # capture, then replay
            fn = graphed.prepare(xa, n_frames, 2 * k, length, head_sizes((1.0, 0.5), length))
            got = fn(first).clone()  # (2, L, V)
            assert torch.allclose(got, dec(first, kv), atol=1e-4)
            assert not torch.allclose(got[0], got[1], atol=1e-3)  # each row reads its own window
            assert torch.allclose(fn(canvas, positions=positions), dec(canvas, kv, positions=positions), atol=1e-4)
            assert torch.allclose(fn(first), got, atol=1e-6)  # the first-pass graph after another graph's replay
        assert len(graphed.graphs) == 1
        assert set(next(iter(graphed.graphs.values())).heads) == {(2, length), (2 * k, 16)}


def test_bench_command_writes_the_record(tmp_path):
    from typer.testing import CliRunner

    from whisfusion_cli.cli import app

    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--encoder", "test-tiny", "--decoder", "test-tiny", "--presets",
                                      "fast", "--durations", "2", "--repeats", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert {r["engine"] for r in record["latency"]} == {"pdd-fast", "ar-greedy"}
    assert record["summary"]["long_form_rtfx"] is None  # not asked for
    bad = CliRunner().invoke(app, ["bench", "--presets", "turbo", "--encoder", "test-tiny", "--decoder", "test-tiny"])
    assert bad.exit_code == 2 and "unknown preset" in bad.output


def test_bench_gpu_script_on_a_model_dir(tiny_model, tmp_path, capsys, one_thread, benchmark_script):
    """benchmarks/bench_gpu.py --model on CPU: real model vs a forced random AR decoder on its encoder."""
    from whisfusion_cli.checkpoint import save_whisfusion

    model_dir = save_whisfusion(tiny_model.net, tiny_model.cfg, tiny_model.tokenizer, tmp_path / "model")
    bench_gpu = benchmark_script("bench_gpu")
    bench_gpu.main(["--out", str(tmp_path / "out"), "--model", str(model_dir), "--device", "cpu",
                    "--variants", "compile", "--repeats", "1", "--presets", "fast", "--durations", "2"])
    for variant in ("compile",):  # on CPU there are no graphs to compile into: the eager decoder
        d = json.loads((tmp_path / "out" / f"bench_{variant}.json").read_text())
        meta = d["meta"]
        assert meta["weights"] == f"model {model_dir} (real) + random AR decoder"
        assert meta["ar_forced"] is True and meta["pdd_random"] is False and meta["variant"] == variant
        rows = {r["engine"]: r for r in d["latency"]}
        assert set(rows) == {"pdd-fast", "ar-greedy"} and all(set(r) == LATENCY_KEYS for r in rows.values())
        assert rows["ar-greedy"]["decoder_tokens"] == 7  # forced: 3.5 tokens/s x 2 s
        clip = synthetic_speech(2.0, seed=2)
        emitted = tiny_model.decode_windows([clip], tiny_model.options("fast"))[0].n_tokens
        assert rows["pdd-fast"]["decoder_tokens"] == emitted  # the real model's own output, seed 0
        assert meta["compile_error"] is None and set(d["summary"]) >= {"accurate_longest_ms", "speedup_vs_ar"}
    assert "compile {" in capsys.readouterr().out


def test_ar_baseline_shares_the_encoder(tiny_model):
    from whisfusion_cli.bench import ar_baseline

    ar = ar_baseline(tiny_model)
    theirs, ours = ar.net.encoder.state_dict(), tiny_model.net.encoder.state_dict()
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in ours)
    assert ar.net.decoder.config.n_vocab == 51865 and ar.net.decoder.config.n_text_state == 64
    ar.forced_tokens = 5
    assert ar.decode_windows([synthetic_speech(1.0)])[0].n_tokens == 5


def test_shaped_like_reads_only_the_config(tiny_model, tmp_path):
    from whisfusion_cli.bench import shaped_like
    from whisfusion_cli.checkpoint import save_whisfusion

    model_dir = save_whisfusion(tiny_model.net, tiny_model.cfg, tiny_model.tokenizer, tmp_path / "model")
    for shard in model_dir.glob("*.safetensors"):
        shard.unlink()  # no weights needed
    pdd_asr, ar = shaped_like(model_dir, torch.device("cpu"), torch.float32)
    assert pdd_asr.cfg == tiny_model.cfg and pdd_asr.options("fast") == tiny_model.options("fast")
    shapes = {k: v.shape for k, v in tiny_model.net.state_dict().items()}
    assert {k: v.shape for k, v in pdd_asr.net.state_dict().items()} == shapes
    ar.forced_tokens = 3
    assert ar.decode_windows([synthetic_speech(1.0)])[0].n_tokens == 3


def test_shaped_like_a_model_with_a_rescorer_rescores_but_does_not_verify(tmp_path):
    """Verification's passes depend on trained weights: `--shape-of` times the presets without it, and
    rescoring with a random AR decoder of the shipped one's shape (the same cost)."""
    import shutil
    from pathlib import Path

    from whisfusion_cli.bench import shaped_like
    from whisfusion_cli.cli import default_model

    bundled = Path(default_model())
    cfg = json.loads((bundled / "config.json").read_text())
    cfg["presets"]["fast"] |= {"select": "rescore", "verify": 0.5}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    shutil.copy(bundled / "tokenizer.json", tmp_path)
    pdd_asr, _ = shaped_like(tmp_path, torch.device("cpu"), torch.float32)
    assert pdd_asr.rescorer is not None and cfg["rescorer"]
    options = pdd_asr.options("fast")
    assert options.select == "rescore" and options.verify == 0
    assert isinstance(pdd_asr.decode_windows([synthetic_speech(1.0)], options)[0].text, str)


@pytest.mark.requires_cuda
def test_cuda_padded_head_and_graphed_encoder_match_plain():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from torch import nn

    from whisfusion_cli.fastpath import GraphedEncoder
    from whisfusion_cli.whisper import tied_head

    owner, weight = nn.Module(), torch.randn(1001, 64, device="cuda")
    x = torch.randn(3, 5, 64, device="cuda")
    with torch.no_grad():
        for _ in range(2):  # the second call reads the cached padded weight
            assert torch.allclose(tied_head(owner, x, weight, 999), x @ weight[:999].T, atol=1e-4)
        weight.mul_(2)  # a changed weight is padded again
        assert torch.allclose(tied_head(owner, x, weight, 999), x @ weight[:999].T, atol=1e-4)
    pdd_asr, _ = random_models("test-tiny", "test-tiny", torch.device("cuda"), torch.float32)
    graphed = GraphedEncoder(pdd_asr.net.encoder)
    with torch.inference_mode():
        for seed in (0, 1):
            mel = torch.randn(2, pdd_asr.n_mels, 3000, device="cuda", generator=torch.Generator("cuda").manual_seed(seed))
            assert torch.allclose(graphed(mel), pdd_asr.net.encoder(mel), atol=1e-4)
    assert len(graphed.graphs) == 1


def test_bench_verify_script_times_every_pass_to_the_cap(tmp_path, one_thread, monkeypatch, benchmark_script):
    """benchmarks/bench_verify.py on CPU: random drafts at r = 1 are corrected one token per pass, so
    every run makes exactly the capped number of passes, whatever the windows."""
    from whisfusion_cli import verification
    from whisfusion_cli.cli import default_model

    bench_verify = benchmark_script("bench_verify")
    monkeypatch.setattr(verification, "MAX_NEW_TOKENS", verification.MAX_NEW_TOKENS)  # the script sets the cap
    bench_verify.main(["--shape-of", default_model(), "--windows", "1,2", "--max-new-tokens", "3",
                       "--repeats", "1", "--device", "cpu", "--out", str(tmp_path / "v.json")])
    d = json.loads((tmp_path / "v.json").read_text())
    assert [(r["windows"], r["passes"]) for r in d["rows"]] == [(1, 3), (2, 3)]
    assert all(r["ms_per_pass"] > 0 for r in d["rows"]) and d["meta"]["gpu"] == "cpu"
