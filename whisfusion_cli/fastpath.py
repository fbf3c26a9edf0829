"""CUDA graphs for the fixed-shape PDD loop.

One decoder pass is ~1,000 small kernels (18 blocks of norms, RoPE, attention, adapter, SwiGLU),
so at inference batch sizes the GPU waits on kernel launches, not on math. For each shape
(windows, audio frames, candidates x canvas) we capture two graphs once: the adapters' keys and
values from the encoder states, and one decoder pass over the canvas. PDD then replays the
decoder graph N times; its own sampling/re-masking stays eager (a few kernels per step).
Shapes are kept few by rounding: canvas lengths to 16 (decoding.canvas_length), audio frames to
FRAME_BUCKET (asr.WhisfusionASR).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor

from .model import KV, DiffusionDecoder

MAX_GRAPHS = 24  # captured shapes kept (least recently used evicted): bounds GPU memory


@dataclass
class _Captured:
    xa: Tensor  # (B, S, C_audio) static input
    n_frames: Tensor  # (B,)
    canvas: Tensor  # (N, L)
    kv_graph: torch.cuda.CUDAGraph
    fwd_graph: torch.cuda.CUDAGraph
    logits: Tensor  # (N, L, V) static output, overwritten by every replay

    def run(self, canvas: Tensor) -> Tensor:
        self.canvas.copy_(canvas)
        self.fwd_graph.replay()
        return self.logits


class GraphedDecoder:
    """Replays captured CUDA graphs of `decoder.cross_kv` and `decoder.forward` per shape."""

    def __init__(self, decoder: DiffusionDecoder):
        self.decoder = decoder
        self.graphs: OrderedDict[tuple[int, ...], _Captured] = OrderedDict()

    def prepare(self, xa: Tensor, n_frames: Tensor, n_rows: int, canvas_len: int):  # -> DecoderFn
        """Loads this batch's audio states and returns canvas (n_rows, L) -> logits (static buffer)."""
        key = (*xa.shape, n_rows, canvas_len)
        g = self.graphs.pop(key, None) or self._capture(xa, n_frames, n_rows, canvas_len)
        self.graphs[key] = g
        while len(self.graphs) > MAX_GRAPHS:
            self.graphs.popitem(last=False)
        g.xa.copy_(xa)
        g.n_frames.copy_(n_frames)
        g.kv_graph.replay()
        return g.run

    def _capture(self, xa: Tensor, n_frames: Tensor, n_rows: int, canvas_len: int) -> _Captured:
        dec = self.decoder
        xa_s, nf_s = xa.clone(), n_frames.clone()
        canvas_s = torch.full((n_rows, canvas_len), dec.config.mask_id, dtype=torch.long, device=xa.device)
        side = torch.cuda.Stream(xa.device)
        side.wait_stream(torch.cuda.current_stream(xa.device))
        with torch.cuda.stream(side):  # warm-up outside the capture (cuBLAS/SDPA workspaces)
            for _ in range(2):
                dec(canvas_s, dec.cross_kv(xa_s, nf_s))
        torch.cuda.current_stream(xa.device).wait_stream(side)
        kv_graph, fwd_graph = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.cuda.graph(kv_graph):
            kv: list[KV] = dec.cross_kv(xa_s, nf_s)
        with torch.cuda.graph(fwd_graph, pool=kv_graph.pool()):
            logits = dec(canvas_s, kv)
        return _Captured(xa_s, nf_s, canvas_s, kv_graph, fwd_graph, logits)
