"""What every training stage shares: the data order, the LR schedule, AdamW groups,
checkpoints with exact resume, metrics.jsonl, the progress bar, and one optimizer step
over micro-batches.

Exact resume rests on one idea: nothing about the data is state. The global batch of step
s is a pure function of (seed, s) (`batch_indices`), the LR is a pure function of s
(`lr_at`), and dropout is off; so the model weights, AdamW's moments and the step number
are all a checkpoint needs for a resumed run to be bitwise the same as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from rlhfkit import distributed
from rlhfkit.files import UserError, atomic_dir, atomic_write_text


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> list[int]:
    """Indices of the global batch of `step`: epochs of a seeded permutation of range(n)."""
    out, perms = [], {}
    for i in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(i, n)
        if epoch not in perms:
            g = torch.Generator().manual_seed(seed * 100_003 + epoch)
            perms[epoch] = torch.randperm(n, generator=g)
        out.append(int(perms[epoch][pos]))
    return out


def lr_at(step: int, lr: float, warmup_steps: int, max_steps: int, min_lr_ratio: float = 0.1) -> float:
    """Linear warmup to `lr`, then cosine decay to `min_lr_ratio * lr` at `max_steps`."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model, lr: float, weight_decay: float, betas=(0.9, 0.95)) -> torch.optim.AdamW:
    """AdamW; decay only matrices (not norms, biases): the nanoGPT / GPT-3 recipe."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel per tensor, elementwise, so results do not depend on how tensors happen
    # to be grouped (1-process and resumed runs stay bitwise equal), and 3-7x faster than the
    # per-parameter loop on CPU (135M parameters: ~0.4 s vs 1.7-2.8 s a step)
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None, foreach=False if not fused else None)


def clip_grad_norm(params, max_norm: float) -> float:
    """-> the global gradient norm; gradients are scaled to `max_norm` only when it is exceeded
    (0: never). torch's clip_grad_norm_ multiplies every gradient by min(1, max/norm) even when
    that is 1: a pass over all gradients for nothing (0.4-1.2 s a step for 135M parameters on
    2 cores). When it does clip, the scaling is torch's own, so the results are the same."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norm = torch.nn.utils.get_total_norm(grads)
    if max_norm > 0 and float(norm) > max_norm:
        torch.nn.utils.clip_grads_with_norm_(grads, max_norm, norm)
    return float(norm)


def micro_batch_split(batch_size: int, micro_batch_size: int, world: int) -> int:
    """-> gradient-accumulation steps; the global batch must split evenly over ranks (and, with
    a fixed micro_batch_size, into micro-batches; 0: chosen per step by `micro_batch_sizes`, -> 0)."""
    per_rank, rem = divmod(batch_size, world)
    if not micro_batch_size:
        if rem:
            raise UserError(f"batch_size {batch_size} must be a multiple of the number of processes ({world})")
        return 0
    if rem or per_rank % micro_batch_size:
        raise UserError(
            f"batch_size {batch_size} must be a multiple of micro_batch_size x processes "
            f"({micro_batch_size} x {world})")
    return per_rank // micro_batch_size


