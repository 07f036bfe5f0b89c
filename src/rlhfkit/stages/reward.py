"""Train a reward model from rankings: pairs, K-way rankings, ensembles.

    rlhfkit reward --set model=runs/demo/sft --set data=runs/demo --set out=runs/demo/rm
    rlhfkit reward --set model=~/.cache/rlhfkit/models/smollm2-135m-instruct --set lora=true \
                   --set data=hh-rlhf.jsonl.gz --set ensemble=3 --set out=runs/hh/rm

`model` is any causal LM (an SFT output, an HF dir, a .gguf file, a hub id) or a reward model
to train further; it becomes an `AutoModelForSequenceClassification` with one output (a new
score head on the last non-pad token). `data` is a run dir (its feedback.db; or `db` = URL) or
any preference file `rlhfkit feedback import` reads (rlhfkit, HH, TRL, OASST). The RM reads
the prompt's messages plus the response as the assistant turn, through the chat template.

A batch is whole rankings, packed: the tokens a ranking's K responses share (the prompt, and any
common start of the responses) run once, each response's own tokens once, the micro-batch's
rankings side by side in one sequence with no padding, attention keeping each response to its
prompt and itself (`RankingScorer`); the score head reads each response's last hidden state (no
LM head). With `micro_batch_size = 0` the step's rankings are grouped into the fewest forward
passes of at most `micro_batch_tokens` tokens (`plan_micro_batches`).
`loss` picks how the order is scored (`rlhfkit.losses.RM_LOSSES`): "ranking" (InstructGPT:
all K(K-1)/2 pairs, each ranking weighs the same), "pairwise" (every pair weighs the same),
"plackett_luce" (the likelihood of the whole order). Ties carry no order and are skipped;
rankings marked all_bad keep their order (the person still said which was less bad) unless
`skip_all_bad = true`. With `lora = true` the adapters and the whole score head train
(peft modules_to_save), and are merged on save.

`ensemble = N` trains N members (seeds seed..seed+N-1, each on a bootstrap resample of the
training prompts) into out/member-0 ... out/member-{N-1} plus out/ensemble.json; a single model
is out/ itself. After training, each member's scores are normalised to mean 0, std 1 on
`norm_data` (policy samples, JSONL {"prompt" | "messages", "response"}) or, if empty, on the
training responses: the scale is folded into the score head, the shift recorded in
reward_norm.json (see rlhfkit.rewards.rm). The held-out split (`eval_fraction` of the prompts, or
`eval_data`) is scored by the saved model: out/eval.json, out/calibration.png, and `rm/...`
metrics in out/metrics.jsonl. `rlhfkit eval-reward` does the same for any model and data.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhfkit import distributed
from rlhfkit.threads import Tuner
from rlhfkit.config import key, save_config
from rlhfkit.files import UserError, atomic_write_text
from rlhfkit.rankings import bootstrap, load_rankings, prompt_key, split_by_prompt, usable
from rlhfkit.training import (Checkpoints, MetricsLog, Timer, backward_micro_batches, batch_indices, clip_grad_norm,
                              make_optimizer, micro_batch_split, progress, set_lr)


@dataclass
class Config:
    out: str = key("runs/demo/rm", "output directory: an HF model dir, or an ensemble dir")
    model: str = key("runs/demo/sft", "initial model: causal LM dir, .gguf file, hub id, or a reward model")
    data: str = key("", "a run dir (its feedback.db) or a preference file (rlhfkit/hh/trl/oasst JSONL)")
    db: str = key("", "feedback store URL or SQLite path (instead of DATA/feedback.db)")
    format: str = key("auto", "preference file format: auto, rlhfkit, hh, trl, oasst")
    source: str = key("", "only store rankings from this source: human, simulated, imported, arena")
    eval_data: str = key("", "held-out rankings, as `data` (default: hold out eval_fraction of the prompts)")
    eval_fraction: float = key(0.1, "share of prompts held out when eval_data is empty")
    norm_data: str = key("", "policy samples JSONL {prompt|messages, response} to normalise on "
                               "(default: the training responses)")
    loss: str = key("ranking", "ranking, pairwise or plackett_luce")
    ensemble: int = key(1, "number of members (each its own seed and bootstrap resample of prompts)")
    bootstrap: bool = key(True, "ensembles: resample the training prompts with replacement per member")
    skip_all_bad: bool = key(False, "drop rankings marked all_bad (by default their order still trains)")
    seed: int = key(0, "seed for data order, head init, LoRA init, bootstrap (member m uses seed + m)")
    max_seq_len: int = key(512, "tokens per prompt+response; longer inputs lose their start")
    max_steps: int = key(0, "optimizer steps per member (0: use epochs)")
    epochs: float = key(1.0, "passes over the rankings when max_steps is 0")
    batch_size: int = key(16, "rankings per optimizer step, summed over all processes")
    micro_batch_size: int = key(0, "rankings per forward pass (all K responses of each), the rest accumulates; "
                                   "0: grouped under micro_batch_tokens")
    micro_batch_tokens: int = key(4096, "with micro_batch_size = 0, tokens per forward pass (shared prefixes "
                                        "counted once; padded ones for models without the packed forward)")
    learning_rate: float = key(1e-4, "peak learning rate (AdamW)")
    min_lr_ratio: float = key(0.1, "the cosine decay ends at this fraction of the peak")
    warmup_steps: int = key(5, "linear warmup steps")
    weight_decay: float = key(0.0, "AdamW weight decay on matrices")
    grad_clip: float = key(1.0, "clip the global gradient norm (0: off)")
    lora: bool = key(False, "train LoRA adapters + the score head (merged into the saved model)")
    lora_r: int = key(16, "LoRA rank")
    lora_alpha: int = key(32, "LoRA alpha (scale = alpha / r)")
    lora_dropout: float = key(0.0, "LoRA dropout")
    eval_every: int = key(50, "evaluate held-out accuracy every N steps (0: only at the end)")
    eval_batch_size: int = key(32, "responses per forward pass when scoring")
    save_every: int = key(100, "checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = key(2, "checkpoints kept on disk per member")
    threads: int = key(0, "CPU threads per process (0: 1 or all cores, whichever a start-up probe finds faster)")
    log_every: int = key(5, "write metrics every N steps")


# How a micro-batch's mean loss weighs in the global batch: by pairs for "pairwise" (each pair
# weighs the same), by rankings otherwise; then micro-batching never changes the gradient.
UNITS = {"pairwise": lambda k: k * (k - 1) // 2, "ranking": lambda k: 1, "plackett_luce": lambda k: 1}


# ------------------------------------------------------------------------------ data

def read_samples(path: str) -> tuple[list, list[str]]:
    """Policy samples for normalisation: JSONL {"prompt": str | messages, "messages"?, "response" | "responses"}."""
    from rlhfkit.files import read_jsonl

    prompts, responses = [], []
    for i, rec in enumerate(read_jsonl(path), 1):
        msgs = rec.get("messages") or rec.get("prompt")
        resp = rec.get("responses", [rec.get("response")])
        if not msgs or not isinstance(resp, list) or not all(isinstance(x, str) for x in resp):
            raise UserError(f"{path}:{i}: expected {{\"prompt\" (or \"messages\"), \"response\" (or \"responses\")}}")
        prompts += [msgs] * len(resp)
        responses += resp
    return prompts, responses


# ------------------------------------------------------------------------------ model

def build_model(spec: str, pad_id: int):
    """A one-output AutoModelForSequenceClassification: the causal LM's body plus a new score head,
    or an existing reward model as it is (to train further)."""
    from transformers import AutoModelForSequenceClassification

    from rlhfkit.models import _resolve, load_causal_lm, quiet_transformers

    path, gguf = _resolve(spec)
    cfg_file = Path(path) / "config.json"
    archs = json.loads(cfg_file.read_text()).get("architectures") or [] if not gguf and cfg_file.is_file() else []
    if any(a.endswith("ForSequenceClassification") for a in archs):
        quiet_transformers()
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
        if model.config.num_labels != 1:
            raise UserError(f"{spec}: a reward model has one output, this one has {model.config.num_labels}")
    else:
        # build from the config and copy the body: works the same for dirs, .gguf and hub ids,
        # and leaves no GGUF quantizer attached (which would refuse save_pretrained)
        lm = load_causal_lm(spec)
        config = lm.config
        config.architectures, config.num_labels = None, 1
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForSequenceClassification.from_config(config).float()
        getattr(model, model.base_model_prefix).load_state_dict(getattr(lm, lm.base_model_prefix).state_dict())
        del lm
    model.config.pad_token_id = pad_id
    model.config.use_cache = False
    return model


# causal LMs whose ...ForSequenceClassification is body -> last_hidden_state -> score(hidden) read at
# the last non-pad token: the ones the packed forward reproduces exactly
PACKED = {"LlamaForSequenceClassification", "MistralForSequenceClassification",
          "Qwen2ForSequenceClassification", "Qwen3ForSequenceClassification"}
# the plain (padded) forward's fixed cost of a pass in padded tokens, when planning its micro-batches:
# SmolLM2-135M at 1 thread ran 1 x 128 and 8 x 128 tokens at about the same tokens/s (~0.15 s
# apart), so splitting a batch costs little and computing padding costs a lot
PASS_OVERHEAD_TOKENS = 64


def shared_prefix_lengths(rankings: list[list[list[int]]]) -> list[int]:
    """Per ranking: how many leading tokens all K sequences share (the longest common prefix),
    leaving every sequence at least one token of its own (where its score is read)."""
    out = []
    for seqs in rankings:
        first, n = seqs[0], min(len(x) for x in seqs) - 1
        p = 0
        while p < n and all(x[p] == first[p] for x in seqs):
            p += 1
        out.append(p)
    return out


def packed_tokens(ranking: list[list[int]], prefix_len: int) -> int:
    """The tokens a ranking puts in a packed pass: its shared prefix once, then each row's own."""
    return prefix_len + sum(len(x) - prefix_len for x in ranking)


