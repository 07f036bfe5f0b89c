"""`rlhfkit eval`: checkpoints against a baseline: judged win rate, KL, diversity, arena verdict.

    rlhfkit eval --set models=runs/demo/sft,runs/demo/rl --set baseline=runs/demo/sft \\
                 --set prompts=runs/demo/world/prompts_jokes_ood.jsonl \\
                 --set judge=rlhfkit.rewards.gold:joke --set out=runs/demo/eval/jokes_ood

Each model answers every prompt `samples_per_prompt` times; the judge scores each answer
(`module:function` fn(prompt, response) -> float, `rm:PATH` a reward model, or `math`, the
verifier, for prompts with an `answer`). Writes into `out`:

  samples.jsonl   {"model", "prompt", "sample", "response", "score"}, sample = 0..n-1
  eval.json       {model: {metrics}}, the metrics below
  config.toml     the resolved config

Per model (the baseline included, as the reference line):
- `win_rate`: the share of pairs (this model's sample i, the baseline's sample i of the
  same prompt), over all prompts and i, that the judge scores higher; a tie counts 1/2.
  `win_rate_ci` is a 95% percentile bootstrap interval over prompts (`bootstrap`
  resamples, seeded): prompts are the unit the evaluation sampled, the n pairs of a prompt
  are not independent.
- `judge_mean`; `accuracy` (share correct) when the judge includes `math`;
  `length_mean`: response tokens (eos included) per sample.
- `kl_to_baseline`: KL(model || baseline) in nats per response, the k1 estimator
  mean_i [log p_model(y_i) - log p_baseline(y_i)] over the model's own samples y_i, both
  distributions at the sampling temperature (1 for greedy). Unbiased but noisy: a single
  sample's term may be negative. Reported only when the two share a tokenizer.
- diversity: `distinct_1`, `distinct_2` (distinct word n-grams / all word n-grams over all
  the model's samples, words split on white space; Li et al. 2016, "A Diversity-Promoting
  Objective Function for Neural Conversation Models"); `self_bleu` (Zhu et al. 2018,
  Texygen): the BLEU-4 of each sample against the other samples of its prompt as references,
  averaged (nltk's sentence_bleu on white-space words, uniform weights, smoothing method 1;
  needs samples_per_prompt >= 2); `distinct_answers`: distinct responses per prompt (white
  space normalised), and for `math` `distinct_final_answers`, distinct final numbers.
- the people's verdict, when `db` names a feedback store whose arena page rated these
  checkpoints: `arena_rating` (Bradley-Terry, Elo scale) with `arena_ci`, `arena_games`,
  and `people_win_rate` / `people_games` over the arena votes between this model and the
  baseline (ties 1/2).

Deterministic: generate calls of `batch_size` rows, prompt-major, each seeded by (seed,
call index), the same for every model (common random numbers: the models' samples differ by
the models, not by the dice); the same config gives the same samples.jsonl.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import warnings
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.config import key
from rlhfkit.files import UserError


@dataclass
class Config:
    models: list[str] = key([], "model dirs to evaluate (the baseline among them)")
    baseline: str = key("", "the model the others are compared with (default: the first of models)")
    prompts: str = key("", "prompts JSONL: {'prompt': str} or {'messages': [...]}; math needs 'answer'")
    judge: str = key("", "module:function fn(prompt, response) -> float, rm:PATH, or math")
    samples_per_prompt: int = key(4, "samples per prompt and model (>= 2 for self_bleu)")
    max_new_tokens: int = key(64, "response length limit in tokens")
    temperature: float = key(1.0, "sampling temperature (0: greedy)")
    top_p: float = key(1.0, "nucleus sampling threshold")
    seed: int = key(0, "seed for sampling and the bootstrap")
    max_prompts: int = key(0, "evaluate only the first N prompts (0: all)")
    batch_size: int = key(32, "rows per generate call (changing it changes the samples)")
    bootstrap: int = key(1000, "bootstrap resamples for win_rate_ci")
    db: str = key("", "feedback store (SQLite path or URL) whose arena ratings give the people's verdict")
    out: str = key("runs/demo/eval", "output directory (samples.jsonl, eval.json, config.toml)")


# ----------------------------------------------------------------------------- metrics (pure)


def pair_wins(scores: list[list[float]], baseline: list[list[float]]) -> list[float]:
    """Per prompt, the mean over i of [scores[p][i] > baseline[p][i]] (ties 1/2): (P,) in [0, 1]."""
    return [statistics.fmean(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(s, t))
            for s, t in zip(scores, baseline)]


def win_rate(scores: list[list[float]], baseline: list[list[float]]) -> float:
    """Share of (sample i of prompt p) pairs the judge scores higher than the baseline's, ties 1/2.

    Every prompt has the same n samples, so the mean of the per-prompt means is the mean over
    all pairs."""
    return statistics.fmean(pair_wins(scores, baseline))


def bootstrap_ci(per_prompt: list[float], resamples: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `per_prompt`, resampling prompts with replacement."""
    import numpy as np

    x = np.asarray(per_prompt, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct word n-grams / all word n-grams over `texts` (words split on white space)."""
    grams = [tuple(w[i:i + n]) for t in texts for w in [t.split()] for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def self_bleu(groups: list[list[str]]) -> float | None:
    """Mean BLEU-4 of each text against the other texts of its group (None: no group has two).

    nltk's sentence_bleu on white-space words, weights (1/4,)*4, smoothing method 1 (Chen and
    Cherry 2014), as Texygen's Self-BLEU uses it; an empty text scores 0."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    smooth = SmoothingFunction().method1
    scores = []
    with warnings.catch_warnings():  # nltk warns on every zero n-gram count of short texts
        warnings.simplefilter("ignore")
        for group in groups:
            words = [t.split() for t in group]
            if len(words) < 2:
                continue
            for i, hyp in enumerate(words):
                refs = [w for j, w in enumerate(words) if j != i and w]
                scores.append(sentence_bleu(refs, hyp, weights=(0.25,) * 4, smoothing_function=smooth)
                              if hyp and refs else 0.0)
    return statistics.fmean(scores) if scores else None


