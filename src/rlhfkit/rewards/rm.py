"""Reward-model scores for RL and evaluation: one model or an ensemble, behind one call.

    scorer = RewardScorer.load("runs/demo/rm")           # a model dir, or an ensemble dir
    mean, std = scorer.score(prompts, responses)         # (B,), (B,); std is 0 for one model
    reward = scorer.reward(prompts, responses, k=1.0)    # mean - k * std (uncertainty-penalised)

A reward model is a transformers `AutoModelForSequenceClassification` with one label (the
format TRL and OpenRLHF use, so their reward models load here and ours load there). Its input
is the prompt's messages plus the response as the final assistant turn, rendered by the
tokenizer's chat template; the score is the head's output at the last non-pad token (right
padding, `config.pad_token_id`: transformers' own pooling, so a plain transformers load reads
the same position). Inputs longer than the tokenizer's `model_max_length` lose their START
(left truncation): the response's end, where the score is read, always stays.

Normalisation (`reward_norm.json` beside the weights): `rlhfkit reward` shifts and scales the
scores so the responses of the normalisation set have mean 0 and std 1. The scale is folded
into the score head (weight / std). Llama's score head has no bias (transformers builds it with
`bias=False`), so the shift cannot be folded: the scorer adds `offset` (= -mean / std). A plain
transformers load therefore gives the normalised scores plus the constant mean / std; every
difference between two responses (all that Bradley-Terry, accuracy and GRPO see) is identical.
A model dir without `reward_norm.json` (a TRL reward model, say) is scored as it is.

Ensemble dir: `ensemble.json` {"members": ["member-0", ...]} beside one model dir per member.
Each member is normalised on its own, so the std across members measures disagreement, not
a difference of scales. The std is the unbiased one (n - 1 in the denominator).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rlhfkit.files import UserError

NORM_FILE = "reward_norm.json"
ENSEMBLE_FILE = "ensemble.json"
Prompt = list[dict] | str


def as_messages(prompt: Prompt) -> list[dict]:
    """A prompt as chat messages: a plain string is one user turn."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def render(tokenizer, prompt: Prompt, response: str) -> str:
    """The RM's input text: the prompt's turns, then the response as the last assistant turn."""
    msgs = as_messages(prompt) + [{"role": "assistant", "content": response}]
    return tokenizer.apply_chat_template(msgs, tokenize=False)


def encode(tokenizer, prompts: list[Prompt], responses: list[str], max_len: int) -> list[list[int]]:
    """Token ids per (prompt, response), left-truncated to max_len (the scored end survives)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if not tokenizer.chat_template:
        raise UserError("the reward model's tokenizer has no chat template")
    texts = [render(tokenizer, p, r) for p, r in zip(prompts, responses)]
    ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"] if texts else []
    return [x[-max_len:] for x in ids]


def collate_right(ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> input_ids (B, T) right-padded with pad_id, attention_mask (B, T)."""
    t = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), t), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, :len(x)] = torch.tensor(x, dtype=torch.long)
        mask[i, :len(x)] = 1
    return input_ids, mask


def forward_scores(model, ids: list[list[int]], pad_id: int, device="cpu") -> torch.Tensor:
    """(B,) raw head outputs for one batch of sequences (with grad if enabled)."""
    input_ids, mask = collate_right(ids, pad_id)
    return model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits[:, 0].float()


@torch.no_grad()
def score_ids(model, ids: list[list[int]], pad_id: int, batch_size: int = 32, device="cpu") -> torch.Tensor:
    """(N,) raw scores, no grad, in batches of similar lengths (longest first), in input order."""
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    out = torch.zeros(len(ids))
    for lo in range(0, len(order), batch_size):
        idx = order[lo:lo + batch_size]
        out[idx] = forward_scores(model, [ids[i] for i in idx], pad_id, device).cpu()
    return out


def pad_id_for(tokenizer, ids: list[list[int]]) -> int:
    """A pad id that no sequence ends with: transformers reads the score at the rightmost token
    that is not pad_token_id, so a sequence ending in the pad id (pad = eos, as many tokenizers
    set it, and a template ending in eos) would be scored one token early."""
    last = {x[-1] for x in ids if x}
    candidates = [tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id]
    candidates += list(range(len(tokenizer)))
    return next(c for c in candidates if c is not None and c not in last)


def max_len_of(tokenizer, config) -> int:
    """The saved tokenizer's model_max_length (written by `rlhfkit reward`), else the model's context."""
    n = getattr(tokenizer, "model_max_length", None) or 0
    ctx = getattr(config, "max_position_embeddings", None) or 2048
    return int(n) if 0 < n < 1_000_000 else int(ctx)


