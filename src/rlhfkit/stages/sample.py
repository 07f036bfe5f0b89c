"""Sample from a model, or chat with it in the terminal.

    rlhfkit sample runs/demo/sft --prompt "Tell me a joke about pelicans." -n 5
    rlhfkit sample runs/demo/base --raw --prompt "Once upon a time" -n 3
    rlhfkit chat runs/demo/sft --temperature 0.7

`sample` applies the model's chat template (a user turn, then the assistant header) unless
`--raw` is given, and prints the K responses separated by lines. `chat` keeps the whole
conversation and sends it each turn; /reset clears it, /quit or Ctrl-D leaves.
"""

from __future__ import annotations

import argparse
import sys


def _args(name: str, argv: list[str]) -> argparse.Namespace:
    from rlhfkit.cli import Parser

    p = Parser(prog=f"rlhfkit {name}", description=__doc__.strip().split("\n")[0])
    p.add_argument("model", help="model dir, .gguf file or hub id")
    if name == "sample":
        p.add_argument("--prompt", required=True, help="the user message (or raw text with --raw)")
        p.add_argument("-n", type=int, default=1, help="number of samples")
        p.add_argument("--raw", action="store_true", help="continue the text as is (no chat template)")
        p.add_argument("--json", action="store_true", help="print one JSON object per sample")
    p.add_argument("--system", default="", help="a system message")
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="torch", help="sampler backend: torch (ours) or hf")
    a = p.parse_args(argv)
    if name == "sample" and a.n < 1:
        p.error(f"-n must be at least 1, got {a.n}")
    if a.max_new_tokens < 1:
        p.error(f"--max-new-tokens must be at least 1, got {a.max_new_tokens}")
    if not a.temperature >= 0 or a.temperature == float("inf"):  # nan fails >= too
        p.error(f"--temperature must be >= 0 (0 is greedy), got {a.temperature}")
    if not 0 < a.top_p <= 1:
        p.error(f"--top-p must be in (0, 1], got {a.top_p}")
    return a


def _load(spec: str):
    from rlhfkit.models import _resolve, eos_token_ids, load_causal_lm, load_tokenizer

    _resolve(spec)  # a missing or damaged model is named as one, before its tokenizer loads
    tok = load_tokenizer(spec)
    model = load_causal_lm(spec)
    model.eval()
    return model, tok, eos_token_ids(model, tok)


def _generate(model, tok, eos, prompt_ids: list[list[int]], a, generator):
    from rlhfkit.generation import generate

    r = generate(model, prompt_ids, max_new_tokens=a.max_new_tokens, temperature=a.temperature,
                 top_p=a.top_p, eos_token_ids=eos, pad_token_id=tok.pad_token_id, generator=generator,
                 backend=a.backend)
    return r.texts(tok)


def cli(name: str, argv: list[str]) -> int:
    import torch

    a = _args(name, argv)
    model, tok, eos = _load(a.model)
    g = torch.Generator().manual_seed(a.seed)
    system = [{"role": "system", "content": a.system}] if a.system else []

    if name == "sample":
        if a.raw:
            ids = tok(a.prompt, add_special_tokens=False)["input_ids"]
        else:
            if not tok.chat_template:
                from rlhfkit.files import UserError

                raise UserError(f"{a.model}: no chat template (use --raw for a base model)")
            from rlhfkit.data import encode_prompt

            ids = encode_prompt(tok, system + [{"role": "user", "content": a.prompt}])
        texts = _generate(model, tok, eos, [ids] * a.n, a, g)
        import json

        for i, t in enumerate(texts):
            if a.json:
                print(json.dumps({"prompt": a.prompt, "response": t, "sample": i}, ensure_ascii=False))
            else:
                print(f"--- sample {i + 1}/{a.n}\n{t}")
        return 0

    from rlhfkit.data import encode_prompt

    history = list(system)
    print(f"chatting with {a.model} (/reset clears, /quit leaves)", file=sys.stderr)
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return 0
        if line in ("/quit", "/exit"):
            return 0
        if line == "/reset":
            history = list(system)
            continue
        if not line:
            continue
        history.append({"role": "user", "content": line})
        reply = _generate(model, tok, eos, [encode_prompt(tok, history)], a, g)[0]
        history.append({"role": "assistant", "content": reply})
        print(f"bot> {reply}", flush=True)