def collate_packed(rankings: list[list[list[int]]], prefix_lens: list[int]) -> dict:
    """n rankings (R sequences in all) -> RankingScorer's packed inputs, one sequence of M real tokens
    laid out ranking by ranking as [shared prefix | row 1's own tokens | ... | row K's]:
    packed_ids, packed_pos (1, M), positions counting from each row's start as in its own forward;
    segments [(q0, q1, keys (K,), mask (q1 - q0, K))] for `llama_fast.rows_attention`: the prefix
    attends causally to itself, a row to its ranking's whole prefix and causally to itself;
    see (M, M) bool, the same attention as one block mask; last (R,) each row's last position,
    rows in ranking order."""
    ids, pos, segments, last, start = [], [], [], [], 0
    for seqs, p in zip(rankings, prefix_lens):
        prefix_keys = torch.arange(start, start + p)
        if p:
            ids += seqs[0][:p]
            pos += range(p)
            segments.append((start, start + p, prefix_keys, torch.ones(p, p, dtype=torch.bool).tril()))
            start += p
        for x in seqs:
            n = len(x) - p
            ids += x[p:]
            pos += range(p, p + n)
            keys = torch.cat([prefix_keys, torch.arange(start, start + n)])
            segments.append((start, start + n, keys, torch.ones(n, p + n, dtype=torch.bool).tril(p)))
            last.append(start + n - 1)
            start += n
    see = torch.zeros((start, start), dtype=torch.bool)
    for q0, q1, keys, mask in segments:
        see[q0:q1, keys] = mask
    return {"packed_ids": torch.tensor([ids]), "packed_pos": torch.tensor([pos]), "segments": segments,
            "see": see, "last": torch.tensor(last)}


