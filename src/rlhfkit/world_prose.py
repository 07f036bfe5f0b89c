"""Prose for the embedded synthetic world (`rlhfkit.world`): fact documents, fact Q&A and short stories.

`fact_doc` and `story` write corpus documents; `fact_qa` and `story` also answer SFT requests.
Every word comes from the tables in `rlhfkit.world_data`. Only the standard library is imported.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from rlhfkit.world_data import (
    ACTIVITIES, ADJS, ANIMALS, BOYS, COLOURS, DAYS, ENDINGS, FEARS, GIRLS, GROWNUPS, INDOORS, MIXES, OBJECTS,
    OPENERS, PET_NAMES, PLACE_FACTS, PLACES, SEASONS, TREATS, _SINGULAR_THINGS, Animal, an, cap, number_words,
)
from rlhfkit.world_jokes import _fact_sentence


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