def load_model_dir(path: Path, device="cpu"):
    """-> (AutoModelForSequenceClassification in eval mode, tokenizer, offset, scale): the model's
    output + offset is the normalised score; (normalised - offset) * scale the score as trained."""
    from transformers import AutoModelForSequenceClassification

    from rlhfkit.models import load_tokenizer, quiet_transformers

    if not (path / "config.json").is_file():
        raise UserError(f"{path}: not a reward model directory (no config.json or {ENSEMBLE_FILE})")
    cfg = json.loads((path / "config.json").read_text())
    if not any(a.endswith("ForSequenceClassification") for a in cfg.get("architectures") or []):
        raise UserError(f"{path}: not a reward model ({', '.join(cfg.get('architectures') or ['?'])}; "
                        "expected a ...ForSequenceClassification; train one with `rlhfkit reward`)")
    quiet_transformers()
    model = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=torch.float32).to(device).eval()
    if model.config.num_labels != 1:
        raise UserError(f"{path}: a reward model has one output, this one has {model.config.num_labels}")
    tokenizer = load_tokenizer(str(path))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    offset, scale = 0.0, 1.0
    if (path / NORM_FILE).is_file():
        try:
            norm = json.loads((path / NORM_FILE).read_text())
            mean, scale = float(norm["mean"]), float(norm["std"])
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{path / NORM_FILE}: expected {{\"mean\", \"std\", \"offset\", \"folded\"}}") from None
        if not norm.get("folded"):  # apply the whole (x - mean) / std here
            with torch.no_grad():
                model.score.weight.div_(scale)
        offset = -mean / scale
    return model, tokenizer, offset, scale


class RewardScorer:
    """Scores (prompt, response) pairs with one reward model or the mean of an ensemble."""

    def __init__(self, models: list, tokenizer, offsets: list[float], scales: list[float] | None = None,
                 device="cpu", path: str = ""):
        self.models, self.tokenizer, self.offsets, self.device, self.path = models, tokenizer, offsets, device, path
        self.scales = scales or [1.0] * len(models)  # std of each member's scores as trained
        self.max_len = max_len_of(tokenizer, models[0].config)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "RewardScorer":
        """A model dir (config.json) or an ensemble dir (ensemble.json); UserError if neither."""
        path = Path(path).expanduser()
        if not path.is_dir():
            raise UserError(f"{path}: reward model not found (expected a directory written by `rlhfkit reward`)")
        if (path / ENSEMBLE_FILE).is_file():
            try:
                names = json.loads((path / ENSEMBLE_FILE).read_text())["members"]
            except (ValueError, KeyError, TypeError):
                raise UserError(f"{path / ENSEMBLE_FILE}: expected {{\"members\": [\"member-0\", ...]}}") from None
            loaded = [load_model_dir(path / n, device) for n in names]
        else:
            loaded = [load_model_dir(path, device)]
        models, tokenizers, offsets, scales = zip(*loaded)
        return cls(list(models), tokenizers[0], list(offsets), list(scales), device, str(path))

    def __len__(self) -> int:
        return len(self.models)

    def member_scores(self, prompts: list[Prompt], responses: list[str], batch_size: int = 32) -> torch.Tensor:
        """(M, B) normalised scores of every member."""
        ids = encode(self.tokenizer, prompts, responses, self.max_len)
        if not ids:
            return torch.zeros(len(self.models), 0)
        return torch.stack([score_ids(m, ids, m.config.pad_token_id, batch_size, self.device) + off
                            for m, off in zip(self.models, self.offsets)])

    def raw(self, member_scores: torch.Tensor) -> torch.Tensor:
        """(M, B) normalised -> (M, B) as trained (Bradley-Terry logits, up to a constant)."""
        return (member_scores - torch.tensor(self.offsets)[:, None]) * torch.tensor(self.scales)[:, None]

    def score(self, prompts: list[Prompt], responses: list[str], batch_size: int = 32
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (mean (B,), std (B,)) over members; batched, no grad, deterministic."""
        s = self.member_scores(prompts, responses, batch_size)
        std = s.std(0, correction=1) if len(self.models) > 1 else torch.zeros(s.shape[1])
        return s.mean(0), std

    def reward(self, prompts: list[Prompt], responses: list[str], k: float = 0.0, batch_size: int = 32
               ) -> torch.Tensor:
        """(B,) mean - k * std: k > 0 penalises responses the members disagree on (Coste et al. 2023)."""
        mean, std = self.score(prompts, responses, batch_size)
        return mean - k * std
