"""Reward specs: `math`, `format`, `rm:PATH`, `module:function` and sums of them, as one callable.

    reward = resolve_reward("math+format")      # (n, K) tensor, one column per term
    scores = reward(records, completions).sum(1)

Used by the RL stages (the reward and the `gold` key), evaluation (the judge) and the guard.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Callable

import torch

from rlhfkit.files import UserError
from rlhfkit.rewards.verifiers import DEFAULT_FORMAT_REGEX, VERIFIERS



class Reward:
    """`reward(records, completions) -> (n, K)` tensor, one column per term of the spec; the
    reward is the sum of the columns. `names` label the columns (metrics reward/NAME_mean)."""

    def __init__(self, terms: list[tuple[str, Callable, tuple[str, ...]]]):
        self.names = [n for n, _, _ in terms]
        self.terms = terms
        self.needs = {f for _, _, fields in terms for f in fields}

    def check(self, records: list[dict], where: str) -> None:
        for i, r in enumerate(records, 1):
            for f in self.needs:
                if f not in r:
                    raise UserError(f"{where}: record {i} has no '{f}' field (reward {'+'.join(self.names)} needs it)")

    def __call__(self, records: list[dict], completions: list[str]) -> torch.Tensor:
        prompts = [r["prompt"] for r in records]
        names = sorted({k for r in records for k in r if k not in ("prompt", "messages") and not k.startswith("_")})
        fields = {k: [r.get(k) for r in records] for k in names}
        cols = []
        for name, fn, _ in self.terms:
            vals = fn(prompts, completions, records=records, **fields)
            if len(vals) != len(completions):
                raise UserError(f"reward {name} returned {len(vals)} values for {len(completions)} completions")
            cols.append(torch.tensor([float(v) for v in vals], dtype=torch.float32))
        return torch.stack(cols, 1)


def _rm_term(path: str, k: float):
    from rlhfkit.rewards.rm import RewardScorer

    scorer = RewardScorer.load(path)

    def rm(prompts, completions, records, **_):
        mean, std = scorer.score([r["messages"] for r in records], completions)
        return (mean.float() - k * std.float()).tolist()
    return rm


def _python_term(spec: str):
    mod_name, _, fn_name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise UserError(f"reward {spec}: cannot import ({e})") from None
    params = list(inspect.signature(fn).parameters)
    if params[:2] in (["prompt", "response"], ["prompt", "completion"]):
        # a per-example scorer such as rlhfkit.rewards.gold:joke(prompt, response) -> float
        return lambda prompts, completions, **_: [fn(p, c) for p, c in zip(prompts, completions)]
    accepts_records = "records" in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())
    return fn if accepts_records else (lambda prompts, completions, records, **kw: fn(prompts, completions, **kw))


def resolve_reward(spec: str, format_regex: str = DEFAULT_FORMAT_REGEX, rm_uncertainty_k: float = 0.0) -> Reward:
    """`math`, `format`, `math+format`, `rm:PATH`, `module:function`, or a sum of them (`+`)."""
    terms = []
    for part in [p.strip() for p in spec.split("+")]:
        if part in VERIFIERS:
            fn, needs = VERIFIERS[part]
            if part == "format":
                fn = (lambda regex: lambda p, c, **kw: VERIFIERS["format"][0](p, c, regex=regex))(format_regex)
            terms.append((part, fn, needs))
        elif part.startswith("rm:"):
            terms.append(("rm", _rm_term(part[3:], rm_uncertainty_k), ()))
        elif ":" in part:
            terms.append((part.rsplit(":", 1)[1], _python_term(part), ()))
        else:
            raise UserError(f"reward '{part}': expected one of {', '.join(VERIFIERS)}, rm:PATH or module:function")
    return Reward(terms)


def resolve_gold(spec: str) -> Reward | None:
    """The `gold` key: a reward spec scored for the plots only (None when empty)."""
    return resolve_reward(spec) if spec else None
