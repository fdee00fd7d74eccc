"""English sentences for the synthetic corpus: a compositional grammar with known answers.

Design choices:
- No external text corpus: a grammar of many templates with large slot vocabularies yields
  thousands of distinct, natural sentences, and for questions the answer is known by
  construction (capitals, arithmetic, colours, animals, days and months, opposites ...), which
  a later spoken-QA evaluation needs. The facts are ones SmolLM2-135M answers in text.
- Three kinds: `question` (with a short `answer`), `command` (assistant requests), and
  `statement`. Every sentence is a `Sentence` with its kind and answer (None when open).
- Deterministic: `all_sentences()` returns the same list in the same order every call; the
  corpus picks from it with a seeded RNG and splits it by a hash of the text.
- `heldout_questions()` is a separate family of question templates ("Quick question: ...")
  whose sentences never occur in `all_sentences()`, kept for the spoken-QA evaluation.
- `short_utterances()` are replies and requests of one or two words ("Yes.", "Stop.", "Seven."),
  the kind `SHORT`. People say them to an assistant all the time, and a single word gives the
  connector far less voice to judge than a sentence. They are a separate family the corpus mixes
  in only when asked (`CorpusOptions.short_fraction`), so `all_sentences()` and the sentences of
  a default corpus stay as they were.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

QUESTION, COMMAND, STATEMENT, SHORT = "question", "command", "statement", "short"
MAX_WORDS = 16  # longer sentences risk clips past a comfortable length at slow rates


@dataclass(frozen=True)
class Sentence:
    text: str  # what is spoken, with punctuation
    kind: str  # QUESTION, COMMAND, STATEMENT or SHORT
    answer: str | None = None  # a short known answer for questions, None otherwise


CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
    "China": "Beijing", "Russia": "Moscow", "Egypt": "Cairo", "Canada": "Ottawa", "Greece": "Athens",
    "Portugal": "Lisbon", "Ireland": "Dublin", "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki",
    "Denmark": "Copenhagen", "Poland": "Warsaw", "Austria": "Vienna", "Hungary": "Budapest", "Kenya": "Nairobi",
    "Peru": "Lima", "Chile": "Santiago", "Argentina": "Buenos Aires", "Mexico": "Mexico City",
    "Thailand": "Bangkok", "South Korea": "Seoul", "India": "New Delhi", "England": "London",
    "Scotland": "Edinburgh", "Belgium": "Brussels", "the Netherlands": "Amsterdam", "Turkey": "Ankara",
    "Cuba": "Havana", "Australia": "Canberra", "Iceland": "Reykjavik", "Vietnam": "Hanoi",
}
COLOURS = {
    "the sky on a clear day": "blue", "grass": "green", "snow": "white", "a ripe banana": "yellow",
    "a ripe tomato": "red", "coal": "black", "an orange": "orange", "a lemon": "yellow", "milk": "white",
    "a fire truck": "red", "a school bus": "yellow", "a pumpkin": "orange", "chocolate": "brown",
    "the sun": "yellow", "a polar bear": "white", "a crow": "black", "a strawberry": "red",
    "a lime": "green", "a frog": "green", "an elephant": "grey",
}
ANIMAL_SOUNDS = {
    "a cow": "moo", "a dog": "woof", "a cat": "meow", "a duck": "quack", "a sheep": "baa",
    "a lion": "roar", "a pig": "oink", "a horse": "neigh", "an owl": "hoot", "a snake": "hiss",
}
ANIMAL_LEGS = {
    "a spider": "eight", "a dog": "four", "a bird": "two", "an insect": "six", "a horse": "four",
    "a chicken": "two", "a cat": "four", "an ant": "six", "a cow": "four", "a duck": "two",
}
BABY_ANIMALS = {"a dog": "puppy", "a cat": "kitten", "a cow": "calf", "a sheep": "lamb", "a horse": "foal",
                "a duck": "duckling", "a frog": "tadpole", "a bear": "cub", "a goat": "kid", "a swan": "cygnet"}
OPPOSITES = {"hot": "cold", "big": "small", "up": "down", "fast": "slow", "happy": "sad", "light": "dark",
             "old": "new", "open": "closed", "early": "late", "full": "empty", "hard": "soft", "wet": "dry",
             "loud": "quiet", "high": "low", "strong": "weak", "rich": "poor", "thick": "thin", "tall": "short"}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
                "fifteen sixteen seventeen eighteen nineteen twenty").split()

# ---------------------------------------------------------------- question templates
CAPITAL_T = ["What is the capital of {x}?", "Which city is the capital of {x}?",
             "Can you tell me the capital of {x}?", "Do you know the capital city of {x}?",
             "What's the capital city of {x}?"]
COLOUR_T = ["What colour is {x}?", "What color is {x} usually?", "Can you tell me what colour {x} is?"]
SOUND_T = ["What sound does {x} make?", "What noise does {x} make?"]
LEGS_T = ["How many legs does {x} have?", "How many legs has {x} got?"]
BABY_T = ["What do you call a baby {x}?", "What is a young {x} called?"]
OPPOSITE_T = ["What is the opposite of {x}?", "What's the opposite of the word {x}?",
              "Tell me the opposite of {x}."]
AFTER_T = ["What day comes after {x}?", "Which day follows {x}?", "What is the day after {x}?"]
BEFORE_T = ["What day comes before {x}?", "Which day is just before {x}?"]
MONTH_AFTER_T = ["What month comes after {x}?", "Which month follows {x}?", "What is the month after {x}?"]
MONTH_BEFORE_T = ["What month comes before {x}?", "Which month is just before {x}?"]
PLUS_T = ["What is {a} plus {b}?", "How much is {a} plus {b}?", "What do you get if you add {a} and {b}?"]
MINUS_T = ["What is {a} minus {b}?", "How much is {a} take away {b}?"]
TIMES_T = ["What is {a} times {b}?", "How much is {a} multiplied by {b}?"]
FACTS = [
    ("How many days are in a week?", "seven"), ("How many months are in a year?", "twelve"),
    ("How many hours are in a day?", "twenty four"), ("How many minutes are in an hour?", "sixty"),
    ("What is the largest planet in our solar system?", "Jupiter"), ("What planet do we live on?", "Earth"),
    ("What is frozen water called?", "ice"), ("Which animal is known as the king of the jungle?", "lion"),
    ("What is the largest ocean on Earth?", "Pacific"), ("How many continents are there?", "seven"),
    ("What gas do plants take in from the air?", "carbon dioxide"), ("What do bees make?", "honey"),
    ("Which season comes after winter?", "spring"), ("Which season comes after summer?", "autumn"),
    ("What is the first letter of the alphabet?", "A"), ("How many sides does a triangle have?", "three"),
    ("How many sides does a square have?", "four"), ("What is the boiling point of water in Celsius?", "100"),
]

# ---------------------------------------------------------------- commands
DEVICES = ["lights", "lamp", "fan", "heater", "television", "radio", "air conditioner", "coffee machine"]
ROOMS = ["kitchen", "living room", "bedroom", "bathroom", "office", "hallway", "garage", "dining room"]
SWITCH = ["Turn on the {room} {dev}.", "Turn off the {room} {dev}.", "Please switch on the {dev} in the {room}.",
          "Switch off the {dev} in the {room}, please.", "Can you turn the {room} {dev} off?"]
TIMER = ["Set a timer for {n} minutes.", "Start a {n} minute timer.", "Remind me in {n} minutes.",
         "Set an alarm for {n} o'clock.", "Wake me up at {n} tomorrow morning."]
GENRES = ["jazz", "rock music", "classical music", "some relaxing music", "the news", "a podcast",
          "country music", "my workout playlist", "the radio", "some piano music", "the latest episode"]
PLAY = ["Play {g}.", "Please play {g} in the {room}.", "Could you put on {g}?", "Stop playing {g}."]
CONTACTS = ["my mother", "my sister", "my brother", "the doctor", "my boss", "Anna", "David", "the office",
            "my neighbour", "grandma"]
CALL = ["Call {c}.", "Send a message to {c}.", "Tell {c} that I will be late.", "Remind me to call {c} tonight."]
ITEMS = ["milk", "bread", "eggs", "apples", "coffee", "rice", "batteries", "tomatoes", "cheese", "soap"]
SHOP = ["Add {i} to my shopping list.", "Remove {i} from the shopping list.", "Remind me to buy {i} tomorrow.",
        "Do we need more {i}?"]
CITIES = ["Paris", "London", "Tokyo", "Berlin", "Madrid", "Chicago", "Toronto", "Sydney", "Boston", "Dublin"]
WEATHER = ["What's the weather like in {city} today?", "Will it rain in {city} tomorrow?",
           "How cold is it in {city} right now?", "Find me a cheap hotel in {city}.",
           "How long is the flight to {city}?"]

# ---------------------------------------------------------------- statements
SUBJECTS = ["I", "My brother", "My sister", "Our neighbour", "The teacher", "My friend", "We", "They",
            "The children", "My father", "My mother", "Our team"]
ACTIVITIES = [
    "visited the museum", "cooked pasta for dinner", "walked the dog in the park", "read a long book",
    "painted the fence", "watched a funny film", "cleaned the kitchen", "planted tomatoes in the garden",
    "went swimming at the lake", "baked a chocolate cake", "fixed the old bicycle", "missed the early train",
    "played football with friends", "wrote a letter to grandma", "bought a new coat", "forgot the umbrella",
    "took the bus to work", "learned a new song", "found a lost kitten", "painted a picture of the sea",
]
TIMES = ["yesterday", "last weekend", "this morning", "on Monday", "last night", "two days ago",
         "after lunch", "before breakfast", "last summer", "on Friday evening"]
OPINIONS = ["The {x} was really good.", "I think the {x} is too expensive.", "The {x} is closed on Sundays.",
            "I really enjoyed the {x}.", "The {x} starts at eight."]
THINGS = ["concert", "restaurant", "new cafe", "film", "museum", "library", "market", "bakery",
          "football match", "swimming pool", "train station", "art gallery"]

# ---------------------------------------------------------------- short replies and requests
REPLIES = ["Yes.", "No.", "Yes, please.", "No, thanks.", "Okay.", "Sure.", "Maybe.", "Right.", "Exactly.",
           "Of course.", "Not really.", "I agree.", "Thank you.", "Thanks.", "Hello.", "Hi there.", "Goodbye.",
           "Good morning.", "Good night.", "Sorry?", "Pardon?", "What?", "Why?", "Really?", "Nice.", "Great.",
           "Perfect.", "Wonderful.", "Never mind.", "Fine.", "Absolutely.", "Definitely not.", "Hmm, no.",
           "Oh, wow.", "Cheers.", "See you."]
ONE_WORD_REQUESTS = ["Stop.", "Wait.", "Pause.", "Continue.", "Go on.", "Cancel.", "Louder.", "Quieter.", "Next.",
                     "Again.", "Help.", "Repeat that.", "Lights on.", "Lights off.", "Volume up.", "Volume down.",
                     "Skip.", "Done.", "Ready.", "Start.", "Back.", "Play.", "Mute.", "Unmute.", "Snooze.",
                     "Tomorrow.", "Tonight.", "Later.", "Now.", "Today."]


def _number(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def _fill(templates: list[str], table: dict[str, str]) -> list[Sentence]:
    return [Sentence(t.format(x=k), QUESTION, v) for k, v in table.items() for t in templates]


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def _questions() -> list[Sentence]:
    out = _fill(CAPITAL_T, CAPITALS) + _fill(COLOUR_T, COLOURS) + _fill(SOUND_T, ANIMAL_SOUNDS)
    out += _fill(LEGS_T, ANIMAL_LEGS) + _fill(OPPOSITE_T, OPPOSITES)
    out += [Sentence(t.format(x=k.split(" ", 1)[1]), QUESTION, v) for k, v in BABY_ANIMALS.items() for t in BABY_T]
    for seq, after, before in ((DAYS, AFTER_T, BEFORE_T), (MONTHS, MONTH_AFTER_T, MONTH_BEFORE_T)):
        for i, x in enumerate(seq):
            out += [Sentence(t.format(x=x), QUESTION, seq[(i + 1) % len(seq)]) for t in after]
            out += [Sentence(t.format(x=x), QUESTION, seq[i - 1]) for t in before]
    for a, b in itertools.product(range(1, 13), range(1, 13)):
        out += [Sentence(t.format(a=_number(a), b=_number(b)), QUESTION, str(a + b)) for t in PLUS_T]
        out += [Sentence(t.format(a=_number(a), b=_number(b)), QUESTION, str(a * b)) for t in TIMES_T]
        if a > b:
            out += [Sentence(t.format(a=_number(a), b=_number(b)), QUESTION, str(a - b)) for t in MINUS_T]
    out += [Sentence(q, QUESTION, a) for q, a in FACTS]
    return out


def _commands() -> list[Sentence]:
    out = [t.format(room=r, dev=d) for t in SWITCH for r in ROOMS for d in DEVICES]
    out += [t.format(n=_number(n) if n <= 20 else n) for t in TIMER for n in range(1, 13)]
    out += [t.format(g=g, room=r) for t in PLAY for g in GENRES for r in (ROOMS if "{room}" in t else ROOMS[:1])]
    out += [t.format(c=c) for t in CALL for c in CONTACTS] + [t.format(i=i) for t in SHOP for i in ITEMS]
    out += [t.format(city=c) for t in WEATHER for c in CITIES]
    return [Sentence(_cap(s), COMMAND) for s in dict.fromkeys(out)]


def _statements() -> list[Sentence]:
    out = [f"{s} {a} {t}." for s in SUBJECTS for a in ACTIVITIES for t in TIMES]
    out += [t.format(x=x) for t in OPINIONS for x in THINGS]
    return [Sentence(s, STATEMENT) for s in out]


def all_sentences() -> list[Sentence]:
    """Every corpus sentence, deterministic order, unique texts, at most MAX_WORDS words."""
    seen: dict[str, Sentence] = {}
    for s in _questions() + _commands() + _statements():
        if s.text not in seen and len(s.text.split()) <= MAX_WORDS:
            seen[s.text] = s
    return list(seen.values())


def short_utterances() -> list[Sentence]:
    """Replies and requests of one or two words (numbers, days and colours among them), deterministic
    order, none in `all_sentences()`."""
    words = REPLIES + ONE_WORD_REQUESTS + [f"{_cap(w)}." for w in NUMBER_WORDS[1:]]
    words += [f"{d}." for d in DAYS] + [f"{_cap(c)}." for c in dict.fromkeys(COLOURS.values())]
    return [Sentence(w, SHORT) for w in dict.fromkeys(words)]


HELDOUT_PREFIX = "Quick question: "


def heldout_questions() -> list[Sentence]:
    """Spoken questions with known short answers, never in `all_sentences()` (spoken-QA eval)."""
    out = [Sentence(f"{HELDOUT_PREFIX}what is the capital of {k}?", QUESTION, v) for k, v in CAPITALS.items()]
    out += [Sentence(f"{HELDOUT_PREFIX}what colour is {k}?", QUESTION, v) for k, v in COLOURS.items()]
    out += [Sentence(f"{HELDOUT_PREFIX}how many legs does {k} have?", QUESTION, v) for k, v in ANIMAL_LEGS.items()]
    out += [Sentence(f"{HELDOUT_PREFIX}what is {_number(a)} plus {_number(b)}?", QUESTION, str(a + b))
            for a, b in itertools.product(range(2, 10, 2), range(1, 10, 3))]
    out += [Sentence(f"{HELDOUT_PREFIX}{q[0].lower()}{q[1:]}", QUESTION, a) for q, a in FACTS]
    return out