def distinct_per_prompt(groups: list[list]) -> float:
    """Mean number of distinct items per group (responses, or final answers)."""
    return statistics.fmean(len(set(g)) for g in groups)


def people_verdict(rankings: list[dict], models: list[str], baseline: str, bootstrap: int = 200) -> dict[str, dict]:
    """Arena ratings (feedback.stats.arena_ratings) and head-to-head vote shares against the
    baseline, for the store's checkpoints that name one of `models` (same path)."""
    from rlhfkit.feedback.stats import arena_ratings

    def same(a: str, b: str) -> bool:
        return a == b or Path(a).resolve() == Path(b).resolve()

    ratings = arena_ratings(rankings, bootstrap=bootstrap)
    out: dict[str, dict] = {}
    for m in models:
        name = next((k for k in ratings if same(k, m)), None)
        if name is None:
            continue
        r = ratings[name]
        out[m] = {"arena_rating": r["rating"], "arena_ci": [r["low"], r["high"]], "arena_games": r["games"]}
        wins = []
        for g in rankings:
            if g["kind"] != "arena" or len(g.get("models") or []) != 2:
                continue
            first, second = g["models"]  # best first; a tie's order means nothing
            if same(first, m) and same(second, baseline) and not same(m, baseline):
                wins.append(0.5 if g["tie"] else 1.0)
            elif same(first, baseline) and same(second, m) and not same(m, baseline):
                wins.append(0.5 if g["tie"] else 0.0)
        if wins:
            out[m].update(people_win_rate=statistics.fmean(wins), people_games=len(wins))
    return out


# ----------------------------------------------------------------------------- model passes


def _seed(*parts) -> int:
    """A generator seed from coordinates (no collisions between nearby ones, unlike seed * K + i)."""
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:15], 16)


def sample_model(model, tokenizer, prompt_ids: list[list[int]], n: int, *, max_new_tokens: int, temperature: float,
                 top_p: float, batch_size: int, seed: int, eos_ids: list[int], bar=None) -> list[dict]:
    """n samples per prompt, prompt-major: [{"p", "i", "text", "tokens"}] (tokens: the response
    ids through eos, the sampler's `logprob` sum beside them)."""
    import torch

    from rlhfkit.generation import generate

    rows = [(p, i) for p in range(len(prompt_ids)) for i in range(n)]
    out = []
    for c, start in enumerate(range(0, len(rows), batch_size)):
        chunk = rows[start:start + batch_size]
        g = torch.Generator().manual_seed(_seed(seed, "eval", c))
        r = generate(model, [prompt_ids[p] for p, _ in chunk], max_new_tokens=max_new_tokens, temperature=temperature,
                     top_p=top_p if temperature > 0 else 1.0, eos_token_ids=eos_ids,
                     pad_token_id=tokenizer.pad_token_id, generator=g)
        for (p, i), text, toks, m, lp in zip(chunk, r.texts(tokenizer), r.tokens, r.mask, r.logprobs):
            out.append({"p": p, "i": i, "text": text, "tokens": toks[m].tolist(), "logprob": float(lp[m].sum())})
        if bar is not None:
            bar.update(len(chunk))
    return out


