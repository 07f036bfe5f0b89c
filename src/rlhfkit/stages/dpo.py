"""Direct preference optimisation: train the policy on preference pairs, no reward model, no sampling.

    rlhfkit dpo --set model=runs/demo/sft --set data=runs/demo --set out=runs/demo/dpo
    rlhfkit dpo --set model=~/.cache/rlhfkit/models/smollm2-135m-instruct --set lora=true \
                --set data=hh-rlhf-harmless-base-test.jsonl.gz --set beta=0.1 --set out=runs/hh/dpo

`data` is a run dir (its feedback.db; or `db` = URL) or any preference file `rlhfkit feedback
import` reads (rlhfkit, HH, TRL, OASST): each K-way ranking gives its K(K-1)/2 (chosen,
rejected) pairs, ties none. Held-out pairs come from `eval_data` or from `eval_fraction` of the
prompts (all pairs of a held-out prompt are held out). A pair is the prompt's messages through
the chat template, then each response as the assistant turn (its end-of-turn token included).

The loss (`loss`, a name in `rlhfkit.losses.DPO_LOSSES`: "sigmoid" = DPO, "ipo" = IPO) sees
the policy's minus the reference's log-probability of each response. The reference (`ref_model`,
default `model`) runs once, before training, over every pair; its log-probabilities are cached
in `ref_cache` (default out/ref_logprobs) under a hash of its weights and of the token ids, so a
resumed or repeated run skips it, and no reference copy stays in memory: with `lora = true` the
reference is the loaded base, which is the policy with its adapters off. Chosen and rejected go
through one forward: the prompt runs once per distinct prompt and its KV cache is shared by the
pair's two responses, and the LM head runs on response tokens only (`PairLM`). Checkpoints and
SIGKILL-exact resume behave as in the other stages. Metrics: dpo/loss, dpo/reward_accuracy,
dpo/margin, dpo/chosen_reward, dpo/rejected_reward (reward = beta * logratio), the same under
eval/ on the held-out pairs (also out/eval.json); out/ is a plain HF model dir (LoRA merged).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhfkit import distributed
from rlhfkit.threads import Tuner
from rlhfkit.config import key, save_config
from rlhfkit.files import UserError, atomic_write_text
from rlhfkit.models import kv_cache_kwargs, output_kv_cache
from rlhfkit.training import (Checkpoints, MetricsLog, Timer, backward_micro_batches, batch_indices, clip_grad_norm,
                              make_optimizer, micro_batch_split, progress, set_lr)


@dataclass
class Config:
    out: str = key("runs/demo/dpo", "output directory (an HF model dir)")
    model: str = key("runs/demo/sft", "policy init: model dir, .gguf file or hub id")
    ref_model: str = key("", "reference policy (default: `model`; with lora, the base with adapters off)")
    data: str = key("", "a run dir (its feedback.db) or a preference file (rlhfkit/hh/trl/oasst JSONL)")
    db: str = key("", "feedback store URL or SQLite path (instead of DATA/feedback.db)")
    format: str = key("auto", "preference file format: auto, rlhfkit, hh, trl, oasst")
    source: str = key("", "only store rankings from this source: human, simulated, imported, arena")
    eval_data: str = key("", "held-out preferences, as `data` (default: hold out eval_fraction of the prompts)")
    eval_fraction: float = key(0.1, "share of prompts held out when eval_data is empty")
    loss: str = key("sigmoid", "sigmoid (DPO, Rafailov et al. 2023) or ipo (Azar et al. 2023)")
    beta: float = key(0.1, "strength of the pull to the reference (DPO's beta, IPO's tau)")
    ref_cache: str = key("", "directory for cached reference log-probs (default: OUT/ref_logprobs)")
    seed: int = key(0, "seed for data order, held-out split and LoRA init")
    max_prompt_len: int = key(256, "prompt tokens kept (its end)")
    max_seq_len: int = key(512, "prompt + response tokens; longer responses lose their end")
    max_steps: int = key(0, "optimizer steps (0: use epochs)")
    epochs: float = key(1.0, "passes over the pairs when max_steps is 0")
    batch_size: int = key(32, "pairs per optimizer step, summed over all processes")
    micro_batch_size: int = key(8, "pairs per forward pass (2 rows each); the rest accumulates")
    eval_batch_size: int = key(16, "pairs per forward pass for the reference and held-out passes")
    learning_rate: float = key(5e-6, "peak learning rate (AdamW); ~1e-4 with lora")
    min_lr_ratio: float = key(0.1, "the cosine decay ends at this fraction of the peak")
    warmup_steps: int = key(10, "linear warmup steps")
    weight_decay: float = key(0.0, "AdamW weight decay on matrices")
    grad_clip: float = key(1.0, "clip the global gradient norm (0: off)")
    lora: bool = key(False, "train LoRA adapters only (merged into the saved model)")
    lora_r: int = key(16, "LoRA rank")
    lora_alpha: int = key(32, "LoRA alpha (scale = alpha / r)")
    lora_dropout: float = key(0.0, "LoRA dropout")
    eval_every: int = key(50, "evaluate on the held-out pairs every N steps (0: only at the end)")
    save_every: int = key(100, "checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = key(2, "checkpoints kept on disk")
    threads: int = key(0, "CPU threads per process (0: 1 or all cores, whichever a start-up probe finds faster)")
    log_every: int = key(5, "write metrics every N steps")


# ------------------------------------------------------------------------------ data

def load_pairs(cfg: Config) -> tuple[list[dict], list[dict]]:
    """-> (train, held-out) pairs {"messages", "chosen", "rejected"}; the split is by prompt."""
    from rlhfkit.feedback.formats import ranking_pairs
    from rlhfkit.rankings import load_rankings, split_by_prompt, usable

    rankings = usable(load_rankings(cfg.data, cfg.db, cfg.format, cfg.source or None))
    if cfg.eval_data:
        train, held = rankings, usable(load_rankings(cfg.eval_data, "", cfg.format, cfg.source or None))
    else:
        train, held = split_by_prompt(rankings, cfg.eval_fraction, cfg.seed)

    def pairs(rs):
        return [{"messages": r["messages"], "chosen": c, "rejected": j} for r in rs for c, j in ranking_pairs(r["responses"])]

    return pairs(train), pairs(held)


def encode_pair(tokenizer, messages: list[dict], chosen: str, rejected: str, max_prompt_len: int,
                max_seq_len: int) -> tuple[list[int], list[int], list[int]]:
    """-> (prompt ids, chosen ids, rejected ids). The prompt is the chat template's text up to the
    assistant header; a response is what the template adds after it for that assistant turn
    (content and end-of-turn), tokenised on its own as TRL does. The prompt keeps its end."""
    def render(msgs, gen):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    prompt = render(messages, True)
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"][-max_prompt_len:]
    out = []
    for text in (chosen, rejected):
        full = render(messages + [{"role": "assistant", "content": text}], False)
        if not full.startswith(prompt):
            raise UserError("chat template is not prefix-stable; cannot separate the response from its prompt")
        out.append(tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"][:max_seq_len - len(p)])
    return p, out[0], out[1]


def collate_pairs(pairs: list[tuple[list[int], list[int], list[int]]], pad_id: int) -> dict:
    """n encoded pairs -> the 2n rows [chosen_0..chosen_{n-1}, rejected_0..rejected_{n-1}]:

    prompt_ids, prompt_mask (U, P): the U distinct prompts, left-padded; prompt_index (2n,): each
    row's prompt; response_ids, response_mask (2n, T): right-padded; lengths (2n,) response tokens.
    """
    distinct: dict[tuple, int] = {}
    index = [distinct.setdefault(tuple(p), len(distinct)) for p, _, _ in pairs]
    prompts, responses = list(distinct), [c for _, c, _ in pairs] + [r for _, _, r in pairs]
    P, T = max(len(p) for p in prompts), max(len(r) for r in responses)
    prompt_ids = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((len(prompts), P), dtype=torch.bool)
    for i, p in enumerate(prompts):
        prompt_ids[i, P - len(p):], prompt_mask[i, P - len(p):] = torch.tensor(p, dtype=torch.long), True
    response_ids = torch.full((len(responses), T), pad_id, dtype=torch.long)
    response_mask = torch.zeros((len(responses), T), dtype=torch.bool)
    for i, r in enumerate(responses):
        response_ids[i, :len(r)], response_mask[i, :len(r)] = torch.tensor(r, dtype=torch.long), True
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "prompt_index": torch.tensor(index * 2),
            "response_ids": response_ids, "response_mask": response_mask,
            "lengths": response_mask.sum(1)}


# ------------------------------------------------------------------------------ model

class PairLM(torch.nn.Module):
    """forward(collate_pairs output) -> (2n,) summed log-probabilities of each row's response.

    The prompt runs once (per distinct prompt) with a KV cache that the pair's two responses then
    attend to, and the LM head runs on response positions only: for a 150-token prompt and two
    50-token responses that is 250 token-forwards instead of 400, and 100 rows of LM head instead
    of 400. The math is the plain forward over [prompt | response] rows (`plain_pair_logprobs`,
    which architectures outside sft.PLAIN_HEAD use); the gradient through the shared K/V sums
    over both rows, as the duplicated forward's would. A module, so DDP can wrap it.
    """

    def __init__(self, lm):
        super().__init__()
        from rlhfkit.stages.sft import TargetLM

        self.lm = lm
        self.fast = TargetLM.supports(lm)
        base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm  # under peft, LoRA is inside
        self.decoder, self.head = base.get_decoder(), base.get_output_embeddings()

    def forward(self, prompt_ids, prompt_mask, prompt_index, response_ids, response_mask, **_):
        if not self.fast:
            return plain_pair_logprobs(self.lm, prompt_ids, prompt_mask, prompt_index, response_ids, response_mask)
        ppos = (prompt_mask.long().cumsum(1) - 1).clamp(min=0)  # positions count real tokens only
        pre = self.decoder(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=ppos, use_cache=True)
        hidden = pre.last_hidden_state[prompt_index, -1:]  # the last prompt position predicts token 0
        T = response_ids.shape[1]
        if T > 1:  # response tokens 0..T-2 predict tokens 1..T-1
            cache = output_kv_cache(pre)
            cache.batch_select_indices(prompt_index)  # (U, ..) -> (2n, ..), differentiable
            rpos = prompt_mask.sum(1)[prompt_index, None] + torch.arange(T - 1)
            out = self.decoder(input_ids=response_ids[:, :-1], position_ids=rpos,
                               **kv_cache_kwargs(self.decoder, cache),
                               attention_mask=torch.cat([prompt_mask[prompt_index], response_mask[:, :-1]], 1),
                               use_cache=True)
            hidden = torch.cat([hidden, out.last_hidden_state], 1)
        logits = self.head(hidden[response_mask]).float()  # (targets, V): padding never reaches the head
        token_lp = -torch.nn.functional.cross_entropy(logits, response_ids[response_mask], reduction="none")
        rows = torch.arange(len(response_ids))[:, None].expand_as(response_mask)[response_mask]
        return torch.zeros(len(response_ids), dtype=token_lp.dtype).index_add(0, rows, token_lp)


def plain_pair_logprobs(lm, prompt_ids, prompt_mask, prompt_index, response_ids, response_mask) -> torch.Tensor:
    """The same (2n,) sums from one ordinary forward over the 2n [prompt | response] rows."""
    from rlhfkit.losses import masked_sum, token_logprobs

    ids = torch.cat([prompt_ids[prompt_index], response_ids], 1)
    attn = torch.cat([prompt_mask[prompt_index], response_mask], 1)
    pos = (attn.long().cumsum(1) - 1).clamp(min=0)
    T = response_ids.shape[1]
    logits = lm(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=T + 1, use_cache=False).logits
    return masked_sum(token_logprobs(logits[:, :-1], response_ids), response_mask, dim=1)


@torch.no_grad()
def all_pair_logprobs(pair_lm: PairLM, encoded: list, pad_id: int, batch_size: int, desc: str = "") -> torch.Tensor:
    """(N, 2) [chosen, rejected] log-probabilities of every pair, the ranks sharing the work
    (a progress bar named `desc`, if given)."""
    import torch.distributed as dist

    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    out = torch.zeros(len(encoded), 2, dtype=torch.float64)
    mine = list(range(rank, len(encoded), world))
    bar = progress(len(mine), 0, desc) if desc else None
    for i in range(0, len(mine), batch_size):
        idx = mine[i:i + batch_size]
        lp = pair_lm(**collate_pairs([encoded[j] for j in idx], pad_id))
        out[idx] = lp.view(2, -1).T.double()
        if bar is not None:
            bar.update(len(idx))
    if bar is not None:
        bar.close()
    if dist.is_initialized():
        dist.all_reduce(out)  # each row is non-zero on one rank only
    return out.float()


def reference_logprobs(ref_lm, encoded: list, pad_id: int, batch_size: int, cache_dir: Path) -> tuple[torch.Tensor, bool]:
    """-> ((N, 2) reference log-probs, whether they came from the cache). The cache file is named by
    a hash of the reference's weights and of every pair's token ids: any change recomputes."""
    h = hashlib.blake2b(b"rlhfkit-dpo-ref-v1", digest_size=16)
    for name, t in sorted(ref_lm.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().view(torch.uint8).numpy() if t.numel() else b"")
    h.update(json.dumps(encoded).encode())
    path = cache_dir / f"{h.hexdigest()}.pt"
    if path.is_file():
        return torch.load(path), True
    was_training = ref_lm.training
    ref_lm.eval()
    ref = all_pair_logprobs(PairLM(ref_lm), encoded, pad_id, batch_size, desc="dpo reference")
    ref_lm.train(was_training)
    if distributed.is_main():
        import io

        from rlhfkit.files import atomic_write_bytes

        buf = io.BytesIO()
        torch.save(ref, buf)
        atomic_write_bytes(path, buf.getvalue())
    distributed.barrier()
    return ref, False


# ------------------------------------------------------------------------------ stage

def run(cfg: Config) -> None:
    from rlhfkit.losses import DPO_LOSSES
    from rlhfkit.models import add_lora, count_parameters, eos_token_ids, load_causal_lm, load_tokenizer, save_model

    rank, world = distributed.setup()
    if cfg.loss not in DPO_LOSSES:
        raise UserError(f"dpo: unknown loss {cfg.loss!r} (one of {', '.join(DPO_LOSSES)})")
    if cfg.beta <= 0:
        raise UserError(f"dpo: beta must be > 0, got {cfg.beta}")
    if not 0 < cfg.max_prompt_len < cfg.max_seq_len:
        raise UserError(f"dpo: need 0 < max_prompt_len ({cfg.max_prompt_len}) < max_seq_len ({cfg.max_seq_len})")
    micro_batch_split(cfg.batch_size, cfg.micro_batch_size, world)
    out = Path(cfg.out)
    tokenizer = load_tokenizer(cfg.model)
    if not tokenizer.chat_template:
        raise UserError(f"{cfg.model}: the tokenizer has no chat template")

    # ---- data: every pair encoded once; train pairs first, then held-out ones (one reference pass)
    train, held = load_pairs(cfg)
    if not train:
        raise UserError(f"dpo: no training pairs left after holding out eval_fraction={cfg.eval_fraction}")
    encoded = [encode_pair(tokenizer, p["messages"], p["chosen"], p["rejected"], cfg.max_prompt_len, cfg.max_seq_len)
               for p in train + held]
    n_train = len(train)
    pad = tokenizer.pad_token_id
    max_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * n_train / cfg.batch_size))

    # ---- model; the reference's log-probs before any training (or a resume) touches the weights
    model = load_causal_lm(cfg.model)
    model.generation_config.eos_token_id = eos_token_ids(model, tokenizer)
    distributed.set_threads(model, cfg.threads)
    ref_lm = load_causal_lm(cfg.ref_model) if cfg.ref_model and cfg.ref_model != cfg.model else model
    ref_timer = Timer()
    ref_lp, cached = reference_logprobs(ref_lm, encoded, pad, cfg.eval_batch_size,
                                        Path(cfg.ref_cache) if cfg.ref_cache else out / "ref_logprobs")
    ref_s = ref_timer.lap()  # logged with the first step: the one-off cost the cache saves
    del ref_lm
    torch.manual_seed(cfg.seed)
    if cfg.lora:  # the frozen base is the reference: adapters off = the model ref_lp came from
        model = add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
    model.train()
    optimizer = make_optimizer(model, cfg.learning_rate, cfg.weight_decay)
    ckpts = Checkpoints(out, cfg.keep_checkpoints, config=cfg)
    step, _ = ckpts.resume(model, optimizer)
    pair_lm = PairLM(model)
    ddp_model = distributed.wrap_ddp(pair_lm)
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.toml", "dpo")
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"dpo: {count_parameters(model) / 1e6:.2f}M parameters ({trainable / 1e6:.2f}M trainable), "
              f"{n_train} training pairs, {len(held)} held out, loss {cfg.loss}, beta {cfg.beta}, {max_steps} steps, "
              f"reference log-probs {'from the cache' if cached else 'computed'}, "
              f"{world} process(es) x {torch.get_num_threads()} thread(s)" + (f", resuming at step {step}" if step else ""))
    log = MetricsLog(out, resume_step=step)
    loss_named = DPO_LOSSES[cfg.loss]

    def pair_loss(logps: torch.Tensor, ref: torch.Tensor, lengths: torch.Tensor):
        n = len(ref)  # logps: (2n,) chosen rows then rejected rows; ref: (n, 2)
        return loss_named(logps[:n] - ref[:, 0], logps[n:] - ref[:, 1], cfg.beta, lengths[:n], lengths[n:])

    def loss_fn(m, mb):
        b = collate_pairs([encoded[i] for i in mb["idx"]], pad)
        loss, metrics = pair_loss(m(**b), ref_lp[mb["idx"]], b["lengths"])
        metrics.pop("dpo/loss")  # the step's loss is the weighted sum backward_micro_batches returns
        return loss * mb["weight"], metrics  # micro-batches are equal-sized: their metrics average

    def evaluate() -> dict:
        model.eval()
        lp = all_pair_logprobs(pair_lm, encoded[n_train:], pad, cfg.eval_batch_size)  # every rank: all of them
        model.train()
        lengths = torch.tensor([len(e[1]) for e in encoded[n_train:]] + [len(e[2]) for e in encoded[n_train:]])
        _, m = pair_loss(torch.cat([lp[:, 0], lp[:, 1]]), ref_lp[n_train:], lengths)
        return {k.replace("dpo/", "eval/"): v for k, v in m.items()}

    bar = progress(max_steps, step, "dpo")
    tuner = Tuner.auto()  # threads = 0: re-probes 1 vs all threads when the step rate jumps
    timer = Timer()
    metrics: dict = {}
    while step < max_steps:
        lr = set_lr(optimizer, step, cfg.learning_rate, cfg.warmup_steps, max_steps, cfg.min_lr_ratio)
        batch = batch_indices(step, cfg.batch_size, n_train, cfg.seed)
        per_rank = cfg.batch_size // world
        local = batch[rank * per_rank:(rank + 1) * per_rank]
        # each micro-batch's mean over its pairs, weighted by its share of the global batch: every
        # pair weighs the same whichever micro-batch or rank it landed on
        mbs = [{"idx": local[i:i + cfg.micro_batch_size], "weight": len(local[i:i + cfg.micro_batch_size]) / cfg.batch_size}
               for i in range(0, per_rank, cfg.micro_batch_size)]
        loss, mb_metrics = backward_micro_batches(ddp_model, mbs, loss_fn, world)
        loss = distributed.all_reduce_sum(loss)
        grad_norm = clip_grad_norm([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        dt, threads = timer.lap(), torch.get_num_threads()
        # tokens of the 2 x batch_size [prompt | response] sequences, as a plain forward would see them
        tokens = sum(2 * len(encoded[i][0]) + len(encoded[i][1]) + len(encoded[i][2]) for i in batch)
        tuner.tick(dt, tokens)
        metrics = {k: distributed.all_reduce_sum(v) / world for k, v in mb_metrics.items()}
        metrics.update({"dpo/loss": loss, "train/lr": lr, "train/grad_norm": grad_norm, "time/step_s": dt,
                        "time/tokens_per_s": tokens / dt, "time/pairs_per_s": cfg.batch_size / dt,
                        "time/threads": threads})
        if ref_s is not None:
            metrics["time/ref_s"], ref_s = ref_s, None
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", acc=f"{metrics['dpo/reward_accuracy']:.2f}", refresh=False)
        if ((cfg.eval_every and step % cfg.eval_every == 0) or step == max_steps) and held:
            metrics.update(evaluate())
        if step % cfg.log_every == 0 or step == max_steps or "eval/loss" in metrics or "time/ref_s" in metrics:
            log.log(step, metrics)
        if (cfg.save_every and step % cfg.save_every == 0) or step == max_steps:
            ckpts.save(step, model, optimizer)
        distributed.barrier()
        timer.lap()
    bar.close()

    final = metrics if "eval/loss" in metrics or not held else evaluate()  # a resume at max_steps
    if distributed.is_main():
        save_model(model, tokenizer, out)
        if held:
            atomic_write_text(out / "eval.json", json.dumps(
                {"step": step, "pairs": len(held), **{k: float(f"{v:.7g}") for k, v in final.items() if k.startswith("eval/")}},
                indent=1) + "\n")
            print(f"dpo: held-out reward accuracy {final['eval/reward_accuracy']:.3f}, "
                  f"margin {final['eval/margin']:.3f} over {len(held)} pairs")
        print(f"dpo: done at step {step} -> {out}")
    distributed.barrier()
