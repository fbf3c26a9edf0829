"""Training: Whisfusion's curriculum (arXiv 2508.07048) on cached encoder features.

Stages (`TrainConfig.stage`); the encoder is always frozen, so its states come from `cache.py`:
  "1"        only the adapters (`cross_attn`, `cross_attn_ln` of every block) train; t ~ U(0, 1).
  "2"        the whole decoder trains with layer-wise LR decay; t ~ U(0.7, 1), the high-mask
             regime that PDD decodes in.
  "scratch"  a fresh decoder and its adapters train together; t ~ U(0, 1) (the v2 recipe).

Layer-wise LR decay (stage 2), exactly: with n blocks and decay d, parameters of block i get
lr * d**(n - 1 - i) (the top block lr), the embeddings (every nn.Embedding, so also
whisper-mdm's tied output head) lr * d**n, and everything above the blocks (final norm,
lm_head) lr. Other stages use lr everywhere. AdamW decays matrices (ndim >= 2) only; the LR
warms up linearly, then follows a cosine to lr * min_lr_ratio (every group keeps its ratio).

Texts are kept as written, cased and punctuated: the BPE tokenizer (trained on the training
texts unless `tokenizer` names a tokenizer.json) and the targets both see them so. Validation
WER lower-cases and strips punctuation before comparing.

Batches come from `splits.py` (cached features, canvas targets: padding positions are targets like
any other), the process group from `distributed.py`, the validation pass from `validation.py`.

Global batch: batch_size clips per micro-batch per process x grad_accum micro-batches x world_size
processes per optimizer step. Under torchrun (RANK/WORLD_SIZE set) ranks take disjoint slices of
each global micro-batch in one seeded order, and every clip's mask noise is seeded by its position
in that order, so a step sees the same clips and masks whatever the number of processes. Only
rank 0 writes: output/last (weights + train_state.pt, swapped in atomically), output/best (by val
WER, then val loss) and metrics.jsonl.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import (load_whisfusion, publish, recover, resolve_model_dir, rng_state, save_checkpoint,
                         set_rng_state)
from .config import STAGE_MASK_RANGE, Stage, TrainConfig, WhisfusionConfig
from .curriculum import add_noise, fresh_model, lr_factor, noise_seed, param_groups, set_trainable
from .data import Example, epoch_order, micro_batch_span, read_sources, split_examples
from .diffusion import masked_diffusion_loss
from .distributed import Denoiser, Dist, autocast, init_distributed
from .errors import ConfigError
from .model import Whisfusion
from .splits import Split, open_splits
from .tokenizer import Tokenizer, train_bpe_tokenizer
from .validation import evaluate

__all__ = ["STAGE_MASK_RANGE", "Stage", "TrainConfig", "TrainEvent", "CacheProgress", "StepInfo", "ValInfo",
           "run_training", "fresh_model", "param_groups", "set_trainable", "add_noise", "noise_seed",
           "lr_factor", "publish", "recover", "save_checkpoint", "rng_state", "set_rng_state", "evaluate",
           "init_distributed"]

log = logging.getLogger("whisfusion_cli")


@dataclass(frozen=True)
class CacheProgress:
    done: int  # clips encoded (this process's share)
    total: int


@dataclass(frozen=True)
class StepInfo:
    step: int  # optimizer steps done
    total_steps: int
    loss: float  # mean over the global batch
    tokens_per_s: float  # canvas positions per second, all processes
    lr: float  # the top group's
    eta_s: float


@dataclass(frozen=True)
class ValInfo:
    step: int
    loss: float  # mean over val_t of the validation loss
    wer: float | None  # greedy PDD (k=1); None when no reference has words
    is_best: bool


TrainEvent = CacheProgress | StepInfo | ValInfo
TrainCallback = Callable[[TrainEvent], None]  # called on rank 0 only


def _prepare_output(cfg: TrainConfig, dist: Dist) -> dict[str, Any] | None:
    """Repairs interrupted checkpoint swaps; returns the training state to resume from, if any."""
    out = Path(cfg.output)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        recover(out / "last")
        recover(out / "best")
        shutil.rmtree(out / ".staging", ignore_errors=True)
    dist.barrier()
    has_state = (out / "last" / "train_state.pt").is_file()
    if not cfg.resume and (has_state or (out / "metrics.jsonl").exists()):
        raise ConfigError(f"{out} holds a run already: resume it (resume=True) or choose another output")
    if cfg.resume and not has_state:
        log.info("%s: no checkpoint to resume from, starting at step 0", out)
    if not (cfg.resume and has_state):
        return None
    state = torch.load(out / "last" / "train_state.pt", map_location="cpu", weights_only=True)
    if state["stage"] != cfg.stage:
        raise ConfigError(f"{out / 'last'} is a stage {state['stage']} run, not stage {cfg.stage}")
    return state


def _examples(cfg: TrainConfig) -> tuple[list[Example], list[Example]]:
    train, skipped = read_sources(list(cfg.data))
    if cfg.val_data:
        val, more = read_sources(list(cfg.val_data))
        skipped += more
    else:
        train, val = split_examples(train, cfg.val_fraction, cfg.seed)
    if skipped:
        log.warning("data: skipped rows %s", dict(skipped))
    return train, val


def _model(cfg: TrainConfig, dist: Dist, texts: list[str],
           resumed: bool) -> tuple[Whisfusion, WhisfusionConfig, Tokenizer]:
    """The resumed, initial (cfg.init) or fresh model, fp32 on the CPU."""
    cpu = torch.device("cpu")
    if resumed:
        return load_whisfusion(Path(cfg.output) / "last", cpu, torch.float32)
    if cfg.init:
        if cfg.tokenizer or cfg.smdm_init:
            raise ConfigError("init brings its own tokenizer and decoder: drop tokenizer / smdm_init")
        return load_whisfusion(resolve_model_dir(cfg.init), cpu, torch.float32)
    if not cfg.tokenizer and cfg.decoder_config != "whisper-mdm":  # trained once, read by every rank
        path = Path(cfg.output) / "tokenizer.json"
        if dist.is_main:
            train_bpe_tokenizer(texts, cfg.vocab_size).save(path)
        dist.barrier()
        cfg = replace(cfg, tokenizer=str(path))
    torch.manual_seed(cfg.seed)  # the same fresh decoder on every rank
    return fresh_model(cfg, texts)


@dataclass
class Run:
    """A training run's live state."""

    cfg: TrainConfig
    dist: Dist
    model: Whisfusion
    wcfg: WhisfusionConfig
    tokenizer: Tokenizer
    train: Split
    val: Split | None
    net: nn.Module  # Denoiser, DDP-wrapped under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    total_steps: int
    micro_per_epoch: int  # global micro-batches per epoch
    step: int = 0
    best: tuple[float, float] | None = None  # (val WER, val loss) of output/best
    callback: TrainCallback | None = None
    orders: dict[int, list[int]] = field(default_factory=dict)

    def order(self, epoch: int) -> list[int]:
        if epoch not in self.orders:
            self.orders = {epoch: epoch_order(len(self.train.ids), self.cfg.seed, epoch)}
        return self.orders[epoch]

    def log(self, **fields: Any) -> None:
        if self.dist.is_main:
            with (Path(self.cfg.output) / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(fields) + "\n")


