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

Every word comes from the tables and templates below (no fetched text); the same seed and
scale give byte-identical files. The SFT jokes are deliberately of mixed quality (about 40%
good, the rest with one or two flaws from `FLAWS`) so the SFT model samples jokes that a
preference function can tell apart; `rlhfkit.rewards.gold.joke` is that function, and it
reads the topic and pun tables defined here. Only the standard library is imported.
"""

from __future__ import annotations

import functools
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Animal:
    name: str
    plural: str
    kind: str
    home: str  # "Pelicans live {home}."
    food: str  # "Pelicans eat {food}."
    colour: str  # "Pelicans {colour}."
    legs: int | None
    sound: str | None  # "A cow says {sound}."
    facts: tuple[str, ...]  # extra sentences; {a} = "a pelican", {p} = "pelicans"
    puns: tuple[str, ...]  # pun words; matched at a word start, with s/es/ing/ed/-xxx endings
    jokes: tuple[tuple[str, str], ...]  # (setup question, punchline), each punchline has a pun

    @property
    def a(self) -> str:
        return f"{an(self.name)} {self.name}"


def an(phrase: str) -> str:
    return "an" if phrase[:1].lower() in "aeiou" else "a"


def cap(s: str) -> str:
    return s[:1].upper() + s[1:]


# fmt: off
ANIMALS: list[Animal] = [
    Animal("pelican", "pelicans", "bird", "near the sea and big lakes", "fish", "are mostly white", 2, None,
           ("{a} has a long bill with a stretchy pouch.", "{p} fly low over the water in long lines."),
           ("bill", "pouch"),
           (("Why did the pelican get kicked out of the restaurant?", "It had a very big bill!"),
            ("What did the pelican say after a huge dinner?", "Just put it on my bill!"),
            ("Where does a pelican keep its money?", "In its bill-fold!"),
            ("Why do pelicans never go hungry at the beach?", "They always pack a pouch lunch!"))),
    Animal("cow", "cows", "mammal", "on farms and in green fields", "grass", "are often black and white", 4, "moo",
           ("{p} give us milk.", "{a} spends many hours chewing."),
           ("moo", "udder", "cow-culator"),
           (("Where do cows go on a Friday night?", "To the moo-vies!"),
            ("Why did the cow cross the road?", "To get to the udder side!"),
            ("What do you call a cow that plays music?", "A moo-sician!"),
            ("How does a cow do its sums?", "With a cow-culator!"))),
    Animal("owl", "owls", "bird", "in woods and old barns", "small animals and insects", "are brown, grey or white", 2, "hoot",
           ("{p} hunt at night.", "{a} can turn its head a long way round."),
           ("hoot", "hoo", "whoo"),
           (("What do you call an owl that does magic?", "Hoo-dini!"),
            ("Why was the owl invited to every party?", "It was a real hoot!"),
            ("Why do owls never get lost?", "They always know whoo to ask!"))),
    Animal("bee", "bees", "insect", "in gardens and meadows", "nectar from flowers", "are yellow and black", 6, "buzz",
           ("{p} live together in a hive.", "{p} make honey and help flowers grow."),
           ("buzz", "honey", "honeycomb", "hive", "maybe"),
           (("What did the bee say to the flower?", "Hello, honey!"),
            ("Why do bees have sticky hair?", "Because they use honeycombs!"),
            ("What do you call a bee that cannot make up its mind?", "A maybe!"),
            ("How does a bee get to school?", "On the school buzz!"))),
    Animal("frog", "frogs", "amphibian", "in ponds and wet places", "insects", "are usually green", 4, "croak",
           ("{p} start life as tadpoles.", "{a} can jump very far."),
           ("hoppy", "croak", "flies", "bug"),
           (("Why was the frog so cheerful?", "It was feeling hoppy!"),
            ("What do frogs order at a cafe?", "French flies!"),
            ("What is a frog's favourite drink?", "Croak-a-cola!"),
            ("Why are frogs never upset?", "They eat whatever bugs them!"))),
    Animal("cat", "cats", "mammal", "in homes with people", "meat and fish", "can be black, white, orange or grey", 4, "meow",
           ("{p} sleep for most of the day.", "{a} purrs when it is happy."),
           ("purr", "meow", "cat-astrophe"),
           (("What do you call a pile of cats?", "A meow-ntain!"),
            ("Why did the cat do so well on its test?", "It was purr-fect!"),
            ("What is a cat's favourite colour?", "Purr-ple!"),
            ("What did the cat say when it lost its toy?", "What a cat-astrophe!"))),
    Animal("dog", "dogs", "mammal", "in homes with people", "meat and dog food", "can be brown, black, white or golden", 4, "woof",
           ("{p} wag their tails when they are happy.", "{a} has a very good nose."),
           ("ruff", "hot dog", "labracadabrador", "bark"),
           (("What do you call a dog magician?", "A labracadabrador!"),
            ("Why did the dog sit in the shade?", "It did not want to be a hot dog!"),
            ("What did the dog say after a long day?", "That was ruff!"),
            ("Why do dogs love trees so much?", "They like the bark!"))),
    Animal("duck", "ducks", "bird", "on ponds and rivers", "seeds, plants and small bugs", "are brown, white or green", 2, "quack",
           ("{p} have webbed feet for swimming.", "{a} keeps dry because its feathers are oily."),
           ("quack", "quackers", "duck tape", "bill"),
           (("What does a duck use to fix things?", "Duck tape!"),
            ("Why do ducks tell the best jokes?", "They always quack each other up!"),
            ("What did the duck say at the shop?", "Put it on my bill!"),
            ("What do ducks eat with their soup?", "Quackers!"))),
    Animal("penguin", "penguins", "bird", "on cold shores in the far south", "fish", "are black and white", 2, "squawk",
           ("{p} cannot fly, but they swim very fast.", "{a} slides on its belly over the snow."),
           ("ice", "igloo", "chill", "cool"),
           (("What do penguins wear on their heads?", "Ice caps!"),
            ("Why are penguins great at parties?", "They always break the ice!"),
            ("How does a penguin build its house?", "Igloos it together!"),
            ("Why do penguins never get angry?", "They just chill out!"))),
    Animal("horse", "horses", "mammal", "on farms and in fields", "grass and apples", "are brown, black, white or grey", 4, "neigh",
           ("{p} can sleep standing up.", "{a} can run very fast."),
           ("neigh", "hay", "mane", "stable"),
           (("What do you call a horse that lives next door?", "A neigh-bour!"),
            ("What is a horse's favourite street?", "Mane street!"),
            ("Why did the horse go to bed early?", "It was time to hit the hay!"),
            ("Why was the horse always so calm?", "It had a very stable life!"))),
    Animal("sheep", "sheep", "mammal", "on farms and hills", "grass", "are usually white", 4, "baa",
           ("{p} have thick wool that keeps them warm.", "{a} likes to stay close to its flock."),
           ("ewe", "baa", "shear"),
           (("What did the sheep say to its best friend?", "I love ewe!"),
            ("Where do sheep get their hair cut?", "At the baa-baa shop!"),
            ("Why did the sheep go to the party?", "It wanted a shear good time!"),
            ("What do sheep say on the first day of the year?", "Happy new ewe!"))),
    Animal("pig", "pigs", "mammal", "on farms", "corn and vegetables", "are usually pink", 4, "oink",
           ("{p} roll in mud to keep cool.", "{a} is a very clever animal."),
           ("ham", "pork", "oink", "bacon"),
           (("Why did the pig become an actor?", "Because it was a real ham!"),
            ("What do you call a pig that knows karate?", "A pork chop!"),
            ("Where do pigs park their cars?", "In the porking lot!"),
            ("Why did the pig stop lying in the sun?", "It was bacon in the heat!"))),
    Animal("bear", "bears", "mammal", "in forests and mountains", "berries, fish and roots", "are brown or black", 4, "growl",
           ("{p} sleep through the cold winter.", "{a} is very strong."),
           ("gummy", "bare", "un-bear-able", "drizzly"),
           (("What do you call a bear with no teeth?", "A gummy bear!"),
            ("Why do bears never wear shoes?", "They like to walk in bare feet!"),
            ("Why did the bear leave the loud party?", "The music was un-bear-able!"),
            ("What do you call a bear out in the rain?", "A drizzly bear!"))),
    Animal("snake", "snakes", "reptile", "in grass, deserts and forests", "small animals and eggs", "are green, brown or yellow", 0, "hiss",
           ("{p} smell with their tongues.", "{a} sheds its old skin as it grows."),
           ("hiss", "pie-thon", "scale"),
           (("What is a snake's favourite subject at school?", "Hiss-tory!"),
            ("What do you call a snake that bakes?", "A pie-thon!"),
            ("Why did the snake step on the weighing machine?", "It wanted to check its scales!"))),
    Animal("spider", "spiders", "arachnid", "in gardens, houses and sheds", "flies and other insects", "are black or brown", 8, None,
           ("{p} spin webs to catch food.", "{a} is not an insect."),
           ("web", "website", "spin"),
           (("Why are spiders so good with computers?", "They love the web!"),
            ("What did the spider do on the computer?", "It made a website!"),
            ("Why did the spider join the dance class?", "It loved to spin around!"))),
    Animal("mouse", "mice", "mammal", "in fields and in holes in walls", "seeds and grain", "are grey or brown", 4, "squeak",
           ("{p} have long tails and small ears.", "{a} can fit through a tiny hole."),
           ("squeak", "cheesy", "catfish"),
           (("What is a mouse's favourite game?", "Hide and squeak!"),
            ("Why was the mouse afraid of the water?", "Because of the catfish!"),
            ("Why did the mouse tell such bad jokes?", "They were a bit too cheesy!"))),
    Animal("elephant", "elephants", "mammal", "in grasslands and forests", "grass, leaves and fruit", "are grey", 4, "toot",
           ("{p} are the biggest animals on land.", "{a} uses its trunk to drink and to pick things up."),
           ("trunk", "irrelephant", "tusk"),
           (("Why did the elephant bring no suitcase on holiday?", "It already had a trunk!"),
            ("What do you call an elephant that does not matter?", "An irrelephant!"),
            ("Why do elephants never forget?", "They keep everything in their trunk!"))),
    Animal("monkey", "monkeys", "mammal", "in trees in warm forests", "fruit, leaves and insects", "are brown or grey", None, "ooh ooh",
           ("{p} use their long tails to hold on to branches.", "{a} lives in a big family group."),
           ("appeal", "chimp", "bananas", "monkey business"),
           (("Why did the monkey like the banana so much?", "Because it had a lot of appeal!"),
            ("What do you call a monkey that wins every race?", "A chimp-ion!"),
            ("Why did the monkey leave the noisy party?", "It was going bananas!"))),
    Animal("rabbit", "rabbits", "mammal", "in fields and burrows", "grass, carrots and leaves", "are brown, white or grey", 4, None,
           ("{p} have long ears.", "{a} can run in a zig-zag to get away."),
           ("hare", "hop", "hoppy"),
           (("Why did the rabbit go to the barber?", "It was having a bad hare day!"),
            ("What is a rabbit's favourite music?", "Hip hop!"),
            ("How do rabbits travel far away?", "By hare-plane!"))),
    Animal("chicken", "chickens", "bird", "on farms", "seeds, grain and worms", "are white, brown or red", 2, "cluck",
           ("{p} lay eggs.", "{a} cannot fly very far."),
           ("egg", "cluck", "drumstick", "fowl", "comedi-hen"),
           (("Why did the chicken join the band?", "Because it had the drumsticks!"),
            ("What do you call a chicken that tells jokes?", "A comedi-hen!"),
            ("Why did the chicken tell so many jokes?", "It thought they were egg-cellent!"),
            ("Why did the chicken get a red card?", "For fowl play!"))),
    Animal("whale", "whales", "mammal", "in the deep sea", "tiny sea animals called krill", "are blue or grey", None, None,
           ("{p} breathe air through a hole on top of their heads.", "{a} sings long, low songs."),
           ("tide", "ship", "whale of a time", "blubber"),
           (("What do whales eat for dinner?", "Fish and ships!"),
            ("Why did the whale cross the sea?", "To get to the other tide!"),
            ("Why was the whale so happy at the party?", "It had a whale of a time!"))),
    Animal("turtle", "turtles", "reptile", "in the sea, in ponds and on land", "plants and small animals", "are green or brown", 4, None,
           ("{p} carry a hard shell on their backs.", "{a} can live for a very long time."),
           ("shell", "shellfie"),
           (("Why did the turtle cross the road?", "To get to the shell station!"),
            ("What do turtles take pictures with?", "A shellfie stick!"),
            ("Why did the turtle win the talent show?", "It really came out of its shell!"))),
    Animal("lion", "lions", "mammal", "on grassy plains", "meat", "are golden", 4, "roar",
           ("{p} live in groups called prides.", "{a} sleeps for most of the day."),
           ("cheetah", "pride", "roar"),
           (("Why did the lion lose at cards?", "It was playing with a cheetah!"),
            ("Why are lions so happy with their families?", "They take a lot of pride in them!"),
            ("Why did the lion laugh so loudly at the show?", "It was roaring funny!"))),
    # the last five are held out of SFT jokes and training prompts (see HELD_OUT_ANIMALS)
    Animal("giraffe", "giraffes", "mammal", "on grassy plains", "leaves from the tops of trees", "are yellow with brown spots", 4, None,
           ("{p} are the tallest animals.", "{a} has a very long neck."),
           ("neck", "tall tale", "high five"),
           (("What do you call a giraffe that tells stories?", "A tall tale teller!"),
            ("Why do giraffes make such good friends?", "They always stick their neck out for you!"),
            ("Why did the giraffe get a job at school?", "It was great at high fives!"))),
    Animal("squirrel", "squirrels", "mammal", "in trees in parks and woods", "acorns and seeds", "are grey or red", 4, None,
           ("{p} hide food for the winter.", "{a} has a big bushy tail."),
           ("nut", "nutty", "nutcracker"),
           (("Why did the squirrel tell such silly jokes?", "It was a little nutty!"),
            ("What is a squirrel's favourite dance?", "The Nutcracker!"),
            ("What do squirrels give each other on birthdays?", "Forget-me-nuts!"))),
    Animal("octopus", "octopuses", "sea animal", "in the sea, often among rocks", "crabs and small fish", "can change colour", None, None,
           ("{a} has eight arms.", "{p} squirt ink when they are scared."),
           ("arm", "ink"),
           (("How does an octopus go into battle?", "Well armed!"),
            ("Why did the octopus get top marks?", "It was ink-redible!"),
            ("Why is an octopus such a good hugger?", "It always greets you with open arms!"))),
    Animal("crab", "crabs", "crustacean", "on beaches and in the sea", "small sea animals and plants", "are often red or orange", 10, None,
           ("{p} walk sideways.", "{a} has two big claws."),
           ("shellfish", "sea weed", "pinch"),
           (("Why did the crab never share its toys?", "Because it was shellfish!"),
            ("Why did the crab blush?", "Because the sea weed!"),
            ("Why was the crab so good at saving money?", "It was always pinching pennies!"))),
    Animal("goat", "goats", "mammal", "on farms and rocky hills", "grass and leaves", "are white, brown or black", 4, "maa",
           ("{p} are very good at climbing.", "{a} has a little beard."),
           ("goatee", "kid", "kidding", "greatest of all time"),
           (("What do you call a goat with a beard?", "A goatee!"),
            ("Why was the goat so good at jokes?", "It was always kidding!"),
            ("Why did the goat win the big race?", "It is the greatest of all time!"))),
]
# fmt: on
ANIMAL = {a.name: a for a in ANIMALS}
HELD_OUT_ANIMALS = ("giraffe", "squirrel", "octopus", "crab", "goat")
TRAIN_ANIMALS = [a for a in ANIMALS if a.name not in HELD_OUT_ANIMALS]

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


def good_joke(rng: random.Random, animal: Animal) -> str:
    setup, punch = rng.choice(animal.jokes)
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
        text = f"{rng.choice(animal.jokes)[0]} {rng.choice(FORGOT)}".strip()
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


def sft_joke(rng: random.Random, animal: Animal, p_good: float = 0.4) -> tuple[str, tuple[str, ...]]:
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
# Facts: animals, colours, places, time, numbers

COLOURS = {
    "red": ("apples", "strawberries", "fire trucks", "ladybirds"), "yellow": ("the sun", "bananas", "lemons", "sunflowers"),
    "blue": ("the sky", "the sea", "blueberries"), "green": ("grass", "leaves", "peas", "limes"),
    "orange": ("oranges", "carrots", "pumpkins"), "purple": ("grapes", "plums", "violets"),
    "white": ("snow", "milk", "clouds"), "brown": ("tree trunks", "mud", "chocolate"), "pink": ("flamingos", "candy floss"),
}
_SINGULAR_THINGS = ("the sun", "the sky", "the sea", "grass", "snow", "milk", "mud", "chocolate", "candy floss")
MIXES = (("red", "yellow", "orange"), ("blue", "yellow", "green"), ("red", "blue", "purple"),
         ("red", "white", "pink"), ("black", "white", "grey"), ("blue", "white", "light blue"))
PLACE_FACTS = {
    "the beach": ("sand, shells and waves", "The sea water at the beach is salty."),
    "the forest": ("tall trees, mushrooms and little streams", "Many animals live in the forest."),
    "the farm": ("barns, fields and tractors", "Farmers grow food and look after animals."),
    "the desert": ("sand, rocks and cactus plants", "It hardly ever rains in the desert."),
    "the city": ("tall buildings, busy roads and parks", "Many people live and work in the city."),
    "the mountains": ("rocks, snow and steep paths", "It is cold at the top of a high mountain."),
    "the pond": ("reeds, lily pads and little fish", "Frogs and ducks like the pond."),
    "the library": ("books, tables and quiet corners", "You can borrow books from the library."),
}
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
SEASONS = {"spring": "flowers start to bloom", "summer": "the days are long and warm",
           "autumn": "leaves turn orange and fall from the trees", "winter": "it is cold and sometimes it snows"}


def _fact_sentence(rng: random.Random, a: Animal) -> str:
    opts = [f"{cap(a.plural)} live {a.home}.", f"{cap(a.plural)} eat {a.food}.", f"{cap(a.plural)} {a.colour}.",
            f"{cap(a.a)} is {an(a.kind)} {a.kind}."]
    opts += [cap(f.format(a=a.a, p=a.plural)) for f in a.facts]
    if a.legs is not None:
        opts.append(f"{cap(a.a)} has {number_words(a.legs) if a.legs else 'no'} legs.")
    if a.sound:
        opts.append(f"{cap(a.a)} says {a.sound}.")
    return rng.choice(opts)


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

GIRLS = ("Lily", "Mia", "Zoe", "Ava", "Nina", "Ruby", "Ella", "Rosa", "Ivy", "Lucy", "Maya", "Anna", "Lena", "June", "Sara", "Nora", "Tess", "Amy", "Hana", "Pia")
BOYS = ("Tom", "Ben", "Sam", "Max", "Leo", "Finn", "Omar", "Jack", "Kai", "Noah", "Theo", "Eli", "Hugo", "Ravi", "Otto", "Dan", "Luca", "Adam", "Jon", "Yuki")
PET_NAMES = ("Pip", "Bo", "Dot", "Fluff", "Pepper", "Biscuit", "Sunny", "Coco", "Nutmeg", "Button", "Ziggy", "Bean", "Puddle", "Mo")
ADJS = ("little", "kind", "curious", "happy", "brave", "shy", "clever", "cheerful")
PLACES = {"the park": ("a big oak tree", "the swings", "a wooden bench", "the slide"),
          "the beach": ("a pile of shells", "the big rocks", "a sand castle", "an old boat"),
          "the forest": ("a tall pine tree", "a mossy log", "a little stream", "a ring of mushrooms"),
          "the farm": ("the red barn", "a haystack", "the muddy pond", "the old fence"),
          "the garden": ("the rose bush", "the vegetable patch", "a flower pot", "the little shed"),
          "the pond": ("the tall reeds", "a flat stone", "the wooden bridge", "the lily pads"),
          "the hill": ("a lonely tree", "a big rock", "a patch of clover", "a low wall"),
          "the market": ("the fruit stall", "a pile of boxes", "the flower cart", "the bread stand"),
          "the backyard": ("the sandbox", "the washing line", "the apple tree", "the dog house")}
OBJECTS = ("red ball", "blue kite", "toy boat", "shiny stone", "yellow hat", "soft teddy", "green toy car",
           "paper crown", "silver bell", "striped scarf", "wooden whistle", "pink ribbon")
TREATS = ("cookies", "muffins", "pancakes", "apple pie", "cupcakes", "banana bread")
GROWNUPS = ("Mom", "Dad", "Grandma", "Grandpa")
ACTIVITIES = ("building a sand castle", "looking for shells", "flying a kite", "drawing with chalk",
              "chasing butterflies", "counting the clouds", "stacking stones", "picking flowers")
INDOORS = ("build a fort with blankets", "draw pictures", "read a book together", "play a board game", "make paper boats")
FEARS = {"the dark": "The dark is just the room without the light. Everything is still there.",
         "thunder": "Thunder is only the sound the sky makes after lightning. It cannot hurt you inside.",
         "the big slide": "Hold on to the sides and go slowly. I will be at the bottom.",
         "deep water": "Keep your arms moving and stay near me. You will float."}
OPENERS = ("Once upon a time,", "One sunny morning,", "One day,", "Long ago,", "On a warm summer day,", "Once,", "One cold morning,")
ENDINGS = ("From that day on, they were the best of friends.", "It was the best day ever.",
           "That night, {name} fell asleep with a big smile.", "And {name} never forgot that day.")


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

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def number_words(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + (f"-{_ONES[n % 10]}" if n % 10 else "")
    return f"{_ONES[n // 100]} hundred" + (f" and {number_words(n % 100)}" if n % 100 else "")


def _eligible(n: int) -> bool:
    # only these can be held out: worked steps use round tens and single digits, never these
    return 11 <= n <= 99 and n % 10 != 0


def held_out_pairs(seed: int) -> set[tuple[int, int]]:
    """Unordered operand pairs (lo, hi) reserved for prompts_math_eval (~1/8 of eligible)."""
    pairs = [(x, y) for x in range(11, 100) for y in range(x, 100) if _eligible(x) and _eligible(y)]
    random.Random(f"{seed}:held-out").shuffle(pairs)
    return set(pairs[: len(pairs) // 8])


OPS = {"+": ("plus", lambda x, y: x + y), "-": ("minus", lambda x, y: x - y), "×": ("times", lambda x, y: x * y)}


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


MATH_QUESTIONS = {
    "+": ("What is {x} + {y}?", "What is {x} plus {y}?", "What's {x} + {y}?", "Can you add {x} and {y}?", "How much is {x} + {y}?", "Please work out {x} + {y}."),
    "-": ("What is {x} - {y}?", "What is {x} minus {y}?", "Take {y} away from {x}.", "How much is {x} - {y}?", "Subtract {y} from {x}."),
    "×": ("What is {x} × {y}?", "What is {x} times {y}?", "Multiply {x} by {y}.", "How much is {x} × {y}?"),
}


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

SYSTEMS = ("You are a helpful assistant.", "You are a friendly assistant who loves animals.",
           "You are a cheerful helper. Keep your answers short.", "You answer questions for children in simple words.")
JOKE_ASKS = ("Tell me a joke about {p}.", "Tell me a joke about {a}.", "Do you know any jokes about {p}?", "Can you tell me a {s} joke?",
             "I want to hear a funny joke about {p}.", "Make me laugh with a joke about {p}.", "Say something funny about {p}.",
             "Give me a joke about {a}, please.", "Got a good {s} joke?", "Please tell me a joke about {p}.",
             "Tell me your best {s} joke.", "I need a joke about {p} for my friend.")
JOKE_ASKS_EVAL = ("Could you share a joke about {p}?", "What is the funniest joke you know about {p}?", "I'd love a short joke about {a}.",
                  "Cheer me up with a {s} joke.", "Write a joke about {p}.", "Any jokes about {p}? I could use a laugh.")
PROMPT_PREFIXES = ("", "", "Hi! ", "Hello. ", "Quick one: ")
PROMPT_SUFFIXES = ("", "", " Keep it short.", " My kids love them.", " Thanks!")
STORY_ASKS = ("Tell me a short story about {a}.", "Can you tell me a bedtime story?", "Tell me a story about {who} named {name}.",
              "Write a short story that happens at {place}.", "I would like a story, please.")
CHITCHAT = (("Hello!", "Hello! How can I help you today?"), ("Thank you!", "You are welcome!"),
            ("Who are you?", "I am a small assistant. I can tell jokes, answer questions and do sums."),
            ("Good morning!", "Good morning! What would you like to talk about?"))


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
