"""Pre-train a decoder-only transformer from scratch: next-token prediction on packed text.

    rlhfkit pretrain --config recipes/pretrain.toml --set max_steps=200
    torchrun --nproc-per-node 2 -m rlhfkit pretrain --config ...   # data-parallel (DDP)

Kill it at any moment (even SIGKILL) and run the same command again: it continues from the
last checkpoint and ends bitwise where an uninterrupted run would (CPU, same seed).
Writes an HF model dir to `out` (config.json, model.safetensors, tokenizer, chat template),
plus metrics.jsonl, config.toml and checkpoints/.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rlhfkit import distributed
from rlhfkit.threads import Tuner
from rlhfkit.config import key, save_config
from rlhfkit.files import UserError
from rlhfkit.training import (Checkpoints, MetricsLog, Timer, backward_micro_batches, batch_indices,
                              clip_grad_norm, make_optimizer, micro_batch_sizes, micro_batch_split, progress,
                              set_lr)


@dataclass
class Config:
    out: str = key("runs/demo/base", "output directory (an HF model dir)")
    tokenizer: str = key("runs/demo/tokenizer", "tokenizer dir (from `rlhfkit tokenizer`)")
    data: list[str] = key([], "training text: .txt (documents split on blank lines) or .jsonl ({'text'}, or {'messages'} through the chat template)")
    model: str = key("", "continue pre-training this model instead of starting from scratch")
    seed: int = key(0, "seed for initialisation and data order")
    # architecture (a LlamaConfig: RMSNorm, RoPE, SwiGLU, tied embeddings)
    d_model: int = key(256, "hidden size")
    n_layers: int = key(4, "transformer blocks")
    n_heads: int = key(4, "attention heads")
    n_kv_heads: int = key(0, "key/value heads for GQA (0: same as n_heads)")
    block_size: int = key(256, "tokens per training sequence (packed)")
    # optimisation
    max_steps: int = key(1000, "optimizer steps")
    batch_size: int = key(32, "sequences per optimizer step, summed over all processes")
    micro_batch_size: int = key(0, "sequences per forward pass; the rest is gradient accumulation (0: from micro_batch_tokens)")
    micro_batch_tokens: int = key(4096, "with micro_batch_size = 0, tokens per forward pass: block_size 256 -> 16 "
                                        "sequences, 64 -> all of a batch up to 64")
    learning_rate: float = key(1e-3, "peak learning rate (AdamW)")
    min_lr_ratio: float = key(0.1, "the cosine decay ends at this fraction of the peak")
    warmup_steps: int = key(50, "linear warmup steps")
    weight_decay: float = key(0.1, "AdamW weight decay on matrices")
    grad_clip: float = key(1.0, "clip the global gradient norm (0: off)")
    # bookkeeping
    eval_fraction: float = key(0.02, "share of blocks held out for eval/loss")
    eval_every: int = key(100, "evaluate every N steps (0: only at the end)")
    eval_batches: int = key(4, "micro-batches per evaluation")
    save_every: int = key(100, "checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = key(2, "checkpoints kept on disk")
    threads: int = key(0, "CPU threads per process (0: 1 or all cores, whichever a start-up probe finds faster)")
    log_every: int = key(10, "write metrics every N steps")


def build_model(cfg: Config, tokenizer):
    from transformers import LlamaForCausalLM

    from rlhfkit.models import eos_token_ids, load_causal_lm, tiny_llama_config

    if cfg.model:
        return load_causal_lm(cfg.model)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every rerun
    mcfg = tiny_llama_config(
        vocab_size=len(tokenizer), d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
        n_kv_heads=cfg.n_kv_heads or None, max_seq_len=max(cfg.block_size, 1024),
        bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(mcfg)
    model.generation_config.eos_token_id = eos_token_ids(model, tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def run(cfg: Config) -> None:
    from rlhfkit.data import pack_documents, read_documents
    from rlhfkit.losses import lm_loss
    from rlhfkit.models import count_parameters, load_tokenizer, save_model

    rank, world = distributed.setup()
    if not cfg.data:
        raise UserError("pretrain: set `data` to one or more text files")
    micro_batch_split(cfg.batch_size, cfg.micro_batch_size, world)
    out = Path(cfg.out)
    tokenizer = load_tokenizer(cfg.tokenizer)

    # ---- data: packed (N, block_size) blocks; the last eval_fraction held out
    # conversations ({"messages"} JSONL) go in through the chat template, as the later stages see them
    render = (lambda m: tokenizer.apply_chat_template(m, tokenize=False)) if tokenizer.chat_template else None
    blocks = pack_documents(read_documents(cfg.data, render), tokenizer, cfg.block_size)
    n_eval = max(1, int(len(blocks) * cfg.eval_fraction)) if len(blocks) > 1 else 0
    train_blocks, eval_blocks = blocks[: len(blocks) - n_eval], blocks[len(blocks) - n_eval:]

    # ---- model, optimizer, resume
    model = build_model(cfg, tokenizer)
    distributed.set_threads(model, cfg.threads)
    model.train()
    optimizer = make_optimizer(model, cfg.learning_rate, cfg.weight_decay)
    ckpts = Checkpoints(out, cfg.keep_checkpoints, config=cfg)
    step, _ = ckpts.resume(model, optimizer)
    ddp_model = distributed.wrap_ddp(model)
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.toml", "pretrain")
        print(f"pretrain: {count_parameters(model) / 1e6:.2f}M parameters, {train_blocks.numel() / 1e6:.2f}M "
              f"train tokens, {world} process(es) x {torch.get_num_threads()} thread(s)" + (f", resuming at step {step}" if step else ""))
    log = MetricsLog(out, resume_step=step)

    def loss_fn(m, mb):
        # every token of a packed block is a target, so the global normaliser is simply
        # (sequences in the global batch) x (block_size - 1) predictions each
        logits = m(input_ids=mb, use_cache=False).logits
        return lm_loss(logits, mb, torch.ones_like(mb, dtype=torch.bool), normalizer=cfg.batch_size * (cfg.block_size - 1))

    @torch.no_grad()
    def evaluate() -> float:
        model.eval()
        mbs = eval_blocks.split(cfg.micro_batch_size or max(1, cfg.micro_batch_tokens // cfg.block_size))
        mbs = mbs[: cfg.eval_batches]
        mine = mbs[rank::world]  # each rank a share, then sum
        s = sum(float(lm_loss(model(input_ids=mb, use_cache=False).logits, mb, torch.ones_like(mb, dtype=torch.bool))[0]) * len(mb) for mb in mine)
        n = sum(len(mb) for mb in mine)
        model.train()
        return distributed.all_reduce_sum(s) / max(1.0, distributed.all_reduce_sum(n))

    bar = progress(cfg.max_steps, step, "pretrain")
    tuner = Tuner.auto()  # threads = 0: re-probes 1 vs all threads when the step rate jumps
    timer = Timer()
    while step < cfg.max_steps:
        lr = set_lr(optimizer, step, cfg.learning_rate, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
        # the global batch of this step, then this rank's slice, then micro-batches
        idx = batch_indices(step, cfg.batch_size, len(train_blocks), cfg.seed)
        per_rank = cfg.batch_size // world
        local = train_blocks[idx[rank * per_rank:(rank + 1) * per_rank]]
        sizes = micro_batch_sizes(per_rank, cfg.block_size, cfg.micro_batch_size, cfg.micro_batch_tokens)
        loss, _ = backward_micro_batches(ddp_model, local.split(sizes), loss_fn, world)
        loss = distributed.all_reduce_sum(loss)
        grad_norm = clip_grad_norm(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        dt, threads = timer.lap(), torch.get_num_threads()
        tokens_per_s = cfg.batch_size * cfg.block_size / dt
        tuner.tick(dt, cfg.batch_size * cfg.block_size)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
        metrics = {"train/loss": loss, "train/lr": lr, "train/grad_norm": grad_norm,
                   "time/step_s": dt, "time/tokens_per_s": tokens_per_s, "time/threads": threads}
        if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.max_steps:
            if n_eval:
                metrics["eval/loss"] = evaluate()
        if step % cfg.log_every == 0 or step == cfg.max_steps or "eval/loss" in metrics:
            log.log(step, metrics)
        if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.max_steps:
            ckpts.save(step, model, optimizer)
        distributed.barrier()
        timer.lap()  # checkpoint and eval time is not step time
    bar.close()

    if distributed.is_main():
        save_model(model, tokenizer, out)
        print(f"pretrain: done at step {step} -> {out}")
    distributed.barrier()
