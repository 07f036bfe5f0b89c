"""Jokes of mixed quality for the embedded synthetic world, and the matching the gold preference uses.

`sft_joke` gives a good joke (from the animal's table in `rlhfkit.world_data.ANIMALS`) or one
with one or two flaws from `FLAWS`; `rlhfkit.rewards.gold.joke` scores them with `mentions`,
`has_pun` and `find_animal` from here. Only the standard library is imported.
"""

from __future__ import annotations

import functools
import random
import re

from rlhfkit.world_data import ANIMAL, TRAIN_ANIMALS, Animal, an, cap, number_words


# ---------------------------------------------------------------------------------------
# Matching (shared with rlhfkit.rewards.gold): who is mentioned, which puns are present

@functools.cache
def _name_re(animal: str) -> re.Pattern:
    a = ANIMAL[animal]
    return re.compile(rf"\b(?:{re.escape(a.name)}|{re.escape(a.plural)})\b", re.I)


@functools.cache
def _pun_re(animal: str) -> re.Pattern:
    # a pun word counts with a plain ending ("scales", "roaring") or a hyphenated tail ("moo-vies")
    puns = "|".join(re.escape(p) for p in ANIMAL[animal].puns)
    return re.compile(rf"\b(?:{puns})(?:s|es|ing|ed|-\w+)*\b", re.I)


def mentions(text: str, animal: str) -> bool:
    return bool(_name_re(animal).search(text))


def has_pun(text: str, animal: str) -> bool:
    return bool(_pun_re(animal).search(text))


def find_animal(text: str) -> str | None:
    """The animal a prompt asks about: the earliest one named (singular or plural)."""
    hits = [(m.start(), name) for name in ANIMAL if (m := _name_re(name).search(text))]
    return min(hits)[1] if hits else None


# ---------------------------------------------------------------------------------------
# Jokes of mixed quality: a good joke, then flaws that the gold preference penalises

JOKE_PREFIXES = ("", "", "", "", "Sure! ", "Here is one: ", "Okay! ", "Here you go. ")
RAMBLE_INTROS = (
    "Okay, so here is a joke that a friend of mine told me a long time ago, and I still think it is one of the best jokes I have ever heard, so get ready.",
    "Well, I know a lot of jokes, and I had to think for a while about which one to tell you, because there are so many good ones, but I picked this one.",
    "Let me tell you a joke that I heard at school one day when everyone was sitting outside in the sun and eating their lunch together.",
)
RAMBLE_OUTROS = (
    "Do you get it? It is funny because the words sound alike, and that is what makes it a joke, and I hope it made you smile today.",
    "I think that is a really funny joke, and you can tell it to your friends and your family at dinner tonight if you want to.",
    "That one always makes me laugh, even though I have heard it many, many times before, and I hope you liked it too.",
)
LITERAL_JOKES = (  # setups with plain answers: the joke shape, but no pun
    ("Why did the {s} cross the road?", "To get to the other side."),
    ("What do you call a {s} that sleeps all day?", "A tired {s}."),
    ("Why did the {s} go home early?", "Because it was tired."),
    ("What do you call a {s} in a hat?", "A {s} wearing a hat."),
    ("Why did the {s} go outside?", "It wanted to eat {food}."),
    ("Where do {p} live?", "They live {home}."),
)
FORGOT = ("", "", "I forgot the rest.", "Hmm, I do not remember the end.", "I am not sure.")
# a bad joke has one or two flaws: one "base" flaw and/or one or two "modifier" flaws
FLAWS = ("off_topic", "no_pun", "no_punchline", "statement", "rambling", "repeated", "truncated")
_BASE_FLAWS, _MODIFIERS = FLAWS[:4], FLAWS[4:]


# the world tells only each animal's first two table jokes: a 2M model trained for a few CPU
# minutes can learn ~50 jokes by heart (and which animal each belongs to), not ~90
TOLD_JOKES = 2


