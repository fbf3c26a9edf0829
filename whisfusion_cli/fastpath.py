"""CUDA graphs for the fixed-shape PDD loop.

One decoder pass is ~1,000 small kernels (18 blocks of norms, RoPE, attention, adapter, SwiGLU),
so at inference batch sizes the GPU waits on kernel launches, not on math. For each shape
(windows, audio frames, candidates x canvas) we capture the graphs once: the adapters' keys and
values from the encoder states, and the decoder passes over the canvas. PDD then replays a
decoder graph per step; its own sampling/re-masking stays eager (a few kernels per step). The first
pass runs on one all-[MASK] row per window (decoding.first_pass): its graph has B rows at every
position, a static (B, L, V) logits buffer, a k-th of the candidates'. Steps after the first run on
all N = B x k rows and compute the output head only at the P_t positions that can change
(decoding.head_sizes): one graph per P_t, each with a static (N, P_t, V) logits buffer.
Optionally the decoder's forward is wrapped in `torch.compile` before capture (fused kernels inside
the graphs); if compilation fails the plain forward is captured instead.
Shapes are kept few by rounding: canvas lengths to 16 (decoding.canvas_length), audio frames to
FRAME_BUCKET (asr.WhisfusionASR).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .decoding import eager_decoder
from .model import KV, DiffusionDecoder
from .whisper_mdm import WhisperMDMDecoder

log = logging.getLogger("whisfusion_cli")

MAX_GRAPH_TOKENS = 16384  # canvases larger than this (rows x L) run eager: compute-bound already, and
# long-form batches (16 windows x k rows, an L per batch) made a new shape nearly every batch, so each
# was captured, used once and evicted (H100, 30-min file, balanced: RTFx 571 with graphs, 916 eager)
MAX_GRAPHS = 24  # captured shapes kept (least recently used evicted)
MAX_GRAPH_MEMORY = 0.25  # ... and their static logits held to this share of the GPU's memory: with a
# 51,865-token vocabulary one (240 x 256) canvas alone holds 6.4 GB of bf16 logits
COMPILE_RECOMPILE_LIMIT = 256  # compiled shapes per forward (torch's default of 8 is too few for shape buckets)


@dataclass
class _Head:
    """One decoder graph: logits for R canvas rows at P positions per row (P = L: every position, no gather)."""

    positions: Tensor | None  # (R, P) static input; None for P = L
    graph: torch.cuda.CUDAGraph
    logits: Tensor  # (R, P, V) static output, valid until the next replay of any graph (shared pool)


@dataclass
class _Captured:
    xa: Tensor  # (B, S, C_audio) static input
    n_frames: Tensor  # (B,)
    canvas: Tensor  # (N, L) static input; a graph of R rows reads its first R
    kv_graph: torch.cuda.CUDAGraph
    kv: list[KV]  # static output of kv_graph, read by every head graph
    heads: dict[tuple[int, int], _Head]  # (R, P) -> graph: (B, L) the first pass, (N, P_t) later steps
    forward: Callable[..., Tensor]  # eager fallback for a shape that was not captured

    @property
    def nbytes(self) -> int:
        return sum(h.logits.numel() * h.logits.element_size() for h in self.heads.values())

    def run(self, canvas: Tensor, positions: Tensor | None = None) -> Tensor:
        """canvas (R, L) [, positions (R, P)] -> logits (R, L or P, V), valid until the next call.

        The graph is chosen by (R, P): R = B on the first pass, N after it."""
        n = canvas.shape[0]
        static = self.canvas[:n]  # (R, L), the rows this graph reads
        static.copy_(canvas)
        head = self.heads.get((n, canvas.shape[1] if positions is None else positions.shape[1]))
        if head is None:
            return self.forward(static, self.kv, positions=positions)
        if head.positions is not None:
            head.positions.copy_(positions)
        head.graph.replay()
        return head.logits


class GraphedDecoder:
    """Replays captured CUDA graphs of `decoder.cross_kv` and `decoder.forward` per shape.

    Args:
        decoder: either decoder family.
        compile: wrap `decoder.forward` in `torch.compile` (static shapes, fused kernels, no
            cudagraphs of its own) before capture; on any compilation error, `compile_error` says
            why and the plain forward is used.
    """

    def __init__(self, decoder: DiffusionDecoder | WhisperMDMDecoder, compile: bool = False):
        self.decoder = decoder
        self.graphs: OrderedDict[tuple[int, ...], _Captured] = OrderedDict()
        self.forward: Callable[..., Tensor] = decoder.forward
        self.compile_error: str | None = None
        if compile:
            import torch._dynamo

            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit,
                                                       COMPILE_RECOMPILE_LIMIT)
            self.forward = torch.compile(decoder.forward, dynamic=False, fullgraph=False,
                                         mode="default")  # autotuning every shape took minutes on the H100

    @property
    def compiled(self) -> bool:
        return self.forward is not self.decoder.forward

    def prepare(self, xa: Tensor, n_frames: Tensor, n_rows: int, canvas_len: int,
                head_sizes: tuple[int, ...] = ()):  # -> DecoderFn
        """Loads this batch's audio states and returns the DecoderFn canvas (R, L) [, positions (R, P)] ->
        logits, R = B windows (PDD's first pass) or n_rows = B x k.

        `head_sizes`: decoding.head_sizes, in step order: step 0 is the first pass (B rows, every
        position), each later P_t a graph over n_rows rows. The logits are a static buffer: read
        them before the next call.
        """
        shapes = graph_shapes(xa.shape[0], n_rows, canvas_len, head_sizes)
        key = (*xa.shape, n_rows, canvas_len, *(n for shape in shapes for n in shape))
        g = self.graphs.pop(key, None)
        if g is None:
            budget = MAX_GRAPH_MEMORY * torch.cuda.get_device_properties(xa.device).total_memory
            need = sum(r * p for r, p in shapes) * self.decoder.config.vocab_size * xa.element_size()
            while self.graphs and (len(self.graphs) >= MAX_GRAPHS
                                   or sum(c.nbytes for c in self.graphs.values()) + need > budget):
                self.graphs.popitem(last=False)  # least recently used first
            if need > budget or n_rows * canvas_len > MAX_GRAPH_TOKENS:  # eager for this shape, on the
                # distinct rows only: their number varies per pass, so never the compiled forward
                return eager_decoder(self.decoder.forward, self.decoder.cross_kv(xa, n_frames), xa.shape[0])
            g = self._capture(xa, n_frames, n_rows, canvas_len, shapes)
        self.graphs[key] = g
        g.xa.copy_(xa)
        g.n_frames.copy_(n_frames)
        g.kv_graph.replay()
        return g.run

    def _capture(self, xa: Tensor, n_frames: Tensor, n_rows: int, canvas_len: int,
                 shapes: tuple[tuple[int, int], ...]) -> _Captured:
        """Captures this shape; a compiled forward that fails to compile or capture is dropped for the plain one."""
        if self.compiled:
            try:
                return self._capture_with(xa, n_frames, n_rows, canvas_len, shapes)
            except Exception as e:  # noqa: BLE001 - any compiler failure
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                self.compile_error = f"{type(e).__name__}: {first}"
                log.warning("torch.compile failed, capturing the plain decoder: %s", self.compile_error)
                self.forward = self.decoder.forward
        return self._capture_with(xa, n_frames, n_rows, canvas_len, shapes)

    def _capture_with(self, xa: Tensor, n_frames: Tensor, n_rows: int, canvas_len: int,
                      shapes: tuple[tuple[int, int], ...]) -> _Captured:
        dec = self.decoder
        xa_s, nf_s = xa.clone(), n_frames.clone()
        canvas_s = torch.full((n_rows, canvas_len), dec.config.mask_id, dtype=torch.long, device=xa.device)

        def passes() -> None:  # every shape, outside capture
            kv = dec.cross_kv(xa_s, nf_s)
            for r, p in shapes:
                self.forward(canvas_s[:r], kv, positions=_positions(canvas_s[:r], p))

        warm_up(passes, xa.device)
        kv_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(kv_graph):
            kv: list[KV] = dec.cross_kv(xa_s, nf_s)
        heads: dict[tuple[int, int], _Head] = {}
        for r, p in shapes:  # graphs share one pool. Static outputs (kv, each graph's logits) stay referenced,
            # so no later capture reuses their memory, but an earlier graph's intermediates may lie where a
            # later one's logits do: PDD reads each replay's logits before the next replay of any graph
            positions, graph = _positions(canvas_s[:r], p), torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=kv_graph.pool()):
                logits = self.forward(canvas_s[:r], kv, positions=positions)
            heads[r, p] = _Head(positions, graph, logits)
        return _Captured(xa_s, nf_s, canvas_s, kv_graph, kv, heads, self.forward)


class GraphedEncoder:
    """Replays a CUDA graph of `encoder(mel)` per batch size: the encoder's ~100 kernels launched as one
    (H100, whisper-base, one 30 s window: 3.0 ms eager, 0.9 ms replayed). The output is a copy."""

    def __init__(self, encoder: torch.nn.Module, max_graphs: int = 4):
        self.encoder, self.max_graphs = encoder, max_graphs
        self.graphs: OrderedDict[tuple[int, ...], tuple[Tensor, torch.cuda.CUDAGraph, Tensor]] = OrderedDict()

    def __call__(self, mel: Tensor) -> Tensor:
        key = (*mel.shape, mel.dtype.itemsize)
        entry = self.graphs.pop(key, None)
        if entry is None:
            while len(self.graphs) >= self.max_graphs:
                self.graphs.popitem(last=False)
            entry = self._capture(mel.clone())
        self.graphs[key] = entry
        static_in, graph, static_out = entry
        static_in.copy_(mel)
        graph.replay()
        return static_out.clone()

    def _capture(self, mel: Tensor) -> tuple[Tensor, torch.cuda.CUDAGraph, Tensor]:
        warm_up(lambda: self.encoder(mel), mel.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.encoder(mel)
        return mel, graph, out


def graph_shapes(n_windows: int, n_rows: int, canvas_len: int,
                 head_sizes: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """(rows R, positions P) of each decoder graph PDD replays: (B, L) for the first pass (one
    all-[MASK] row per window), then (n_rows, P_t) for each later step's `head_sizes` P_t."""
    later = {(n_rows, min(p, canvas_len)) for p in head_sizes[1:] if p > 0}
    return tuple(sorted({(n_windows, canvas_len), *later}))


def warm_up(fn: Callable[[], object], device: torch.device, times: int = 2) -> None:
    """Runs fn on a side stream before capture (cuBLAS/SDPA workspaces, compilation), as CUDA graphs require."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(times):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)


def _positions(canvas: Tensor, n_positions: int) -> Tensor | None:
    """Static (N, P) position buffer for a head of P positions; None when P covers the canvas."""
    n, length = canvas.shape
    if n_positions >= length:
        return None
    return torch.arange(n_positions, device=canvas.device).expand(n, -1).contiguous()