def _setup(cfg: TrainConfig, dist: Dist, callback: TrainCallback | None) -> Run:
    state = _prepare_output(cfg, dist)
    train_ex, val_ex = _examples(cfg)
    model, wcfg, tokenizer = _model(cfg, dist, [ex.text for ex in train_ex], resumed=state is not None)
    progress = (lambda d, t: callback(CacheProgress(d, t))) if callback and dist.is_main else None
    train, val = open_splits(cfg, dist, model, wcfg, tokenizer, train_ex, val_ex, progress)
    set_trainable(model, cfg.stage)
    model.decoder.to(dist.device).train()
    net: nn.Module = Denoiser(model.decoder)
    if dist.world_size > 1:
        ids = [dist.device.index] if dist.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(net, device_ids=ids)  # all-reduces the trainable grads
    groups = param_groups(model.decoder, cfg.stage, cfg.lr, cfg.weight_decay, cfg.llrd)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=dist.device.type == "cuda")
    micro_per_epoch = len(train.ids) // (cfg.batch_size * dist.world_size)
    if micro_per_epoch == 0:
        raise ConfigError(f"{len(train.ids)} training clips do not fill one global micro-batch of "
                          f"{cfg.batch_size} x {dist.world_size} processes")
    total = cfg.steps or math.ceil(cfg.epochs * micro_per_epoch / cfg.grad_accum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.warmup_steps, total, cfg.min_lr_ratio))
    run = Run(cfg, dist, model, wcfg, tokenizer, train, val, net, optimizer, scheduler, total,
              micro_per_epoch, callback=callback)
    if state is not None:
        _restore(run, state)
    else:
        if dist.is_main:  # a run that died before its first checkpoint starts over
            (Path(cfg.output) / "metrics.jsonl").unlink(missing_ok=True)
        run.log(event="start", step=0, total_steps=total, n_train=len(train.ids),
                n_val=len(val.ids) if val else 0, world_size=dist.world_size, config=asdict(cfg))
    return run


