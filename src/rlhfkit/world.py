"""The embedded synthetic world: a corpus, conversations and RLHF prompts, all generated.

    rlhfkit world OUT [--seed N] [--scale X]

writes into OUT (see the README.md it writes for counts):
  corpus.txt                     pre-training text: stories, facts, animal jokes, arithmetic;
                                 documents separated by one blank line
  tokenizer.txt                  what `rlhfkit tokenizer` trains on: corpus and conversations
                                 with digits spaced (no multi-digit tokens)
  sft.jsonl, sft_eval.jsonl      {"messages": [{"role", "content"}, ...]} conversations
  chat.jsonl                     more conversations (other draws) for pre-training: the
                                 chat format learned before SFT, as mid-training does
  prompts_jokes(_eval).jsonl     {"prompt", "topic"}: RLHF prompts (eval: held-out phrasings
                                 and held-out animals that the corpus still talks about)
  prompts_math(_eval).jsonl      {"prompt", "answer"}: eval operand pairs never appear in
                                 sft.jsonl, corpus.txt or prompts_math.jsonl
  prompts_jokes_ood.jsonl        out of distribution: jokes about animals (OOD_ANIMALS) that no
                                 other file names at all, asked the way training asks
  prompts_math_ood.jsonl         out of distribution: sums and differences of three-digit
                                 operands (200-999); no other file has a number above 199

Every word comes from the tables in `rlhfkit.world_data` and the templates here and in
`world_prose` (facts, stories), `world_math` (arithmetic) and `world_jokes`; no fetched text.
The same seed and scale give byte-identical files, and each file has its own random stream,
so adding a file leaves the others' bytes alone.
The SFT jokes are deliberately of mixed quality (about 45% good, the rest with one or two
flaws from `FLAWS`) so the SFT model samples jokes that a preference function can tell
apart; `rlhfkit.rewards.gold.joke` is that function, and it reads the topic and pun tables
(OOD animals included) and the matching helpers re-exported here. Only the standard library
is imported.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

# the tables, prose, arithmetic and joke-making live in sibling modules; every name stays
# importable from here
from rlhfkit.world_data import (  # noqa: F401
    ACTIVITIES, ADJS, ANIMAL, ANIMALS, BOYS, CHITCHAT, COLOURS, DAYS, ENDINGS, FEARS, GIRLS, GROWNUPS,
    HELD_OUT_ANIMALS, INDOORS, JOKE_ASKS, JOKE_ASKS_EVAL, MATH_QUESTIONS, MIXES, OBJECTS, OOD_ANIMALS, OPENERS,
    OPS, PET_NAMES, PLACE_FACTS, PLACES, PROMPT_PREFIXES, PROMPT_SUFFIXES, SEASONS, STORY_ASKS, SYSTEMS,
    TRAIN_ANIMALS, TREATS, _SINGULAR_THINGS, Animal, an, cap, number_words,
)
from rlhfkit.world_jokes import (  # noqa: F401
    FLAWS, FORGOT, JOKE_PREFIXES, LITERAL_JOKES, RAMBLE_INTROS, RAMBLE_OUTROS, _fact_sentence, _literal,
    find_animal, flawed_joke, good_joke, has_pun, mentions, sft_joke, TOLD_JOKES, told_jokes,
)
from rlhfkit.world_math import (  # noqa: F401
    OOD_OPERANDS, _eligible, _operands, arithmetic_doc, held_out_pairs, math_qa, ood_pair, worked,
)
from rlhfkit.world_prose import PLOTS, Hero, fact_doc, fact_qa, make_hero, story  # noqa: F401


# ---------------------------------------------------------------------------------------
# Jokes as corpus documents

def joke_doc(rng: random.Random) -> str:
    a = rng.choice(ANIMALS)
    told = told_jokes(a)
    jokes = rng.sample(told, k=rng.randint(1, len(told)))
    head = rng.choice(["", f"Here are some jokes about {a.plural}.", f"Jokes about {a.plural}:", f"A joke about {a.a}."])
    # mostly good; now and then a flat one, as in any pile of jokes
    body = [f"{s} {p}" if rng.random() < 0.9 else _literal(rng, a) for s, p in jokes]
    return "\n".join(([head] if head else []) + body)


# ---------------------------------------------------------------------------------------
# Conversations and prompts

def joke_ask(rng: random.Random, animal: Animal, asks=JOKE_ASKS) -> str:
    return rng.choice(asks).format(p=animal.plural, a=animal.a, s=animal.name)


def _exchange(rng: random.Random, held: set, kind: str, animal: Animal) -> list[tuple[str, str]]:
    if kind == "joke":
        return [(joke_ask(rng, animal), sft_joke(rng, animal)[0])]
    if kind == "math":
        return [math_qa(rng, held)]
    if kind == "fact":
        return [fact_qa(rng)]
    if kind == "story":
        ask = rng.choice(STORY_ASKS)
        hero, place = None, None
        if "{a}" in ask:
            hero = make_hero(rng, animal=animal)
        elif "{who}" in ask:
            hero = make_hero(rng, child=True)
        elif "{place}" in ask:
            place = rng.choice(list(PLACES))
        who = "a girl" if hero and hero.he == "she" else "a boy"
        q = ask.format(a=animal.a, who=who, name=hero.name if hero else "", place=place)
        return [(q, story(rng, hero, place))]
    return [rng.choice(CHITCHAT)]


def conversation(rng: random.Random, held: set) -> dict:
    kind = rng.choices(["joke", "math", "fact", "story", "chat"], weights=[42, 45, 8, 3, 2])[0]
    animal = rng.choice(TRAIN_ANIMALS)
    turns = _exchange(rng, held, kind, animal)
    for _ in range(rng.choice([0, 0, 0, 0, 0, 0, 1, 1, 2])):  # some multi-turn conversations
        if kind == "joke" and rng.random() < 0.6:  # a follow-up that leans on the first turn
            ask = rng.choice(["Another one, please.", "Tell me one more.", f"One more about {animal.plural}!"])
            turns.append((ask, sft_joke(rng, animal)[0]))
        else:
            turns += _exchange(rng, held, rng.choice(["joke", "math", "fact"]), rng.choice(TRAIN_ANIMALS))
    messages = [{"role": "system", "content": rng.choice(SYSTEMS)}] if rng.random() < 0.2 else []
    for user, assistant in turns:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {"messages": messages}


def _decorated(rng: random.Random, text: str) -> str:
    return rng.choice(PROMPT_PREFIXES) + text + rng.choice(PROMPT_SUFFIXES)


def _unique(make, n: int, exclude: set[str] = frozenset(), tries: int = 50) -> list:
    """Up to n distinct records from make() (keyed by JSON), skipping those in `exclude`."""
    out, seen = [], set(exclude)
    for _ in range(n * tries):
        if len(out) >= n:
            break
        rec = make()
        key = json.dumps(rec, sort_keys=True, ensure_ascii=False)
        if key not in seen:
            seen.add(key)
            out.append(rec)
    return out


# shares of documents: mostly what the demo's RL tracks are about (jokes, two-digit sums), so a
# 2M model learns them from ~1M tokens; stories and facts keep the language varied
CORPUS_MIX = {"story": 10, "facts": 15, "jokes": 30, "arithmetic": 45}


def corpus_docs(rng: random.Random, held: set, target_chars: float) -> list[str]:
    make = {"story": lambda: story(rng), "facts": lambda: fact_doc(rng), "jokes": lambda: joke_doc(rng),
            "arithmetic": lambda: arithmetic_doc(rng, held)}
    docs, size = [], 0
    while size < target_chars:
        docs.append(make[rng.choices(list(CORPUS_MIX), weights=list(CORPUS_MIX.values()))[0]]())
        size += len(docs[-1]) + 2
    return docs


def joke_prompts(rng: random.Random, n: int, asks: tuple[str, ...], p_held_out: float = 0.0,
                 animals: list[Animal] | None = None) -> list[dict]:
    """{"prompt", "topic"} records about `animals` (default TRAIN_ANIMALS); a share p_held_out
    asks about HELD_OUT_ANIMALS instead."""
    held_animals = [ANIMAL[x] for x in HELD_OUT_ANIMALS]
    pool = animals or TRAIN_ANIMALS

    def make() -> dict:
        a = rng.choice(held_animals if rng.random() < p_held_out else pool)
        return {"prompt": _decorated(rng, joke_ask(rng, a, asks)), "topic": a.name}
    return _unique(make, n)


def math_prompts(rng: random.Random, n: int, pairs) -> list[dict]:
    """{"prompt", "answer"} records; `pairs()` draws an operand pair for an op."""
    def make() -> dict:
        op = rng.choice("+-")
        x, op, y = _ordered(rng, pairs(op), op)
        return {"prompt": rng.choice(MATH_QUESTIONS[op][:2]).format(x=x, y=y), "answer": str(OPS[op][1](x, y))}
    return _unique(make, n)


def build_world(seed: int = 0, scale: float = 1.0) -> dict[str, str]:
    """All files as text, name -> content (deterministic in seed and scale)."""
    def rng(name: str) -> random.Random:  # one stream per file: changing one leaves the others
        return random.Random(f"{seed}:{name}")  # str seeds hash with SHA-512: stable across runs

    def n(base: int, least: int) -> int:
        return max(least, round(base * scale))

    held = held_out_pairs(seed)
    docs = corpus_docs(rng("corpus"), held, 2_500_000 * scale)
    r = rng("sft")
    sft = _unique(lambda: conversation(r, held), n(8000, 20))
    r_eval = rng("sft_eval")
    train_keys = {json.dumps(c, sort_keys=True, ensure_ascii=False) for c in sft}
    sft_eval = _unique(lambda: conversation(r_eval, held), n(400, 10), exclude=train_keys)
    # conversations for pre-training (other draws, none an SFT or SFT-eval conversation): the
    # chat format is learned with everything else, so SFT's short budget goes on behaviour
    r_chat = rng("chat")
    chat = _unique(lambda: conversation(r_chat, held), n(6000, 10),
                   exclude=train_keys | {json.dumps(c, sort_keys=True, ensure_ascii=False) for c in sft_eval})
    pj = joke_prompts(rng("prompts_jokes"), n(2000, 20), JOKE_ASKS)
    # eval: phrasings never used in training; a third asks about held-out animals
    pj_eval = joke_prompts(rng("prompts_jokes_eval"), n(300, 12), JOKE_ASKS_EVAL, p_held_out=1 / 3)
    r_math = rng("prompts_math")
    pm = math_prompts(r_math, n(2000, 20), lambda op: _operands(r_math, held, op, "two"))
    held_sorted, r_math_eval = sorted(held), rng("prompts_math_eval")
    pm_eval = math_prompts(r_math_eval, n(300, 12), lambda op: r_math_eval.choice(held_sorted))
    # out of distribution: the training phrasings, about what training never saw
    pj_ood = joke_prompts(rng("prompts_jokes_ood"), n(300, 12), JOKE_ASKS, animals=OOD_ANIMALS)
    r_math_ood = rng("prompts_math_ood")
    pm_ood = math_prompts(r_math_ood, n(300, 12), lambda op: ood_pair(r_math_ood, op))

    corpus = "\n\n".join(docs) + "\n"
    files = {
        "corpus.txt": corpus, "tokenizer.txt": tokenizer_text(corpus, sft),
        "sft.jsonl": _jsonl(sft), "sft_eval.jsonl": _jsonl(sft_eval), "chat.jsonl": _jsonl(chat),
        "prompts_jokes.jsonl": _jsonl(pj), "prompts_jokes_eval.jsonl": _jsonl(pj_eval),
        "prompts_math.jsonl": _jsonl(pm), "prompts_math_eval.jsonl": _jsonl(pm_eval),
        "prompts_jokes_ood.jsonl": _jsonl(pj_ood), "prompts_math_ood.jsonl": _jsonl(pm_ood),
    }
    counts = {"corpus.txt": f"{len(docs)} documents", "tokenizer.txt": "corpus and conversations, digits spaced", "sft.jsonl": f"{len(sft)} conversations",
              "chat.jsonl": f"{len(chat)} conversations",
              "sft_eval.jsonl": f"{len(sft_eval)} conversations", "prompts_jokes.jsonl": f"{len(pj)} prompts",
              "prompts_jokes_eval.jsonl": f"{len(pj_eval)} prompts", "prompts_math.jsonl": f"{len(pm)} prompts",
              "prompts_math_eval.jsonl": f"{len(pm_eval)} prompts", "prompts_jokes_ood.jsonl": f"{len(pj_ood)} prompts",
              "prompts_math_ood.jsonl": f"{len(pm_ood)} prompts"}
    files["README.md"] = _readme(seed, scale, files, counts)
    return files


def tokenizer_text(corpus: str, conversations: list[dict]) -> str:
    """The text BPE is trained on: the corpus and the conversations with every digit
    spaced from the next ("47" -> "4 7"), so the vocabulary has no multi-digit tokens and
    "47" encodes as " 4" + "7": a small model then adds digit by digit (a few dozen facts)
    instead of learning a lookup table over ninety number tokens."""
    chats = "\n\n".join(m["content"] for c in conversations for m in c["messages"])
    return re.sub(r"(?<=\d)(?=\d)", " ", corpus + "\n" + chats + "\n")


def _ordered(rng: random.Random, pair: tuple[int, int], op: str) -> tuple[int, str, int]:
    x, y = pair
    if op == "-":
        return max(x, y), op, min(x, y)
    return (x, op, y) if rng.random() < 0.5 else (y, op, x)


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records)


def _readme(seed: int, scale: float, files: dict[str, str], counts: dict[str, str]) -> str:
    rows = "\n".join(f"| `{k}` | {counts[k]} | {len(v.encode()):,} bytes |" for k, v in files.items())
    return f"""# rlhfkit synthetic world (seed {seed}, scale {scale:g})