def micro_batch_sizes(n_rows: int, row_len: int, micro_batch_size: int, token_budget: int) -> list[int]:
    """-> the rows of each micro-batch over `n_rows` rows padded to `row_len` tokens.

    micro_batch_size > 0: that many rows each, the rest in the last. 0 (auto): as few
    micro-batches as keep rows x row_len <= token_budget, their sizes balanced (16 rows of
    87 tokens under 1,024: [8, 8], not [11, 5]). Why tokens, not rows: a forward's memory
    (activations, the (rows, T, vocab) logits) and its matmul shapes follow the padded token
    count, and fewer, larger forwards run faster on CPU until the activations leave the cache
    (SmolLM2-135M GRPO step, 16 rows of ~87 tokens: one forward of 16 took 17.2 s a step,
    two of 8 21.5 s, measured side by side).
    """
    if n_rows <= 0:
        return []
    per = micro_batch_size or max(1, token_budget // max(1, row_len))
    if micro_batch_size:
        return [min(per, n_rows - i) for i in range(0, n_rows, per)]
    k = -(-n_rows // per)  # ceil
    return [n_rows // k + (1 if i < n_rows % k else 0) for i in range(k)]


def backward_micro_batches(model, micro_batches, loss_fn, world: int) -> tuple[float, dict[str, float]]:
    """Forward/backward each micro-batch, gradients summing in .grad; -> (this rank's loss, metrics).

    `loss_fn(model, micro_batch) -> (loss, metrics)`, the loss already divided by the token count
    of the *global* batch. DDP averages gradients over ranks, so the loss is multiplied by
    `world` to turn that average back into the global sum. All but the last micro-batch skip
    DDP's all-reduce (`no_sync`): one communication per optimizer step. Metrics: keys ending in
    "loss" add up over the micro-batches (each is its share already), the others average.
    """
    total = 0.0
    metrics: dict[str, float] = {}
    for i, mb in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        ctx = model.no_sync() if (hasattr(model, "no_sync") and not last) else contextlib.nullcontext()
        with ctx:
            loss, met = loss_fn(model, mb)
            (loss * world).backward()
        total += float(loss.detach())
        for k, v in met.items():
            metrics[k] = metrics.get(k, 0.0) + (v if k.endswith("loss") else v / len(micro_batches))
    return total, metrics


def set_lr(optimizer, step: int, lr: float, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Set every parameter group's learning rate to `lr_at(step, ...)`; -> that rate."""
    rate = lr_at(step, lr, warmup_steps, max_steps, min_lr_ratio)
    for g in optimizer.param_groups:
        g["lr"] = rate
    return rate


class Checkpoints:
    """`out/checkpoints/step-N/state.pt`: weights, AdamW state, step, RNG; the last `keep` kept."""

    # keys that may change between a run and its resume (extend it, log differently, ...)
    RESUMABLE = {"max_steps", "epochs", "save_every", "eval_every", "log_every", "keep_checkpoints", "threads",
                 "eval_batches", "eval_max_prompts", "eval_batch_size", "ref_cache", "out"}  # out: a run dir moved or copied still resumes

    def __init__(self, out: str | Path, keep: int = 2, config=None):
        self.dir = Path(out) / "checkpoints"
        self.keep = keep
        # the config the checkpoints were made with: resuming under another one would
        # silently mix two runs, so `load` refuses it
        self.config = {k: v for k, v in dataclasses.asdict(config).items() if k not in self.RESUMABLE} if config else None

    def latest(self) -> Path | None:
        done = self.all()
        return done[-1] if done else None

    def all(self) -> list[Path]:
        """Finished checkpoint dirs, oldest first."""
        return [p.parent for p in sorted(self.dir.glob("step-*/state.pt"))] if self.dir.is_dir() else []

    def save(self, step: int, model, optimizer, extra: dict | None = None) -> None:
        if not distributed.is_main():
            return
        state = {
            "step": step,
            "model": {k: v.detach().clone() for k, v in _trainable_state(model).items()},
            "optimizer": optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            "threads": torch.get_num_threads(),
            "extra": extra or {},
            "config": self.config,
        }
        with atomic_dir(self.dir / f"step-{step:07d}") as tmp:
            torch.save(state, tmp / "state.pt")
        for old in sorted(self.dir.glob("step-*"))[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        if os.environ.get("RLHFKIT_STOP_AFTER_STEP") == str(step):
            # for tests and for "stop cleanly here": exits as a kill right after a save would
            os._exit(3)

    def resume(self, model, optimizer) -> tuple[int, dict]:
        """Load the latest checkpoint into model and optimizer, if there is one; -> (its step, the
        `extra` dict it was saved with), or (0, {}) for a fresh start."""
        found = self.all()
        for i, path in enumerate(reversed(found)):
            try:
                state = self.load(path, model, optimizer)
            except _Unreadable as e:
                if i == len(found) - 1:
                    raise UserError(str(e)) from None
                # a checkpoint damaged after it was written (a disk error, a copy cut short):
                # the one before is intact, and the steps after it train again exactly; the
                # damaged file is left where it is for the user to look at
                if distributed.is_main():
                    print(f"warning: {e}; resuming from the checkpoint before it", file=sys.stderr)
                continue
            return state["step"], state["extra"]
        return 0, {}

    def load(self, path: Path, model, optimizer) -> dict:
        try:
            state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
        except Exception as e:  # a truncated file from a crash mid-copy by hand, say
            raise _Unreadable(f"{path}/state.pt: unreadable checkpoint ({e})") from None
        saved = state.get("config")
        if self.config is not None and saved is not None and saved != self.config:
            diff = sorted(k for k in set(saved) | set(self.config) if saved.get(k) != self.config.get(k))
            raise UserError(f"{path}: checkpoint was made with other settings ({', '.join(diff)}); "
                            f"use a new `out` or delete {self.dir} to start over")
        # strict=False: a LoRA checkpoint holds the adapters only (the base stays as loaded)
        _, unexpected = _base(model).load_state_dict(state["model"], strict=False)
        if unexpected:
            raise UserError(f"{path}: checkpoint does not match this model (e.g. {unexpected[0]})")
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        if "threads" in state:
            # matmul sums split differently over 1 or 2 threads; the run continues bitwise
            # only on the thread count it started with, whatever a new probe would pick
            torch.set_num_threads(state["threads"])
        return state


class _Unreadable(UserError):
    """A checkpoint file that cannot be read back (resume falls back to the one before)."""


def _base(model):
    return model.module if hasattr(model, "module") else model


def _trainable_state(model) -> dict:
    """Everything that trains (for LoRA: just the adapters — the base stays as loaded)."""
    m = _base(model)
    names = {n for n, p in m.named_parameters() if p.requires_grad}
    return {k: v for k, v in m.state_dict().items() if k in names} if names else m.state_dict()


def _step_of(line: str) -> float:
    """The step of a metrics.jsonl line; a line torn by a kill mid-write counts as after every step."""
    try:
        return json.loads(line).get("step", 0)
    except (ValueError, AttributeError):
        return float("inf")


class MetricsLog:
    """`metrics.jsonl`, one JSON object per logged step, written by rank 0 only.

    On resume from step s, lines with step > s are dropped first so the file reads as if
    the run had never stopped.
    """

    def __init__(self, out: str | Path, resume_step: int = 0):
        self.path = Path(out) / "metrics.jsonl"
        self.main = distributed.is_main()
        if not self.main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step == 0:
            self.path.write_text("")
        elif self.path.exists():
            keep = [ln for ln in self.path.read_text(errors="replace").splitlines() if _step_of(ln) <= resume_step]
            atomic_write_text(self.path, "".join(ln + "\n" for ln in keep))

        self.tb = None
        if importlib.util.find_spec("tensorboard") is not None:  # TensorBoard when installed
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(out) / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)

    def log(self, step: int, metrics: dict) -> None:
        if self.main:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": step, **{k: _round(v) for k, v in metrics.items()}}) + "\n")
            if self.tb is not None:
                for k, v in metrics.items():
                    if isinstance(v, (int, float)):
                        self.tb.add_scalar(k, v, step)
                self.tb.flush()


def _round(v):
    return float(f"{v:.7g}") if isinstance(v, float) else v


def progress(total: int, initial: int, desc: str):
    """A tqdm bar on rank 0 (stderr); a silent stand-in elsewhere."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not distributed.is_main(),
                dynamic_ncols=True, mininterval=0.5 if os.isatty(2) else 10.0)


class Timer:
    def __init__(self):
        self.t = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        dt, self.t = now - self.t, now
        return dt