def sequence_logprobs(model, prompts: list[list[int]], responses: list[list[int]], temperature: float,
                      batch_size: int = 32) -> list[float]:
    """sum_t log p(response_t | prompt, response_<t) under softmax(logits / temperature), per row.

    [left-padded prompt | right-padded response]; position ids count real tokens only, as
    the sampler's do, so a model scoring its own samples reproduces the sampler's logprobs."""
    import torch

    out: list[float] = []
    with torch.inference_mode():
        for s in range(0, len(prompts), batch_size):
            ps, rs = prompts[s:s + batch_size], responses[s:s + batch_size]
            P, T = max(map(len, ps)), max(map(len, rs))
            ids = torch.zeros(len(ps), P + T, dtype=torch.long)
            attn = torch.zeros(len(ps), P + T, dtype=torch.bool)
            for j, (p, r) in enumerate(zip(ps, rs)):
                ids[j, P - len(p):P], attn[j, P - len(p):P] = torch.tensor(p), True
                ids[j, P:P + len(r)], attn[j, P:P + len(r)] = torch.tensor(r, dtype=torch.long), True
            pos = (attn.long().cumsum(1) - 1).clamp(min=0)
            # position P-1+t predicts response token t: keep the last T+1 positions' logits
            logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=T + 1,
                           use_cache=False).logits[:, :-1].float() / temperature
            lp = torch.log_softmax(logits, -1).gather(-1, ids[:, P:, None]).squeeze(-1)
            out += (lp * attn[:, P:]).sum(1).tolist()
    return out


def _load(path: str):
    from rlhfkit.models import eos_token_ids, load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(path)
    if not tokenizer.chat_template:
        raise UserError(f"{path}: the tokenizer has no chat template")
    model = load_causal_lm(path).eval().requires_grad_(False)
    return tokenizer, model, eos_token_ids(model, tokenizer)


def _encode(tokenizer, model, records: list[dict], max_new_tokens: int) -> list[list[int]]:
    from rlhfkit.data import encode_prompt

    room = max(1, getattr(model.config, "max_position_embeddings", 10**9) - max_new_tokens)
    return [encode_prompt(tokenizer, r["messages"])[-room:] for r in records]


# ----------------------------------------------------------------------------- the command


def _check(cfg: Config):
    """Every input a person can get wrong, before anything loads or is written."""
    from rlhfkit.data import read_prompts
    from rlhfkit.rewards.spec import resolve_reward

    if not cfg.models:
        raise UserError("set `models` to the model dirs to evaluate (comma-separated)")
    if len(set(cfg.models)) != len(cfg.models):
        raise UserError(f"models: a model is listed twice ({', '.join(cfg.models)})")
    for m in cfg.models:
        if not Path(m).expanduser().exists():  # ~/.cache/rlhfkit/models/...: loading expands it too
            raise UserError(f"models: {m} not found")
    baseline = cfg.baseline or cfg.models[0]
    if baseline not in cfg.models:
        raise UserError(f"baseline {baseline} is not one of models ({', '.join(cfg.models)})")
    if cfg.samples_per_prompt < 1 or cfg.max_new_tokens < 1 or cfg.batch_size < 1 or cfg.bootstrap < 1:
        raise UserError("samples_per_prompt, max_new_tokens, batch_size and bootstrap must be >= 1")
    if cfg.temperature < 0 or not 0 < cfg.top_p <= 1:
        raise UserError(f"temperature must be >= 0 and top_p in (0, 1], got {cfg.temperature} and {cfg.top_p}")
    if not cfg.judge:
        raise UserError("set `judge`: module:function, rm:PATH or math")
    if not cfg.prompts or not Path(cfg.prompts).is_file():
        raise UserError(f"prompts: {cfg.prompts or '(unset)'}: file not found")
    if cfg.db and "://" not in cfg.db and not Path(cfg.db).is_file():
        raise UserError(f"db: {cfg.db}: no such feedback store")
    judge = resolve_reward(cfg.judge)
    records = read_prompts(cfg.prompts)[: cfg.max_prompts or None]
    if not records:
        raise UserError(f"{cfg.prompts}: no prompts")
    judge.check(records, cfg.prompts)
    return baseline, judge, records


def _diversity(texts: list[str], groups: list[list[str]]) -> dict:
    return {"distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2), "self_bleu": self_bleu(groups),
            "distinct_answers": distinct_per_prompt([[" ".join(t.split()) for t in g] for g in groups])}