Written by `rlhfkit world OUT --seed {seed} --scale {scale:g}`; every word comes from the
templates in `rlhfkit/world*.py`, and the same seed and scale give the same bytes.

| file | contents | size |
|---|---|---|
{rows}

- `corpus.txt`: plain text for pre-training; documents (stories, facts about animals, colours,
  places and time, animal jokes, arithmetic written out) separated by one blank line.
- `tokenizer.txt`: the tokenizer's training text: `corpus.txt` and the conversations with every
  digit spaced from the next, so BPE learns no multi-digit tokens and numbers encode digit by digit.
- `sft.jsonl`, `sft_eval.jsonl`: `{{"messages": [{{"role": ..., "content": ...}}]}}`, roles system
  (sometimes), user, assistant; some multi-turn; every conversation ends with the assistant.
  Kinds: jokes (about 45% good, the rest with one or two flaws: off topic, no pun, no
  punchline, a plain statement, rambling, repeated words, cut off), arithmetic (answers end
  with "The answer is N."), facts, short stories, small talk.
- `chat.jsonl`: more conversations of the same kinds (other draws, none in sft or sft_eval) for
  pre-training, which renders them through the chat template: the model meets the chat format
  while it learns everything else (as mid-training does), and SFT's short budget goes on behaviour.