def told_jokes(animal: Animal) -> tuple[tuple[str, str], ...]:
    """The (setup, punchline) pairs the corpus and the SFT data tell about `animal`."""
    return animal.jokes[:TOLD_JOKES]


def good_joke(rng: random.Random, animal: Animal) -> str:
    setup, punch = rng.choice(told_jokes(animal))
    return f"{setup} {punch}"


def _literal(rng: random.Random, animal: Animal) -> str:
    setup, punch = rng.choice(LITERAL_JOKES)
    return " ".join(x.format(s=animal.name, p=animal.plural, food=animal.food, home=animal.home)
                    for x in (setup, punch))


def _repeat_words(rng: random.Random, text: str) -> str:
    words = text.split()
    if rng.random() < 0.3:  # a looped ending: the last few words again, twice
        return " ".join(words + words[-3:] * 2)
    for i in sorted(rng.sample(range(len(words)), k=min(len(words), rng.randint(2, 4))), reverse=True):
        w = words[i].rstrip("?!.,")
        words.insert(i, w)  # "the the", "get get": adjacent duplicates
    return " ".join(words)


def _truncate(rng: random.Random, text: str) -> str:
    words = text.split()
    cut = rng.randint(max(2, len(words) // 2), max(2, len(words) - 1))
    return " ".join(words[:cut]).rstrip("?!.,")


def flawed_joke(rng: random.Random, animal: Animal, flaws: tuple[str, ...]) -> str:
    """A joke about `animal` with the named flaws (from FLAWS); () gives a good joke."""
    base = next((f for f in flaws if f in _BASE_FLAWS), None)
    if base == "off_topic":
        text = good_joke(rng, rng.choice([a for a in TRAIN_ANIMALS if a is not animal]))
    elif base == "no_pun":
        text = _literal(rng, animal)
    elif base == "no_punchline":
        text = f"{rng.choice(told_jokes(animal))[0]} {rng.choice(FORGOT)}".strip()
    elif base == "statement":
        text = _fact_sentence(rng, animal)
    else:
        text = good_joke(rng, animal)
    if "rambling" in flaws:
        text = f"{rng.choice(RAMBLE_INTROS)} {text} {rng.choice(RAMBLE_OUTROS)}"
    if "repeated" in flaws:
        text = _repeat_words(rng, text)
    if "truncated" in flaws:
        text = _truncate(rng, text)
    return text


def sft_joke(rng: random.Random, animal: Animal, p_good: float = 0.45) -> tuple[str, tuple[str, ...]]:
    """-> (response, flaws): good with probability p_good, else one flaw (60%) or two."""
    if rng.random() < p_good:
        return rng.choice(JOKE_PREFIXES) + good_joke(rng, animal), ()
    if rng.random() < 0.6:
        flaws: tuple[str, ...] = (rng.choice(FLAWS),)
    else:
        flaws = (rng.choice(_BASE_FLAWS), rng.choice(_MODIFIERS))
        if rng.random() < 0.3:
            flaws = ("rambling", "repeated")
    return flawed_joke(rng, animal, flaws), flaws


# ---------------------------------------------------------------------------------------
# A plain fact sentence about an animal: the "statement" flaw here, and the sentences of
# the fact documents in rlhfkit.world

def _fact_sentence(rng: random.Random, a: Animal) -> str:
    opts = [f"{cap(a.plural)} live {a.home}.", f"{cap(a.plural)} eat {a.food}.", f"{cap(a.plural)} {a.colour}.",
            f"{cap(a.a)} is {an(a.kind)} {a.kind}."]
    opts += [cap(f.format(a=a.a, p=a.plural)) for f in a.facts]
    if a.legs is not None:
        opts.append(f"{cap(a.a)} has {number_words(a.legs) if a.legs else 'no'} legs.")
    if a.sound:
        opts.append(f"{cap(a.a)} says {a.sound}.")
    return rng.choice(opts)