class RankingScorer(torch.nn.Module):
    """forward(**collate_packed(...)) -> (R,) scores; forward(input_ids, attention_mask) -> the plain ones.

    A ranking's K sequences share the prompt (HH-RLHF: ~100 of ~135 tokens) and the rows of a
    micro-batch differ in length, so the packed forward runs each ranking's shared prefix once and
    each row's own tokens once, all rankings of the micro-batch in one sequence with no padding
    (every matmul at M rows: on 2 threads the large products run near the machine's peak, where
    several padded passes of fewer rows ran at half of it). Attention goes segment by segment
    (`rl.packed.segment_attention`): a row sees its ranking's prefix and its own earlier tokens.
    The gradient through a shared prefix sums over the K rows that read it, as the duplicated
    forward's would; the score head reads each row's last position. The math is the model's own
    forward over the full rows (tests compare scores and gradients); architectures outside PACKED
    take that plain forward. A module, so DDP can wrap it.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under peft, LoRA is inside
        self.packed = type(base).__name__ in PACKED
        self.decoder = getattr(base, base.base_model_prefix)
        self.head = base.score  # peft: the trained copy (modules_to_save) is what this wrapper calls

    def forward(self, input_ids=None, attention_mask=None, packed_ids=None, packed_pos=None, segments=None,
                see=None, last=None) -> torch.Tensor:
        if input_ids is not None:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()
        from rlhfkit.rl.packed import segment_attention

        with segment_attention(self.decoder.config, segments):
            out = self.decoder(input_ids=packed_ids, position_ids=packed_pos, attention_mask=see[None, None],
                               use_cache=False)
        return self.head(out.last_hidden_state[0, last])[:, 0].float()  # (R, H) -> (R,)


def ranking_inputs(scorer: RankingScorer, rankings: list[list[list[int]]], pad_id: int) -> dict:
    """The forward's inputs for these rankings: packed where the model allows, else plain padded rows."""
    from rlhfkit.rewards.rm import collate_right

    if scorer.packed:
        return collate_packed(rankings, shared_prefix_lengths(rankings))
    input_ids, mask = collate_right([x for r in rankings for x in r], pad_id)
    return {"input_ids": input_ids, "attention_mask": mask}