- `prompts_jokes.jsonl`: `{{"prompt", "topic"}}` RLHF prompts about {len(TRAIN_ANIMALS)} animals.
  `prompts_jokes_eval.jsonl` uses phrasings never seen in training, and a third of it asks about
  held-out animals ({", ".join(HELD_OUT_ANIMALS)}) that appear in the corpus but in no SFT joke.
- `prompts_math.jsonl`: `{{"prompt", "answer"}}` two-digit sums and differences.
  `prompts_math_eval.jsonl` uses operand pairs that appear nowhere else in this world.
- Out of distribution, for `rlhfkit eval` beside the eval files: `prompts_jokes_ood.jsonl`
  asks (in the training phrasings) for jokes about {", ".join(a.plural for a in OOD_ANIMALS)},
  which no other file names; `prompts_math_ood.jsonl` asks for sums and differences of
  three-digit operands ({OOD_OPERANDS.start}-{OOD_OPERANDS.stop - 1}); no other file has a number above 199.

Gold preference for jokes: `rlhfkit.rewards.gold:joke` (on topic, setup question then a
punchline, a pun from the animal's pun table, brevity, a clean ending, no repetition).
"""


def write_world(out: str | Path, seed: int = 0, scale: float = 1.0) -> dict[str, Path]:
    """Write the world into `out` in one rename; -> file name -> path."""
    from rlhfkit.files import UserError, atomic_dir

    if not scale > 0:
        raise UserError(f"--scale must be positive, got {scale}")
    out = Path(out)
    files = build_world(seed, scale)
    if out.exists():  # the whole directory is replaced: refuse to clobber anything else
        if not out.is_dir():
            raise UserError(f"{out}: exists and is not a directory")
        foreign = sorted(p.name for p in out.iterdir() if p.name not in files)
        if foreign:
            raise UserError(f"{out}: not a world directory (has {', '.join(foreign[:3])}); pick an empty or new directory")
    with atomic_dir(out) as tmp:
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")
    return {name: out / name for name in files}


def cli(name: str, argv: list[str]) -> int:
    import argparse
    import time

    p = argparse.ArgumentParser(prog=f"rlhfkit {name}", description="Write the embedded synthetic world (corpus, conversations, prompts).")
    p.add_argument("out", help="output directory (created or replaced as a whole)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    p.add_argument("--scale", type=float, default=1.0, help="size multiplier (1.0: ~2.5 MB corpus, 8k conversations)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    paths = write_world(args.out, seed=args.seed, scale=args.scale)
    for fname, path in paths.items():
        print(f"{path}  {path.stat().st_size:>10,} bytes")
    print(f"wrote {len(paths)} files in {time.perf_counter() - t0:.1f}s")
    return 0