def _restore(run: Run, state: dict[str, Any]) -> None:
    """Optimizer, scheduler, RNG, step and best score of output/last; metrics.jsonl cut back to it."""
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    run.step = int(state["step"])
    best = Path(run.cfg.output) / "best" / "train_info.json"  # what output/best holds now, perhaps newer
    run.best = _score(json.loads(best.read_text())) if best.is_file() else None
    if state["world_size"] != run.dist.world_size:
        log.warning("resuming a %d-process run on %d processes: the data order shifts",
                    state["world_size"], run.dist.world_size)
    metrics = Path(run.cfg.output) / "metrics.jsonl"
    if run.dist.is_main and metrics.exists():  # drop what the interrupted run logged after its checkpoint
        kept = []
        for line in metrics.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= run.step:
                    kept.append(line)
            except json.JSONDecodeError:
                pass  # a line cut short by the kill
        tmp = metrics.with_name(".metrics.jsonl.tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        os.replace(tmp, metrics)
    run.log(event="resume", step=run.step, total_steps=run.total_steps)
    log.info("resumed %s at step %d of %d", run.cfg.output, run.step, run.total_steps)


def host_batch(run: Run, g: int) -> tuple[Tensor, ...]:
    """This rank's share of global micro-batch g, on the host (pinned for CUDA):
    xa (B, S, C) fp16, n_frames (B,), x0, xt, masked (B, L), t (B,)."""
    cfg, dist, wcfg = run.cfg, run.dist, run.wcfg
    epoch, micro = divmod(g, run.micro_per_epoch)
    start, stop = micro_batch_span(micro, cfg.batch_size, dist.rank, dist.world_size)
    xa, n_frames, x0, _ = run.train.batch(run.order(epoch)[start:stop], wcfg.eos_id, wcfg.decoder.max_seq_len)
    seeds = [noise_seed(cfg.seed, epoch, p) for p in range(start, stop)]
    noised = add_noise(x0, seeds, wcfg.decoder.mask_id, cfg.t_range, wcfg.decoder.max_seq_len)
    batch = (xa, n_frames, x0, *noised)
    return tuple(v.pin_memory() for v in batch) if dist.device.type == "cuda" else batch


def _train_step(run: Run, batches: Callable[[int], tuple[Tensor, ...]]) -> tuple[float, float, float, float]:
    """One optimizer step over grad_accum micro-batches: (loss, canvas tokens, grad norm, lr), global."""
    cfg, dist, device = run.cfg, run.dist, run.dist.device
    run.optimizer.zero_grad(set_to_none=True)
    loss_sum, tokens = torch.zeros((), device=device), 0
    for a in range(cfg.grad_accum):
        xa, n_frames, x0, xt, masked, t = (v.to(device, non_blocking=True)
                                           for v in batches(run.step * cfg.grad_accum + a))
        last = a == cfg.grad_accum - 1
        with nullcontext() if last or dist.world_size == 1 else run.net.no_sync():  # type: ignore[operator]
            with autocast(device):
                logits = run.net(xa.float(), n_frames, xt)  # (B, L, V)
            loss = masked_diffusion_loss(logits, x0, masked, t)
            (loss / cfg.grad_accum).backward()
        loss_sum += loss.detach()
        tokens += x0.numel()
    params = [p for g in run.optimizer.param_groups for p in g["params"]]
    norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
    lr = max(g["lr"] for g in run.optimizer.param_groups)
    run.optimizer.step()
    run.scheduler.step()
    run.step += 1
    loss_v, tokens_v, norm_v = dist.sum([float(loss_sum) / cfg.grad_accum, float(tokens), float(norm)])
    return loss_v / dist.world_size, tokens_v, norm_v / dist.world_size, lr


class Prefetcher:
    """Host batches built one global micro-batch ahead in a worker thread, while the device computes.

    The worker is the only thread that reads the training split, so its shard cache needs no lock.
    """

    def __init__(self, run: Run, pool: ThreadPoolExecutor):
        self.run, self.pool = run, pool
        self.ahead: tuple[int, Future] | None = None

    def __call__(self, g: int) -> tuple[Tensor, ...]:
        if self.ahead is None or self.ahead[0] != g:
            self.ahead = (g, self.pool.submit(host_batch, self.run, g))
        batch = self.ahead[1].result()
        self.ahead = (g + 1, self.pool.submit(host_batch, self.run, g + 1))
        return batch


def _score(m: dict[str, Any]) -> tuple[float, float]:
    """What output/best minimises: val WER, then val loss."""
    return (m["val_wer"] if m["val_wer"] is not None else math.inf, m["val_loss"])


def _validate(run: Run) -> None:
    """Evaluates, keeps output/best, logs."""
    assert run.val is not None
    run.model.decoder.eval()
    m = evaluate(run.model.decoder, run.val, run.wcfg, run.tokenizer, run.cfg, run.dist)
    run.model.decoder.train()
    is_best = run.best is None or _score(m) < run.best
    if is_best:
        run.best = _score(m)
        if run.dist.is_main:
            out = Path(run.cfg.output) / "best"
            save_checkpoint(run.model, run.wcfg, run.tokenizer, out, {"step": run.step, **m})
    run.log(event="val", step=run.step, best=is_best, **m)
    if run.callback and run.dist.is_main:
        run.callback(ValInfo(run.step, m["val_loss"], m["val_wer"], is_best))


def _save_last(run: Run) -> None:
    if not run.dist.is_main:
        return
    state = {"step": run.step, "stage": run.cfg.stage, "world_size": run.dist.world_size,
             "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
             "rng": rng_state(), "config": asdict(run.cfg)}
    save_checkpoint(run.model, run.wcfg, run.tokenizer, Path(run.cfg.output) / "last", state=state)


def _loop(run: Run) -> None:
    cfg, start_step = run.cfg, run.step
    t_start = t_last = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as pool:
        batches = Prefetcher(run, pool)
        while run.step < run.total_steps:
            loss, tokens, norm, lr = _train_step(run, batches)
            now = time.perf_counter()
            info = StepInfo(run.step, run.total_steps, loss, tokens / max(now - t_last, 1e-9), lr,
                            (run.total_steps - run.step) * (now - t_start) / (run.step - start_step))
            if run.callback and run.dist.is_main:
                run.callback(info)
            done = run.step == run.total_steps
            if run.step % cfg.log_every == 0 or run.step == start_step + 1 or done:
                run.log(event="train", step=run.step, loss=loss, lr=lr, grad_norm=norm,
                        tokens_per_s=info.tokens_per_s, elapsed_s=now - t_start)
            if run.val is not None and (run.step % cfg.val_every == 0 or done):
                _validate(run)
            if run.step % cfg.save_every == 0 or done:
                _save_last(run)
            t_last = time.perf_counter()  # throughput leaves validation and saving out


def run_training(cfg: TrainConfig, callback: TrainCallback | None = None) -> Path:
    """Trains as `cfg` says, under torchrun or in one process; returns output/best (output/last when
    there is no validation set).

    Args:
        cfg: the run's configuration.
        callback: receives CacheProgress while features are encoded, then a StepInfo per optimizer
            step and a ValInfo per validation (rank 0 only). Library code never prints.
    """
    dist, created = init_distributed(cfg.device)
    try:
        run = _setup(cfg, dist, callback)
        _loop(run)
        dist.barrier()
    finally:
        if created:
            torch.distributed.destroy_process_group()
    out = Path(cfg.output)
    return out / "best" if (out / "best").is_dir() else out / "last"
