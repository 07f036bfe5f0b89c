"""The embedded synthetic world: a corpus, conversations and RLHF prompts, all generated.

    rlhfkit world OUT [--seed N] [--scale X]

writes into OUT (see the README.md it writes for counts):
  corpus.txt                     pre-training text: stories, facts, animal jokes, arithmetic;
                                 documents separated by one blank line
  sft.jsonl, sft_eval.jsonl      {"messages": [{"role", "content"}, ...]} conversations
  prompts_jokes(_eval).jsonl     {"prompt", "topic"}: RLHF prompts (eval: held-out phrasings
                                 and held-out animals that the corpus still talks about)
  prompts_math(_eval).jsonl      {"prompt", "answer"}: eval operand pairs never appear in
                                 sft.jsonl, corpus.txt or prompts_math.jsonl

Every word comes from the tables in `rlhfkit.world_data` and the templates below and in
`rlhfkit.world_jokes` (no fetched text); the same seed and scale give byte-identical files.
The SFT jokes are deliberately of mixed quality (about 40% good, the rest with one or two
flaws from `FLAWS`) so the SFT model samples jokes that a preference function can tell
apart; `rlhfkit.rewards.gold.joke` is that function, and it reads the topic and pun tables
and the matching helpers re-exported here. Only the standard library is imported.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

# the tables and the joke-making live in two sibling modules; every name stays importable from here
from rlhfkit.world_data import (  # noqa: F401
    ACTIVITIES, ADJS, ANIMAL, ANIMALS, BOYS, CHITCHAT, COLOURS, DAYS, ENDINGS, FEARS, GIRLS, GROWNUPS,
    HELD_OUT_ANIMALS, INDOORS, JOKE_ASKS, JOKE_ASKS_EVAL, MATH_QUESTIONS, MIXES, OBJECTS, OPENERS, OPS,
    PET_NAMES, PLACE_FACTS, PLACES, PROMPT_PREFIXES, PROMPT_SUFFIXES, SEASONS, STORY_ASKS, SYSTEMS,
    TRAIN_ANIMALS, TREATS, _SINGULAR_THINGS, Animal, an, cap, number_words,
)
from rlhfkit.world_jokes import (  # noqa: F401
    FLAWS, FORGOT, JOKE_PREFIXES, LITERAL_JOKES, RAMBLE_INTROS, RAMBLE_OUTROS, _fact_sentence, _literal,
    find_animal, flawed_joke, good_joke, has_pun, mentions, sft_joke,
)


# ---------------------------------------------------------------------------------------
# Facts: animals, colours, places, time, numbers

def fact_doc(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.55:
        a = rng.choice(ANIMALS)
        sents = list(dict.fromkeys(_fact_sentence(rng, a) for _ in range(8)))[: rng.randint(3, 6)]
        intro = rng.choice(["", f"This is about {a.plural}.", f"Let us learn about {a.plural}.", f"{cap(a.plural)} are interesting animals."])
        return " ".join(([intro] if intro else []) + sents)
    if kind < 0.75:
        out = []
        for colour in rng.sample(list(COLOURS), rng.randint(2, 4)):
            thing = rng.choice(COLOURS[colour])
            out.append(f"{cap(thing)} {'is' if thing in _SINGULAR_THINGS else 'are'} {colour}.")
        x, y, z = rng.choice(MIXES)
        out.append(rng.choice([f"If you mix {x} and {y}, you get {z}.", f"{cap(x)} and {y} make {z}."]))
        rng.shuffle(out)
        return " ".join(out)
    if kind < 0.9:
        place = rng.choice(list(PLACE_FACTS))
        things, extra = PLACE_FACTS[place]
        return rng.choice([f"At {place}, you can find {things}. {extra}", f"{extra} There are {things} at {place}."])
    if rng.random() < 0.5:
        i = rng.randrange(7)
        season = rng.choice(list(SEASONS))
        return (f"There are seven days in a week. The day after {DAYS[i]} is {DAYS[(i + 1) % 7]}. "
                f"The day before {DAYS[i]} is {DAYS[i - 1]}. In {season}, {SEASONS[season]}.")
    n = rng.randint(2, 99)
    return (f"{cap(number_words(n))} comes after {number_words(n - 1)} and before {number_words(n + 1)}. "
            f"{cap(number_words(n))} is {'an even' if n % 2 == 0 else 'an odd'} number. "
            f"{n} is {'more' if n > 50 else 'less'} than 50.")


def fact_qa(rng: random.Random) -> tuple[str, str]:
    """One question about the world and its one-sentence answer."""
    a = rng.choice(ANIMALS)
    opts = [(rng.choice([f"What do {a.plural} eat?", f"What does {a.a} eat?"]), f"{cap(a.plural)} eat {a.food}."),
            (rng.choice([f"Where do {a.plural} live?", f"Where can I find {a.plural}?"]), f"{cap(a.plural)} live {a.home}."),
            (f"What colour is {a.a}?", f"{cap(a.plural)} {a.colour}."),
            (f"What kind of animal is {a.a}?", f"{cap(a.a)} is {an(a.kind)} {a.kind}."),
            (f"Tell me a fact about {a.plural}.", cap(rng.choice(a.facts).format(a=a.a, p=a.plural)))]
    if a.legs is not None:
        opts.append((f"How many legs does {a.a} have?", f"{cap(a.a)} has {number_words(a.legs) if a.legs else 'no'} legs."))
    if a.sound:
        opts.append((f"What sound does {a.a} make?", f"{cap(a.a)} says {a.sound}."))
    x, y, z = rng.choice(MIXES)
    colour = rng.choice(list(COLOURS))
    thing = rng.choice(COLOURS[colour])
    place = rng.choice(list(PLACE_FACTS))
    i = rng.randrange(7)
    opts += [(f"What do you get if you mix {x} and {y}?", f"{cap(x)} and {y} make {z}."),
             (f"What colour {'is' if thing in _SINGULAR_THINGS else 'are'} {thing}?", f"{cap(thing)} {'is' if thing in _SINGULAR_THINGS else 'are'} {colour}."),
             (f"What can you find at {place}?", f"At {place}, you can find {PLACE_FACTS[place][0]}."),
             (f"What day comes after {DAYS[i]}?", f"The day after {DAYS[i]} is {DAYS[(i + 1) % 7]}.")]
    q, ans = rng.choice(opts)
    return q, rng.choice(["", "", "Good question! ", "Sure. "]) + ans


# ---------------------------------------------------------------------------------------
# Stories: a hero, a place, a small problem, a clear ending

@dataclass
class Hero:
    name: str
    desc: str
    he: str
    his: str

    @property
    def He(self) -> str:
        return cap(self.he)


def make_hero(rng: random.Random, animal: Animal | None = None, child: bool | None = None) -> Hero:
    girl = rng.random() < 0.5
    he, his = ("she", "her") if girl else ("he", "his")
    if animal is None and (child if child is not None else rng.random() < 0.6):
        return Hero(rng.choice(GIRLS if girl else BOYS), f"{rng.choice(ADJS)} {'girl' if girl else 'boy'}", he, his)
    animal = animal or rng.choice(ANIMALS)
    return Hero(rng.choice(PET_NAMES), f"{rng.choice(ADJS)} {animal.name}", he, his)


def _intro(rng, h: Hero) -> str:
    return f"{rng.choice(OPENERS)} there was {an(h.desc)} {h.desc} named {h.name}."


def _lost(rng, h, f, place):
    c, obj = rng.choice, rng.choice(OBJECTS)
    near, behind, spot = rng.sample(PLACES[place], 3)
    return [f"{h.name} had {an(obj)} {obj} that {h.he} loved very much.",
            c([f"{h.He} took it everywhere, even to bed.", f"Every day, {h.he} played with it."]),
            f"One day, {h.name} went to {place} with {h.his} {obj}.", f"{h.He} played until the sun was low.",
            f"When it was time to go home, the {obj} was gone!", c([f"{h.name} felt sad and started to cry.", f"{h.name} was very worried."]),
            f"Then {f.name}, {an(f.desc)} {f.desc}, came by. \"Why are you sad?\" asked {f.name}.",
            f"\"I lost my {obj},\" said {h.name}. \"I will help you look,\" said {f.name}.",
            f"They looked near {near}. They looked behind {behind}.",
            c([f"At last, {f.name} saw the {obj} next to {spot}.", f"Then {h.name} saw something under {spot}. It was the {obj}!"]),
            c([f"{h.name} hugged {h.his} {obj} and said, \"Thank you, {f.name}!\"", f"\"You found it!\" cried {h.name}, and {h.he} danced with joy."])]


def _friend(rng, h, f, place):
    act, c = rng.choice(ACTIVITIES), rng.choice
    return [f"{h.name} went to {place}, but {h.he} had no one to play with.", f"{h.He} sat near {rng.choice(PLACES[place])} and felt lonely.",
            f"Then {h.he} saw {f.name}, {an(f.desc)} {f.desc}, {act}.", c([f"{h.name} wanted to say hello, but {h.he} felt shy.", f"It looked like fun, but {h.name} did not know what to say."]),
            f"At last, {h.he} walked over and said, \"Hello! Can I play too?\"", f"\"Yes, please!\" said {f.name} with a smile.",
            f"They spent the whole afternoon {act} together.", rng.choice(["They laughed and laughed.", "They had so much fun."]),
            f"When the sun went down, {h.name} was not lonely any more."]


def _rain(rng, h, f, place):
    g, inside = rng.choice(GROWNUPS), rng.choice(INDOORS)
    return [f"{h.name} wanted to go to {place} to play with {f.name}.", f"But when {h.he} looked out of the window, it was raining.",
            f"{h.name} felt sad. \"Now we cannot play,\" {h.he} said.", f"\"We can {inside},\" said {g}.",
            f"So {h.name} and {g} began to {inside}.", f"It was more fun than {h.he} thought.",
            "After a while, the rain stopped and the sun came out.", "There was a big rainbow in the sky, red, orange, yellow, green, blue and purple.",
            f"{h.name} ran outside to {place} and told {f.name} all about it."]


def _share(rng, h, f, place):
    n, treat = rng.choice([2, 4, 6, 8, 10]), rng.choice(TREATS)
    return [f"{h.name} had {number_words(n)} {treat if treat.endswith('s') else 'slices of ' + treat} in {h.his} bag.",
            f"{h.He} went to {place} to eat them.", f"There {h.he} met {f.name}, {an(f.desc)} {f.desc}, who looked hungry.",
            f"\"Did you bring a snack?\" asked {h.name}. \"No,\" said {f.name} sadly.",
            f"{h.name} thought about it. Then {h.he} gave {f.name} half.", f"Now they each had {number_words(n // 2)}.",
            rng.choice(["They ate together and talked about their favourite games.", "They sat under a tree and ate slowly."]),
            rng.choice(["Sharing made both of them happy.", f"{h.name} learned that sharing feels good."])]


def _scared(rng, h, f, place):
    fear, g = rng.choice(list(FEARS)), rng.choice(GROWNUPS)
    return [f"{h.name} was scared of {fear}.", rng.choice([f"Every time {h.he} thought about {fear}, {h.his} tummy felt funny.", f"{h.He} did not like to talk about it."]),
            f"One day, {h.name} told {g}. \"I am scared of {fear},\" {h.he} said.", f"{g} gave {h.name} a hug. \"{FEARS[fear]}\"",
            rng.choice([f"{h.name} took a deep breath.", f"{h.name} held {g}'s hand and counted to three."]), f"{h.He} tried again, and this time {h.he} was brave.",
            f"\"I did it!\" said {h.name}. {g} was very proud.", f"After that, {h.name} was not scared of {fear} any more."]


def _race(rng, h, f, place):
    goal = rng.choice(PLACES[place])
    return [f"{h.name} and {f.name} were at {place}.", f"\"Let us race to {goal}!\" said {f.name}.",
            "\"Ready, set, go!\" They ran as fast as they could.", f"{h.name} was in front, but then {f.name} tripped and fell.",
            f"{h.name} stopped and ran back. \"Are you hurt?\" {h.he} asked.", rng.choice([f"{f.name} had a small scrape on the knee.", f"\"Just a little,\" said {f.name}."]),
            f"{h.name} helped {f.name} up, and they walked to {goal} together.", "Helping a friend was better than winning."]


def _bake(rng, h, f, place):
    g, treat = rng.choice(GROWNUPS), rng.choice(TREATS)
    return [f"{h.name} wanted to help {g} make {treat}.", "They put flour, sugar, butter and eggs in a big bowl.",
            f"{h.name} stirred and stirred. Some flour went on {h.his} nose!", "They laughed and wiped it off.",
            f"{g} put the {treat} in the oven, and soon the kitchen smelled warm and sweet.",
            f"When {'the ' + treat + ' were' if treat.endswith('s') else 'it was'} ready, {h.name} took some to {h.his} friend {f.name}.",
            f"\"These are yummy!\" said {f.name}.", f"{h.name} felt proud, because {h.he} had helped."]


def _trip(rng, h, f, place):
    other, c = rng.choice(ANIMALS), rng.choice
    return [f"{h.name} wanted to see {place}, which was far from home.", f"So one morning, {h.he} set off on a long walk.",
            f"Along the way, {h.name} met {other.a}. {cap(other.plural)} live {other.home}.",
            f"\"Which way to {place}?\" asked {h.name}. \"Follow the path and turn left,\" said the {other.name}.",
            f"At last, {h.name} saw {rng.choice(PLACES[place])}. It was even better than {h.he} had dreamed.",
            f"{h.He} looked at everything until {h.he} was tired.", c([f"Then {h.he} walked home and told {h.his} friend {f.name} about the trip.", f"On the way home, {h.he} sang a happy song."]),
            f"{h.name} was tired but happy."]


PLOTS = {"lost": _lost, "friend": _friend, "rain": _rain, "share": _share, "scared": _scared, "race": _race, "bake": _bake, "trip": _trip}


def story(rng: random.Random, hero: Hero | None = None, place: str | None = None) -> str:
    h = hero or make_hero(rng)
    f = make_hero(rng)
    while f.name == h.name:
        f = make_hero(rng)
    sents = [_intro(rng, h)] + rng.choice(list(PLOTS.values()))(rng, h, f, place or rng.choice(list(PLACES)))
    sents.append(rng.choice(ENDINGS).format(name=h.name))
    cut = rng.randint(3, len(sents) - 2)  # two paragraphs; no blank lines inside a document
    return " ".join(sents[:cut]) + "\n" + " ".join(sents[cut:])


# ---------------------------------------------------------------------------------------
# Arithmetic: written out, with two-digit operand pairs held out for evaluation

def _eligible(n: int) -> bool:
    # only these can be held out: worked steps use round tens and single digits, never these
    return 11 <= n <= 99 and n % 10 != 0


def held_out_pairs(seed: int) -> set[tuple[int, int]]:
    """Unordered operand pairs (lo, hi) reserved for prompts_math_eval (~1/8 of eligible)."""
    pairs = [(x, y) for x in range(11, 100) for y in range(x, 100) if _eligible(x) and _eligible(y)]
    random.Random(f"{seed}:held-out").shuffle(pairs)
    return set(pairs[: len(pairs) // 8])


def _operands(rng: random.Random, held: set, op: str, size: str) -> tuple[int, int]:
    while True:
        if op == "×":
            x, y = rng.randint(2, 12), rng.randint(2, 12)
        elif size == "small":
            x, y = rng.randint(0, 20), rng.randint(0, 20)
        else:
            x, y = rng.randint(10, 99), rng.randint(10, 99)
        if op == "-" and y > x:
            x, y = y, x
        if (min(x, y), max(x, y)) not in held:
            return x, y


def worked(x: int, op: str, y: int) -> str:
    """The steps for a two-digit sum or difference; every step pair is un-holdable."""
    if op == "+":
        t, u = x // 10 * 10 + y // 10 * 10, x % 10 + y % 10
        return f"Add the tens: {x // 10 * 10} + {y // 10 * 10} = {t}. Add the ones: {x % 10} + {y % 10} = {u}. Then {t} + {u} = {t + u}."
    mid = x - y // 10 * 10
    steps = f"Take away the tens: {x} - {y // 10 * 10} = {mid}."
    return steps + (f" Take away the ones: {mid} - {y % 10} = {mid - y % 10}." if y % 10 else "")


def math_qa(rng: random.Random, held: set) -> tuple[str, str]:
    op = rng.choice(["+", "+", "-", "-", "×"])
    size = "two" if op != "×" and rng.random() < 0.6 else "small"
    x, y = _operands(rng, held, op, size)
    word, fn = OPS[op]
    z = fn(x, y)
    q = rng.choice(MATH_QUESTIONS[op]).format(x=x, y=y)
    style = rng.random()
    if size == "two" and style < 0.6:
        body = worked(x, op, y)
    elif style < 0.8:
        body = f"{cap(number_words(x))} {word} {number_words(y)} is {number_words(z)}. {x} {op} {y} = {z}."
    else:
        body = f"{x} {op} {y} = {z}."
    return q, f"{body} The answer is {z}."


def arithmetic_doc(rng: random.Random, held: set) -> str:
    lines = []
    for _ in range(rng.randint(3, 7)):
        op = rng.choice(["+", "-", "×"])
        x, y = _operands(rng, held, op, rng.choice(["small", "small", "two"]))
        word, fn = OPS[op]
        z = fn(x, y)
        r = rng.random()
        if r < 0.25 and op != "×" and x < 21 and y < 21:
            who, thing = rng.choice(GIRLS + BOYS), rng.choice(["apples", "shells", "stickers", "marbles", "cookies", "stones"])
            act = f"found {y} more" if op == "+" else f"gave {y} away"
            lines.append(f"{who} had {x} {thing}. Then {who} {act}. Now {who} has {z} {thing}. {x} {op} {y} = {z}.")
        elif r < 0.4 and op != "×" and x > 9 and y > 9:
            lines.append(f"{x} {op} {y}: {worked(x, op, y)} So {x} {op} {y} = {z}.")
        else:
            lines.append(f"{cap(number_words(x))} {word} {number_words(y)} is {number_words(z)}. {x} {op} {y} = {z}.")
    return "\n".join(lines)


def joke_doc(rng: random.Random) -> str:
    a = rng.choice(ANIMALS)
    jokes = rng.sample(a.jokes, k=rng.randint(1, len(a.jokes)))
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
    kind = rng.choices(["joke", "math", "fact", "story", "chat"], weights=[35, 30, 20, 10, 5])[0]
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


CORPUS_MIX = {"story": 40, "facts": 25, "jokes": 12, "arithmetic": 23}  # shares of documents


def corpus_docs(rng: random.Random, held: set, target_chars: float) -> list[str]:
    make = {"story": lambda: story(rng), "facts": lambda: fact_doc(rng), "jokes": lambda: joke_doc(rng),
            "arithmetic": lambda: arithmetic_doc(rng, held)}
    docs, size = [], 0
    while size < target_chars:
        docs.append(make[rng.choices(list(CORPUS_MIX), weights=list(CORPUS_MIX.values()))[0]]())
        size += len(docs[-1]) + 2
    return docs


def joke_prompts(rng: random.Random, n: int, asks: tuple[str, ...], p_held_out: float = 0.0) -> list[dict]:
    """{"prompt", "topic"} records; a share p_held_out asks about HELD_OUT_ANIMALS."""
    held_animals = [ANIMAL[x] for x in HELD_OUT_ANIMALS]

    def make() -> dict:
        a = rng.choice(held_animals if rng.random() < p_held_out else TRAIN_ANIMALS)
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
    pj = joke_prompts(rng("prompts_jokes"), n(2000, 20), JOKE_ASKS)
    # eval: phrasings never used in training; a third asks about held-out animals
    pj_eval = joke_prompts(rng("prompts_jokes_eval"), n(300, 12), JOKE_ASKS_EVAL, p_held_out=1 / 3)
    r_math = rng("prompts_math")
    pm = math_prompts(r_math, n(2000, 20), lambda op: _operands(r_math, held, op, "two"))
    held_sorted, r_math_eval = sorted(held), rng("prompts_math_eval")
    pm_eval = math_prompts(r_math_eval, n(300, 12), lambda op: r_math_eval.choice(held_sorted))

    files = {
        "corpus.txt": "\n\n".join(docs) + "\n",
        "sft.jsonl": _jsonl(sft), "sft_eval.jsonl": _jsonl(sft_eval),
        "prompts_jokes.jsonl": _jsonl(pj), "prompts_jokes_eval.jsonl": _jsonl(pj_eval),
        "prompts_math.jsonl": _jsonl(pm), "prompts_math_eval.jsonl": _jsonl(pm_eval),
    }
    counts = {"corpus.txt": f"{len(docs)} documents", "sft.jsonl": f"{len(sft)} conversations",
              "sft_eval.jsonl": f"{len(sft_eval)} conversations", "prompts_jokes.jsonl": f"{len(pj)} prompts",
              "prompts_jokes_eval.jsonl": f"{len(pj_eval)} prompts", "prompts_math.jsonl": f"{len(pm)} prompts",
              "prompts_math_eval.jsonl": f"{len(pm_eval)} prompts"}
    files["README.md"] = _readme(seed, scale, files, counts)
    return files


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
templates in `rlhfkit/world.py`, and the same seed and scale give the same bytes.

| file | contents | size |
|---|---|---|
{rows}

- `corpus.txt`: plain text for pre-training; documents (stories, facts about animals, colours,
  places and time, animal jokes, arithmetic written out) separated by one blank line.
- `sft.jsonl`, `sft_eval.jsonl`: `{{"messages": [{{"role": ..., "content": ...}}]}}`, roles system
  (sometimes), user, assistant; some multi-turn; every conversation ends with the assistant.
  Kinds: jokes (about 40% good, the rest with one or two flaws: off topic, no pun, no
  punchline, a plain statement, rambling, repeated words, cut off), arithmetic (answers end
  with "The answer is N."), facts, short stories, small talk.
- `prompts_jokes.jsonl`: `{{"prompt", "topic"}}` RLHF prompts about {len(TRAIN_ANIMALS)} animals.
  `prompts_jokes_eval.jsonl` uses phrasings never seen in training, and a third of it asks about
  held-out animals ({", ".join(HELD_OUT_ANIMALS)}) that appear in the corpus but in no SFT joke.
- `prompts_math.jsonl`: `{{"prompt", "answer"}}` two-digit sums and differences.
  `prompts_math_eval.jsonl` uses operand pairs that appear nowhere else in this world.

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