def run(cfg: Config) -> dict[str, dict]:
    import torch
    from tqdm.auto import tqdm

    from rlhfkit.config import save_config
    from rlhfkit.files import atomic_write_text, write_jsonl
    from rlhfkit.rewards.verifiers import extract_answer

    baseline, judge, records = _check(cfg)
    P, n = len(records), cfg.samples_per_prompt
    temp = cfg.temperature if cfg.temperature > 0 else 1.0  # greedy: logprobs at temperature 1
    torch.manual_seed(cfg.seed)
    print(f"eval: {len(cfg.models)} model(s) x {P} prompts x {n} samples, judge {cfg.judge}, baseline {baseline}")

    # the baseline first: it stays loaded to score every other model's samples for the KL
    order = [baseline] + [m for m in cfg.models if m != baseline]
    base_tok, base_model, base_eos = _load(baseline)
    bar = tqdm(total=len(order) * P * n, desc="eval", unit="sample", dynamic_ncols=True)
    samples, scores, kl = {}, {}, {}
    for m in order:
        tok, model, eos = (base_tok, base_model, base_eos) if m == baseline else _load(m)
        prompt_ids = _encode(tok, model, records, cfg.max_new_tokens)
        rows = sample_model(model, tok, prompt_ids, n, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                            top_p=cfg.top_p, batch_size=cfg.batch_size, seed=cfg.seed, eos_ids=eos, bar=bar)
        recs = [records[r["p"]] for r in rows]
        s = judge(recs, [r["text"] for r in rows])
        scores[m] = s
        samples[m] = rows
        if m != baseline and tok.get_vocab() == base_tok.get_vocab():
            ps, ys = [prompt_ids[r["p"]] for r in rows], [r["tokens"] for r in rows]
            own = sequence_logprobs(model, ps, ys, temp, cfg.batch_size)
            ref = sequence_logprobs(base_model, ps, ys, temp, cfg.batch_size)
            kl[m] = statistics.fmean(a - b for a, b in zip(own, ref))
        elif m == baseline:
            kl[m] = 0.0
        del model
    bar.close()

    def grid(values) -> list[list]:  # rows are prompt-major: (P, n)
        return [list(values[p * n:(p + 1) * n]) for p in range(P)]

    total = {m: scores[m].sum(1).tolist() for m in order}
    people = {}
    if cfg.db:
        from rlhfkit.feedback.store import FeedbackStore

        with FeedbackStore.for_run(".", cfg.db) as store:
            people = people_verdict(store.rankings(), cfg.models, baseline)
    report: dict[str, dict] = {}
    for m in cfg.models:  # in the order given
        texts = [r["text"] for r in samples[m]]
        per_prompt = pair_wins(grid(total[m]), grid(total[baseline]))
        met = {"win_rate": statistics.fmean(per_prompt),
               # one seed for all models: every model's interval resamples the same prompt sets
               "win_rate_ci": list(bootstrap_ci(per_prompt, cfg.bootstrap, _seed(cfg.seed, "bootstrap"))),
               "judge_mean": statistics.fmean(total[m])}
        for j, name in enumerate(judge.names):
            if name == "math":
                met["accuracy"] = float(scores[m][:, j].mean())
        met["length_mean"] = statistics.fmean(len(r["tokens"]) for r in samples[m])
        met["kl_to_baseline"] = kl.get(m)
        met.update(_diversity(texts, grid(texts)))
        if "math" in judge.names:
            met["distinct_final_answers"] = distinct_per_prompt(grid([extract_answer(t) for t in texts]))
        met.update(people.get(m, {}))
        met.update(prompts=P, samples_per_prompt=n)
        report[m] = met

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "samples.jsonl", [
        {"model": m, "prompt": records[r["p"]]["prompt"], "sample": r["i"], "response": r["text"], "score": v}
        for m in cfg.models for r, v in zip(samples[m], total[m])])
    save_config(cfg, out / "config.toml", "eval")
    atomic_write_text(out / "eval.json", json.dumps(report, indent=2) + "\n")
    print(format_report(report, baseline))
    print(f"wrote {out / 'eval.json'} and {out / 'samples.jsonl'}")
    return report


def format_report(report: dict[str, dict], baseline: str) -> str:
    """A table: one line per model."""
    def f(x, fmt="{:.3f}"):
        return "-" if x is None else fmt.format(x)

    cols = ["win_rate", "judge_mean", "accuracy", "kl_to_baseline", "length_mean", "distinct_2", "self_bleu",
            "distinct_answers", "people_win_rate"]
    cols = [c for c in cols if any(c in met for met in report.values())]
    w = max(len(m) for m in report) + 2
    lines = [" " * w + "  ".join(f"{c:>14}" for c in cols)]
    for m, met in report.items():
        cells = []
        for c in cols:
            cell = f(met.get(c))
            if c == "win_rate" and m != baseline:
                lo, hi = met["win_rate_ci"]
                cell = f"{met[c]:.2f} [{lo:.2f},{hi:.2f}]"
            cells.append(f"{cell:>14}")
        lines.append(f"{m + (' *' if m == baseline else ''):<{w}}" + "  ".join(cells))
    return "\n".join(lines) + "\n(* baseline)"