def plan_micro_batches(rankings: list[list[list[int]]], budget: int, packed: bool = True,
                       overhead: int = PASS_OVERHEAD_TOKENS) -> list[list[int]]:
    """-> groups of ranking indices, one forward pass each, that cover every ranking once; a pass
    holds at most `budget` tokens unless it is one ranking. Which rankings share a pass never
    changes the gradient (each ranking's loss is its own), only float summation order.

    Packed (no padding): a pass costs its real tokens, prefixes once (`packed_tokens`), so the
    plan is the fewest passes: first-fit decreasing (the largest ranking first, each into the
    first pass with room). Plain: a pass costs rows x its longest sequence plus `overhead`; the
    rankings are sorted by length and cut into the contiguous groups of least total cost
    (dynamic programming over the cut points, O(n^2))."""
    if packed:
        cost = [packed_tokens(r, p) for r, p in zip(rankings, shared_prefix_lengths(rankings))]
        groups: list[list[int]] = []
        room: list[int] = []
        for i in sorted(range(len(rankings)), key=lambda i: (-cost[i], i)):
            g = next((g for g in range(len(groups)) if room[g] >= cost[i]), None)
            if g is None:
                groups.append([]), room.append(budget)
                g = len(groups) - 1
            groups[g].append(i)
            room[g] -= cost[i]
        return [sorted(g) for g in groups]
    longest = [max(len(x) for x in r) for r in rankings]
    order = sorted(range(len(rankings)), key=lambda i: (longest[i], i))
    best, cut = [0.0] + [math.inf] * len(order), [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        rows = 0
        for i in range(j - 1, -1, -1):  # the group order[i:j], grown leftwards; its longest is order[j - 1]'s
            rows += len(rankings[order[i]])
            padded = rows * longest[order[j - 1]]
            if padded > budget and i < j - 1:
                break  # larger groups only pad more
            if best[i] + padded + overhead < best[j]:
                best[j], cut[j] = best[i] + padded + overhead, i
    groups, j = [], len(order)
    while j:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


def plain_model(model):
    """The transformers model to save: LoRA merged, the trained score head in place."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


@torch.no_grad()
def normalise(model, ids: list[list[int]], pad_id: int, batch_size: int) -> dict:
    """Fold 1/std into the score head; -> reward_norm.json's content (offset = -mean/std, added by the scorer)."""
    from rlhfkit.rewards.rm import score_ids

    model.eval()
    raw = score_ids(model, ids, pad_id, batch_size)
    mean, std = float(raw.mean()), float(raw.std(correction=0))
    std = std if std > 1e-8 else 1.0  # a constant scorer: shift only
    model.score.weight.div_(std)
    return {"mean": mean, "std": std, "offset": -mean / std, "folded": True, "n": len(ids)}


# ------------------------------------------------------------------------------ stage

def run(cfg: Config) -> None:
    from rlhfkit.losses import RM_LOSSES
    from rlhfkit.models import add_lora, count_parameters, load_tokenizer, save_model
    from rlhfkit.rewards.rm import ENSEMBLE_FILE, NORM_FILE, RewardScorer, encode, pad_id_for, score_ids
    from rlhfkit.stages.eval_reward import evaluate_reward_model, ranking_metrics, summary

    rank, world = distributed.setup()
    if cfg.loss not in RM_LOSSES:
        raise UserError(f"reward: unknown loss {cfg.loss!r} (one of {', '.join(RM_LOSSES)})")
    if cfg.ensemble < 1:
        raise UserError(f"reward: ensemble must be >= 1, got {cfg.ensemble}")
    micro_batch_split(cfg.batch_size, cfg.micro_batch_size, world)
    out = Path(cfg.out)
    tokenizer = load_tokenizer(cfg.model)
    if not tokenizer.chat_template:
        raise UserError(f"{cfg.model}: the tokenizer has no chat template (the RM renders prompt + response with it)")

    # ---- data: whole rankings, encoded once (each response as its own prompt+response sequence)
    rankings = usable(load_rankings(cfg.data, cfg.db, cfg.format, cfg.source or None), cfg.skip_all_bad)
    if cfg.eval_data:
        train, eval_set = rankings, usable(load_rankings(cfg.eval_data, "", cfg.format, cfg.source or None))
    else:
        train, eval_set = split_by_prompt(rankings, cfg.eval_fraction, cfg.seed)
    if not train:
        raise UserError(f"reward: no training rankings left after holding out eval_fraction={cfg.eval_fraction}")

    def enc(rs: list[dict]) -> list[list[list[int]]]:
        flat = encode(tokenizer, [r["messages"] for r in rs for _ in r["responses"]],
                      [t for r in rs for t in r["responses"]], cfg.max_seq_len)
        it = iter(flat)
        return [[next(it) for _ in r["responses"]] for r in rs]

    encoded, eval_enc = enc(train), enc(eval_set)
    if cfg.norm_data:
        norm_ids = encode(tokenizer, *read_samples(cfg.norm_data), cfg.max_seq_len)
    else:  # each distinct training (prompt, response) once
        seen = {(prompt_key(r), t): ids for r, e in zip(train, encoded) for t, ids in zip(r["responses"], e)}
        norm_ids = list(seen.values())
    pad_id = pad_id_for(tokenizer, [x for e in encoded + eval_enc for x in e] + norm_ids)
    if pad_id != tokenizer.pad_token_id:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_id)
    tokenizer.model_max_length = cfg.max_seq_len  # the scorer truncates as training did
    by_prompt: dict[str, list[int]] = {}
    for i, r in enumerate(train):
        by_prompt.setdefault(prompt_key(r), []).append(i)
    groups = list(by_prompt.values())

    rm_loss = RM_LOSSES[cfg.loss]
    unit = UNITS[cfg.loss]
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.toml", "reward")
        ks = sorted({len(r["responses"]) for r in train})
        print(f"reward: {len(train)} training rankings (K in {ks}) over {len(groups)} prompts, "
              f"{len(eval_set)} held out; "
              f"loss {cfg.loss}, {cfg.ensemble} member(s), {world} process(es)")

    # each micro-batch's accuracy weighed as its loss is (by pairs or rankings); the metrics of
    # backward_micro_batches would weigh every micro-batch the same, so they are collected here
    accuracy_shares: list[float] = []

    def loss_fn(scorer, mb):
        scores = scorer(**mb["inputs"])
        loss, metrics = rm_loss(scores, mb["lengths"])
        accuracy_shares.append(metrics["rm/accuracy"] * mb["weight"])
        return loss * mb["weight"], {}

    @torch.no_grad()
    def held_out(model) -> dict:
        model.eval()
        flat = score_ids(model, [x for e in eval_enc for x in e], pad_id, cfg.eval_batch_size)
        model.train()
        metrics, _ = ranking_metrics(list(flat.split([len(e) for e in eval_enc])))
        return {k: metrics[k] for k in ("rm/accuracy", "rm/top1_accuracy", "rm/ece")}

    # ---- members: one after another, each a complete HF model dir with its normalisation
    member_dirs = [out] if cfg.ensemble == 1 else [out / f"member-{i}" for i in range(cfg.ensemble)]
    for member, mdir in enumerate(member_dirs):
        seed = cfg.seed + member
        idx = bootstrap(groups, seed) if (cfg.ensemble > 1 and cfg.bootstrap) else list(range(len(train)))
        data = [encoded[i] for i in idx]
        max_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(data) / cfg.batch_size))
        torch.manual_seed(seed)  # score head and LoRA init differ per member
        model = build_model(cfg.model, pad_id)
        if cfg.lora:
            model = add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, task_type="SEQ_CLS",
                             modules_to_save=["score"])  # the fresh score head trains in full
        model.train()
        distributed.set_threads(model, cfg.threads)
        optimizer = make_optimizer(model, cfg.learning_rate, cfg.weight_decay)
        ckpts = Checkpoints(mdir, cfg.keep_checkpoints, config=cfg)
        step, _ = ckpts.resume(model, optimizer)
        scorer = RankingScorer(model)
        ddp_scorer = distributed.wrap_ddp(scorer)
        if distributed.is_main() and member == 0:
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            print(f"reward: {count_parameters(model) / 1e6:.2f}M parameters ({trainable / 1e6:.2f}M trainable), "
                  f"{max_steps} steps per member" + (f", resuming at step {step}" if step else ""))
        log = MetricsLog(mdir, resume_step=step)
        bar = progress(max_steps, step, "reward" if cfg.ensemble == 1 else f"reward[{member}]")
        tuner = Tuner.auto()  # threads = 0: re-probes 1 vs all threads when the step rate jumps
        timer, train_s, cpu_t = Timer(), 0.0, time.process_time()
        while step < max_steps:
            lr = set_lr(optimizer, step, cfg.learning_rate, cfg.warmup_steps, max_steps, cfg.min_lr_ratio)
            batch = [data[i] for i in batch_indices(step, cfg.batch_size, len(data), seed)]
            total_units = sum(unit(len(r)) for r in batch)
            per_rank = cfg.batch_size // world
            local = batch[rank * per_rank:(rank + 1) * per_rank]
            if cfg.micro_batch_size:
                passes = [range(i, i + cfg.micro_batch_size) for i in range(0, per_rank, cfg.micro_batch_size)]
            else:
                passes = plan_micro_batches(local, cfg.micro_batch_tokens, packed=scorer.packed)
            mbs = []
            for g in passes:
                part = [local[i] for i in g]
                mbs.append({"inputs": ranking_inputs(scorer, part, pad_id), "lengths": [len(r) for r in part],
                            "weight": sum(unit(len(r)) for r in part) / total_units})
            accuracy_shares.clear()
            loss, _ = backward_micro_batches(ddp_scorer, mbs, loss_fn, world)
            loss = distributed.all_reduce_sum(loss)
            grad_norm = clip_grad_norm([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            dt, threads, cpu_dt = timer.lap(), torch.get_num_threads(), time.process_time() - cpu_t
            train_s += dt
            tuner.tick(dt, sum(len(r) for r in batch))
            accuracy = distributed.all_reduce_sum(sum(accuracy_shares))  # the ranks' shares add up
            metrics = {"train/loss": loss, "train/accuracy": accuracy, "train/lr": lr,
                       "train/grad_norm": grad_norm, "time/step_s": dt, "time/step_cpu_s": cpu_dt, "time/train_s": train_s,
                       "time/responses_per_s": sum(len(r) for r in batch) / dt, "time/threads": threads}
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", acc=f"{metrics['train/accuracy']:.2f}", refresh=False)
            periodic = cfg.eval_every and step % cfg.eval_every == 0 and step < max_steps  # the last: below
            if periodic and eval_enc and distributed.is_main():
                metrics.update(held_out(model))
            if step % cfg.log_every == 0 or step == max_steps or "rm/accuracy" in metrics:
                log.log(step, metrics)
            if (cfg.save_every and step % cfg.save_every == 0) or step == max_steps:
                ckpts.save(step, model, optimizer)
            distributed.barrier()
            timer.lap()
            cpu_t = time.process_time()
        bar.close()

        if distributed.is_main():
            plain = plain_model(model)
            norm = normalise(plain, norm_ids, pad_id, cfg.eval_batch_size)
            save_model(plain, tokenizer, mdir)
            atomic_write_text(mdir / NORM_FILE, json.dumps(norm, indent=1) + "\n")
            print(f"reward: member {member} done at step {step}, normalised with mean {norm['mean']:.4f} "
                  f"std {norm['std']:.4f} over {norm['n']} responses -> {mdir}")
        del model, scorer, ddp_scorer, optimizer
        distributed.barrier()

    # ---- the set, then the held-out evaluation of what was saved (as RL will load it)
    if distributed.is_main():
        if cfg.ensemble > 1:
            atomic_write_text(out / ENSEMBLE_FILE, json.dumps({
                "members": [d.name for d in member_dirs], "seeds": [cfg.seed + i for i in range(cfg.ensemble)],
                "bootstrap": cfg.bootstrap, "loss": cfg.loss}, indent=1) + "\n")
        else:  # an earlier ensemble in the same dir would shadow this model in RewardScorer.load
            (out / ENSEMBLE_FILE).unlink(missing_ok=True)
        if eval_set:
            final = evaluate_reward_model(RewardScorer.load(out), eval_set, out, cfg.eval_batch_size,
                                          title=f"reward model {out} ({len(eval_set)} held-out rankings)",
                                          extra={"model": cfg.model, "data": cfg.data,
                                                 "eval_data": cfg.eval_data or None})
            _log_final(out / "metrics.jsonl", max_steps, final)
            print(f"reward: held-out {summary(final)}")
        print(f"reward: done -> {out}")
    distributed.barrier()


def _log_final(path: Path, step: int, metrics: dict) -> None:
    """Append the final eval line; a rerun replaces the previous one instead of adding a second."""
    lines = path.read_text().splitlines() if path.exists() else []
    keep = [ln for ln in lines if ln and not (json.loads(ln).get("step") == step and "rm/pairs" in json.loads(ln))]
    rounded = {k: float(f"{v:.7g}") if isinstance(v, float) else v for k, v in metrics.items()}
    atomic_write_text(path, "".join(ln + "\n" for ln in keep) + json.dumps({"step": step, **rounded}) + "\n")
