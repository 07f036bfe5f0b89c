"""Supervised fine-tuning: imitate conversations, with the loss only on assistant tokens.

    rlhfkit sft --set model=runs/demo/base --set data=runs/demo/world/sft.jsonl --set out=runs/demo/sft
    rlhfkit sft --set model=~/.cache/rlhfkit/models/smollm2-135m-instruct --set lora=true ...

`model` is any causal LM: a pretrain output, an HF dir, a .gguf file, a hub id. Each line of
`data` is `{"messages": [{"role", "content"}, ...]}`; the model's chat template renders it
and only the assistant turns (with their end-of-turn token) are targets. With `lora = true`
only low-rank adapters train, and they are merged into the saved model, so the output is a
plain HF dir. Checkpoints and SIGKILL-exact resume behave as in pretrain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhfkit import distributed
from rlhfkit.threads import Tuner
from rlhfkit.config import key, save_config
from rlhfkit.files import UserError
from rlhfkit.training import (Checkpoints, MetricsLog, Timer, backward_micro_batches, batch_indices,
                              clip_grad_norm, make_optimizer, micro_batch_split, progress, set_lr)


@dataclass
class Config:
    out: str = key("runs/demo/sft", "output directory (an HF model dir)")
    model: str = key("runs/demo/base", "model to fine-tune: model dir, .gguf file or hub id")
    data: str = key("", "conversations JSONL: {'messages': [{'role', 'content'}, ...]} per line")
    eval_data: str = key("", "held-out conversations JSONL (default: hold out eval_fraction of data)")
    seed: int = key(0, "seed for data order (and LoRA init)")
    max_seq_len: int = key(512, "truncate conversations to this many tokens")
    max_steps: int = key(0, "optimizer steps (0: use epochs)")
    epochs: float = key(1.0, "passes over the data when max_steps is 0")
    batch_size: int = key(32, "conversations per optimizer step, summed over all processes")
    micro_batch_size: int = key(8, "with max_seq_len, sets a forward pass's token budget (micro_batch_size x max_seq_len padded tokens; short conversations share one)")
    learning_rate: float = key(3e-4, "peak learning rate (AdamW)")
    min_lr_ratio: float = key(0.1, "the cosine decay ends at this fraction of the peak")
    warmup_steps: int = key(10, "linear warmup steps")
    weight_decay: float = key(0.0, "AdamW weight decay on matrices")
    grad_clip: float = key(1.0, "clip the global gradient norm (0: off)")
    lora: bool = key(False, "train LoRA adapters only (merged into the saved model)")
    lora_r: int = key(16, "LoRA rank")
    lora_alpha: int = key(32, "LoRA alpha (scale = alpha / r)")
    lora_dropout: float = key(0.0, "LoRA dropout")
    eval_fraction: float = key(0.05, "share of conversations held out when eval_data is empty")
    eval_every: int = key(50, "evaluate every N steps (0: only at the end)")
    save_every: int = key(100, "checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = key(2, "checkpoints kept on disk")
    threads: int = key(0, "CPU threads per process (0: 1 or all cores, whichever a start-up probe finds faster)")
    log_every: int = key(5, "write metrics every N steps")


def length_bucketed(seqs: list, token_budget: int) -> list[list]:
    """Split sequences into micro-batches of at most `token_budget` padded tokens each.

    Sorted by length, so a micro-batch of short conversations holds many of them and pads
    little (lengths here span 30 to 250+ tokens: fixed-size micro-batches padded ~2x).
    The loss is normalised by the global target count, so how a step's sequences are split
    into micro-batches does not change the gradient (up to float rounding).
    """
    out, cur, longest = [], [], 0
    for s in sorted(seqs, key=lambda e: len(e[0])):
        longest_if_added = max(longest, len(s[0]))
        if cur and longest_if_added * (len(cur) + 1) > token_budget:
            out.append(cur)
            cur, longest_if_added = [], len(s[0])
        cur.append(s)
        longest = longest_if_added
    return out + [cur] if cur else out


# architectures whose logits are exactly lm_head(decoder output): no soft-capping or logit
# scale after the head, so the head can run on the target positions alone
PLAIN_HEAD = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"}


class TargetLM(torch.nn.Module):
    """A causal LM whose forward returns logits only where the next token is a target.

    forward(input_ids, attention_mask, loss_mask) -> (n_targets, V) logits, (n_targets,) targets.
    SFT trains on assistant tokens only; the full forward would still run the LM head (576 x
    49,152 for SmolLM2: a fifth of the model's FLOPs) and a (B, S, V) log-softmax on every
    prompt and padding position. The same math on fewer rows. A module, so DDP can wrap it.
    """

    def __init__(self, lm):
        super().__init__()
        self.lm = lm
        base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm  # under peft, LoRA is inside
        self.decoder, self.head = base.get_decoder(), base.get_output_embeddings()

    @staticmethod
    def supports(lm) -> bool:
        base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
        return type(base).__name__ in PLAIN_HEAD

    def forward(self, input_ids, attention_mask, loss_mask):
        hidden = self.decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        keep = loss_mask[:, 1:]  # position t predicts token t+1
        return self.head(hidden[:, :-1][keep]).float(), input_ids[:, 1:][keep]


def run(cfg: Config) -> None:
    from rlhfkit.data import collate, encode_conversation, read_conversations
    from rlhfkit.losses import lm_loss
    from rlhfkit.models import add_lora, count_parameters, eos_token_ids, load_causal_lm, load_tokenizer, save_model

    rank, world = distributed.setup()
    if not cfg.data:
        raise UserError("sft: set `data` to a conversations JSONL file")
    micro_batch_split(cfg.batch_size, cfg.micro_batch_size, world)
    out = Path(cfg.out)
    tokenizer = load_tokenizer(cfg.model)
    if not tokenizer.chat_template:
        raise UserError(f"{cfg.model}: the tokenizer has no chat template")

    # ---- data: (ids, assistant mask) per conversation, encoded once
    convs = read_conversations(cfg.data)
    encoded = [encode_conversation(tokenizer, c, cfg.max_seq_len) for c in convs]
    if cfg.eval_data:
        eval_set = [encode_conversation(tokenizer, c, cfg.max_seq_len) for c in read_conversations(cfg.eval_data)]
    else:
        n_eval = int(len(encoded) * cfg.eval_fraction)
        encoded, eval_set = encoded[: len(encoded) - n_eval], encoded[len(encoded) - n_eval:]
    encoded = [e for e in encoded if any(e[1][1:])]  # truncation can cut every assistant token
    if not encoded:
        raise UserError(f"{cfg.data}: no conversation keeps an assistant token within max_seq_len={cfg.max_seq_len}")
    max_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(encoded) / cfg.batch_size))

    # ---- model (optionally LoRA), optimizer, resume
    torch.manual_seed(cfg.seed)
    model = load_causal_lm(cfg.model)
    model.generation_config.eos_token_id = eos_token_ids(model, tokenizer)
    if cfg.lora:
        model = add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
    model.train()
    optimizer = make_optimizer(model, cfg.learning_rate, cfg.weight_decay)
    distributed.set_threads(model, cfg.threads)
    ckpts = Checkpoints(out, cfg.keep_checkpoints, config=cfg)
    step, _ = ckpts.resume(model, optimizer)
    target_lm = TargetLM(model) if TargetLM.supports(model) else None
    ddp_model = distributed.wrap_ddp(target_lm or model)
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.toml", "sft")
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"sft: {count_parameters(model) / 1e6:.2f}M parameters ({trainable / 1e6:.2f}M trainable), "
              f"{len(encoded)} conversations, {max_steps} steps, {world} process(es) x {torch.get_num_threads()} thread(s)"
              + (f", resuming at step {step}" if step else ""))
    log = MetricsLog(out, resume_step=step)
    pad = tokenizer.pad_token_id

    def loss_fn(m, mb):
        if target_lm is not None:  # the LM head on target positions only: a sum over them / normalizer
            logits, targets = m(mb["input_ids"], mb["attention_mask"], mb["loss_mask"])
            return torch.nn.functional.cross_entropy(logits, targets, reduction="sum") / mb["normalizer"], {}
        logits = m(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"], use_cache=False).logits
        return lm_loss(logits, mb["input_ids"], mb["loss_mask"], normalizer=mb["normalizer"])

    @torch.no_grad()
    def evaluate() -> float:
        model.eval()
        mine = eval_set[rank::world]
        s = n = 0.0
        for i in range(0, len(mine), cfg.micro_batch_size):
            b = collate(mine[i:i + cfg.micro_batch_size], pad)
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits
            s += float(lm_loss(logits, b["input_ids"], b["loss_mask"], normalizer=1.0)[0])  # a sum
            n += float(b["loss_mask"][:, 1:].sum())
        model.train()
        return distributed.all_reduce_sum(s) / max(1.0, distributed.all_reduce_sum(n))

    bar = progress(max_steps, step, "sft")
    tuner = Tuner.auto()  # threads = 0: re-probes 1 vs all threads when the step rate jumps
    timer = Timer()
    while step < max_steps:
        lr = set_lr(optimizer, step, cfg.learning_rate, cfg.warmup_steps, max_steps, cfg.min_lr_ratio)
        batch = [encoded[i] for i in batch_indices(step, cfg.batch_size, len(encoded), cfg.seed)]
        # every assistant token of the *global* batch weighs the same, whatever its rank or
        # micro-batch: normalise by their total count (targets are mask[1:], shifted by one)
        n_targets = sum(sum(m[1:]) for _, m in batch)
        per_rank = cfg.batch_size // world
        local = batch[rank * per_rank:(rank + 1) * per_rank]
        mbs = [{**collate(mb, pad), "normalizer": n_targets}
               for mb in length_bucketed(local, cfg.micro_batch_size * cfg.max_seq_len)]
        loss = distributed.all_reduce_sum(backward_micro_batches(ddp_model, mbs, loss_fn, world)[0])
        grad_norm = clip_grad_norm([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        dt, threads = timer.lap(), torch.get_num_threads()
        tokens = sum(len(ids) for ids, _ in batch)
        tuner.tick(dt, tokens)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens / dt:,.0f}", refresh=False)
        metrics = {"train/loss": loss, "train/lr": lr, "train/grad_norm": grad_norm,
                   "train/target_tokens": n_targets, "time/step_s": dt, "time/tokens_per_s": tokens / dt,
                   "time/threads": threads}
        if ((cfg.eval_every and step % cfg.eval_every == 0) or step == max_steps) and eval_set:
            metrics["eval/loss"] = evaluate()
        if step % cfg.log_every == 0 or step == max_steps or "eval/loss" in metrics:
            log.log(step, metrics)
        if (cfg.save_every and step % cfg.save_every == 0) or step == max_steps:
            ckpts.save(step, model, optimizer)
        distributed.barrier()
        timer.lap()
    bar.close()

    if distributed.is_main():
        save_model(model, tokenizer, out)
        print(f"sft: done at step {step} -> {out}")
    distributed.barrier()
