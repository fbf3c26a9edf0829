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

MAX_GRAPHS = 24  # captured shapes kept (least recently used evicted)
MAX_GRAPH_MEMORY = 0.25  # ... and their static logits held to this share of the GPU's memory: with a
# 51,865-token vocabulary one (240 x 256) canvas alone holds 6.4 GB of bf16 logits


@dataclass
class _Captured:
    xa: Tensor  # (B, S, C_audio) static input
    n_frames: Tensor  # (B,)
    canvas: Tensor  # (N, L)
    kv_graph: torch.cuda.CUDAGraph
    fwd_graph: torch.cuda.CUDAGraph
    logits: Tensor  # (N, L, V) static output, overwritten by every replay

    @property
    def nbytes(self) -> int:
        return self.logits.numel() * self.logits.element_size()

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
        g = self.graphs.pop(key, None)
        if g is None:
            budget = MAX_GRAPH_MEMORY * torch.cuda.get_device_properties(xa.device).total_memory
            need = n_rows * canvas_len * self.decoder.config.vocab_size * xa.element_size()
            while self.graphs and (len(self.graphs) >= MAX_GRAPHS
                                   or sum(c.nbytes for c in self.graphs.values()) + need > budget):
                self.graphs.popitem(last=False)  # least recently used first
            if need > budget:  # too large to keep captured: eager for this shape
                cross_kv = self.decoder.cross_kv(xa, n_frames)
                return lambda canvas: self.decoder(canvas, cross_kv)
            g = self._capture(xa, n_frames, n_rows, canvas_len)
        self.graphs[key] = g
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
