"""torch.distributed in a few lines: the same stage code runs as 1 process or under torchrun.

    torchrun --nproc-per-node 2 -m rlhfkit pretrain --config f.toml

gloo on CPU, NCCL on GPU. Every rank builds the whole global batch from the step number
(the data order is a pure function of seed and step) and takes its own slice, so no
sampler state has to be saved for an exact resume and no data is sent between ranks.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def setup() -> tuple[int, int]:
    """Join the process group when launched by torchrun; -> (rank, world_size)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    # share the cores between the ranks of this machine instead of oversubscribing them
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def set_threads(model, threads: int = 0) -> int:
    """CPU threads for this process: `threads` if set, else whichever of 1 and this rank's
    share of the cores runs the model's own matmul shape faster, timed here and now.

    Why measure: on a quiet 2-core machine 2 threads train a 2M-parameter Llama 1.8x faster
    than 1, but while another process holds a core, every matmul waits for the descheduled
    OpenMP worker and 2 threads run 6x *slower* (3,900 vs 600 tokens/s, measured here).
    A 20-50 ms probe at start-up tells the two cases apart; with `threads` 0 the stage's
    `rlhfkit.threads.Tuner` then follows the load as it changes (another process arriving).
    """
    from rlhfkit import threads as tuning

    most = 0
    if not threads:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
        most = max(1, (os.cpu_count() or 1) // local_world)
        threads = most if most == 1 else _faster_threads(model, most)
    tuning.mark_auto(most)
    torch.set_num_threads(threads)
    return threads


def _faster_threads(model, most: int) -> int:
    import time

    d = getattr(getattr(model, "config", None), "hidden_size", 512)
    a, w = torch.randn(256, d), torch.randn(d, 4 * d)

    def timed(n: int, reps: int) -> float:
        torch.set_num_threads(n)
        t = time.perf_counter()
        for _ in range(reps):
            a @ w
        return time.perf_counter() - t

    # warm both counts first: a process's first matmul and the OpenMP pool's first use on
    # `most` threads cost several ms, which once made a round's count of 1 (and so a probe of
    # one ~8 ms matmul per round, where a single time slice of any other process decides)
    timed(1, 1), timed(most, 1)
    # rounds of ~15 ms, alternating, so a competing process is seen the way a long training
    # loop sees it; the best round of each count: an interruption only ever slows a round,
    # while a busy process on the machine slows every 2-thread round (2-core machine: idle, the
    # best rounds read 1.65-1.9x; with one job coming and going, the median of 3 single-matmul
    # rounds read 0.8-1.2 in 3 of 8 probes, i.e. 1 thread; beside a busy process, at the same
    # priority or at nice 19, both ways chose 1 in 12 of 12; benchmarks/README.md)
    reps = max(1, round(0.015 / max(timed(1, 1), 1e-6)))
    one, many = [], []
    for _ in range(5):
        one.append(timed(1, reps))
        many.append(timed(most, reps))
    return most if min(many) * 1.2 < min(one) else 1  # more threads only for a clear gain


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def all_reduce_sum(x: float | torch.Tensor) -> float:
    """The sum over ranks of a scalar (the scalar itself in a single process)."""
    t = torch.as_tensor(x, dtype=torch.float64).clone()
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def wrap_ddp(model):
    """DistributedDataParallel when there is more than one rank; the model itself otherwise."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model)
