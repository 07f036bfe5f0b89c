"""The tables of the embedded synthetic world (`rlhfkit.world`): animals, names, places, phrasings.

Every word the world writes comes from here or from the templates in `rlhfkit.world` and
`rlhfkit.world_jokes`. `ANIMALS` holds each animal's facts, pun words and good jokes; the
last five (`HELD_OUT_ANIMALS`) appear in the corpus but in no SFT joke or training prompt;
`OOD_ANIMALS` appear in no training file at all (only in prompts_jokes_ood.jsonl).
Besides the tables there are only three tiny text helpers (`an`, `cap`, `number_words`)
that the tables and every generator share. Only the standard library is imported.
"""

from __future__ import annotations

from dataclasses import dataclass


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

# Out of distribution: animals that no corpus document, conversation or training prompt names
# (prompts_jokes_ood.jsonl asks about them). They are kept out of ANIMALS, which the corpus
# draws from, but are in ANIMAL, so the gold preference knows their names and puns.
OOD_ANIMALS: list[Animal] = [
    Animal("kangaroo", "kangaroos", "mammal", "on dry grassland far away", "grass and leaves", "are red, grey or brown", 2, None,
           ("{a} carries its baby in a pouch.", "{p} hop on their strong back legs."),
           ("pouch", "jumpy", "spring", "hop"),
           (("What do you call a lazy kangaroo?", "A pouch potato!"),
            ("Why did the kangaroo go to the doctor?", "It was feeling jumpy!"),
            ("What is a kangaroo's favourite season?", "Spring, of course!"))),
    Animal("zebra", "zebras", "mammal", "on wide grassy plains", "grass", "are black and white", 4, None,
           ("{p} have black and white stripes.", "{p} live together in big herds."),
           ("stripe", "stripy", "crossing"),
           (("Why did the zebra win a medal?", "It had earned its stripes!"),
            ("Where do zebras cross the road?", "At the zebra crossing!"),
            ("What does a zebra wear to bed?", "Stripy pyjamas!"))),
    Animal("tiger", "tigers", "mammal", "in thick forests", "meat", "are orange with black stripes", 4, "roar",
           ("{p} are the biggest cats of all.", "{a} likes to swim."),
           ("balanced", "roar", "spotted"),
           (("Why did the tiger eat the tightrope walker?", "It wanted a balanced meal!"),
            ("Why do tigers have stripes?", "So they do not get spotted!"),
            ("What did the tiger say after its show?", "That was a roaring success!"))),
    Animal("shark", "sharks", "fish", "in the sea", "fish and seals", "are grey", 0, None,
           ("{p} have many rows of teeth.", "{a} has to keep swimming."),
           ("fin", "ships", "swallow", "jaw"),
           (("What do sharks eat for dinner?", "Fish and ships!"),
            ("What is a shark's favourite game?", "Swallow the leader!"),
            ("Why did the shark win the race?", "It was fin-ished first!"))),
    Animal("hedgehog", "hedgehogs", "mammal", "in hedges and gardens", "insects and worms", "are brown and spiky", 4, None,
           ("{a} rolls into a ball when it is scared.", "{p} sleep through the winter."),
           ("hog", "spike", "point"),
           (("Why do hedgehogs never share their food?", "They are real hedge-hogs!"),
            ("What is a hedgehog's favourite game?", "Spike-and-seek!"),
            ("Why was the hedgehog good at arguing?", "It always got to the point!"))),
]
# fmt: on
ANIMAL = {a.name: a for a in ANIMALS + OOD_ANIMALS}
HELD_OUT_ANIMALS = ("giraffe", "squirrel", "octopus", "crab", "goat")
TRAIN_ANIMALS = [a for a in ANIMALS if a.name not in HELD_OUT_ANIMALS]

# ---------------------------------------------------------------------------------------
# Facts: colours, places, time

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

# ---------------------------------------------------------------------------------------
# Stories: names, places, things, openings and endings

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

# ---------------------------------------------------------------------------------------
# Numbers and arithmetic questions

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def number_words(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + (f"-{_ONES[n % 10]}" if n % 10 else "")
    return f"{_ONES[n // 100]} hundred" + (f" and {number_words(n % 100)}" if n % 100 else "")


OPS = {"+": ("plus", lambda x, y: x + y), "-": ("minus", lambda x, y: x - y), "×": ("times", lambda x, y: x * y)}

MATH_QUESTIONS = {
    "+": ("What is {x} + {y}?", "What is {x} plus {y}?", "What's {x} + {y}?", "Can you add {x} and {y}?", "How much is {x} + {y}?", "Please work out {x} + {y}."),
    "-": ("What is {x} - {y}?", "What is {x} minus {y}?", "Take {y} away from {x}.", "How much is {x} - {y}?", "Subtract {y} from {x}."),
    "×": ("What is {x} × {y}?", "What is {x} times {y}?", "Multiply {x} by {y}.", "How much is {x} × {y}?"),
}

# ---------------------------------------------------------------------------------------
# Conversations and prompts: system lines and how people ask

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
