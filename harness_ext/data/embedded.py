"""The embedded corpus: a small, deterministic, fictional corpus in MUSE's file layout.

Two flavours mirror MUSE's two corpora:

* ``news``: short wire-style articles about invented towns, people, companies and events
  (MUSE-News is BBC news);
* ``books``: passages of an invented fantasy saga (MUSE-Books is the Harry Potter books).

Every name, number and sentence is produced from word lists and templates in this file with a
seeded ``random.Random``, so the same :class:`CorpusSpec` always gives byte-identical files on
every machine. No text is copied from MUSE or any other source.

Each document carries the facts it states, so the KnowMem question/answer pairs are facts that
appear verbatim in the forget or retain documents. Besides MUSE's files, the corpus has
``raw/generic.json`` (documents about other entities, used to pre-train the toy model and as
"generic" calibration text) and ``knowmem/generic_qa.json`` (questions about those documents,
which teach a toy model the question-answer format without leaking forget/retain facts).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

FLAVOURS = ("news", "books")
N_ICL = 10  # MUSE uses 10 in-context QA pairs per KnowMem split.
EMBEDDED_VERSION = 1  # bump when the generated text changes


@dataclass(frozen=True)
class CorpusSpec:
    """Sizes and seed of one generated corpus (all defaults give the corpus the demo uses)."""

    flavour: str = "news"
    n_forget: int = 40
    n_retain: int = 40
    n_holdout: int = 40
    n_generic: int = 320
    seed: int = 0

    def __post_init__(self):
        if self.flavour not in FLAVOURS:
            raise ValueError(f"unknown corpus flavour {self.flavour!r}; choose one of {FLAVOURS}")
        for name in ("n_forget", "n_retain", "n_holdout"):
            if getattr(self, name) < N_ICL + 1:
                raise ValueError(f"{name} must be at least {N_ICL + 1} (ICL examples + one question)")


@dataclass
class Document:
    sentences: list[str]  # the first one is the VerbMem prompt, the rest its ground truth
    facts: list[tuple[str, str]]  # (question, answer); the answer occurs verbatim in the text

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


# --------------------------------------------------------------------------------------
# Name and word generators
# --------------------------------------------------------------------------------------

_ONSETS = ["b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "r", "s",
           "st", "t", "th", "v", "w", "z", "qu", "sh", "el", "or", "al", "an"]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ei", "ou", "ia", "y"]
_CODAS = ["", "n", "r", "l", "s", "th", "m", "nd", "rk", "st", "x", "ll", "v"]
_PLACE_ENDS = ["holt", "mere", "ford", "by", "wick", "stead", "ton", "bury", "haven", "moor",
               "dale", "crest", "well", "gate"]
_FIRST = ["Elda", "Tomas", "Ines", "Barnaby", "Wren", "Osric", "Maren", "Cato", "Liese",
          "Joran", "Petra", "Anselm", "Ysolde", "Bram", "Della", "Corvin", "Hesper", "Ludo",
          "Nell", "Rurik", "Saskia", "Tobin", "Vera", "Emrys", "Fenna", "Gideon", "Hale",
          "Ida", "Kestrel", "Lorne", "Mira", "Niall", "Odile", "Piet", "Rosalind", "Silas",
          "Thea", "Ulric", "Viola", "Alder", "Bryony", "Casimir", "Dagny", "Evander", "Flora",
          "Greer", "Hollis", "Isolde", "Jasper", "Kit", "Linnea", "Magnus", "Nyssa", "Otto"]


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                   for _ in range(syllables))


class _Names:
    """Unique invented names, never repeated within one corpus."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()

    def _unique(self, make) -> str:
        for _ in range(1000):
            name = make()
            if name not in self.used and len(name) > 2:
                self.used.add(name)
                return name
        raise RuntimeError("name space exhausted; lower the corpus size")

    def surname(self) -> str:
        return self._unique(lambda: _word(self.rng, self.rng.choice([1, 2, 2])).capitalize())

    def person(self) -> str:
        return self._unique(lambda: f"{self.rng.choice(_FIRST)} "
                                    f"{_word(self.rng, self.rng.choice([1, 2, 2])).capitalize()}")

    def place(self) -> str:
        return self._unique(lambda: (_word(self.rng, 1) + self.rng.choice(_PLACE_ENDS)).capitalize())

    def word(self) -> str:
        return self._unique(lambda: _word(self.rng, 2).capitalize())


_WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"]
_STRUCTURES = ["bridge", "library", "tram line", "harbour wall", "water tower", "concert hall",
               "hospital wing", "sports ground", "ferry terminal", "train station"]
_PARTIES = ["Lantern", "Harvest", "Granite", "Meadow", "Anchor", "Beacon", "Compass", "Thistle"]
_TEAMS = ["Rovers", "Wanderers", "Herons", "Foxes", "Mariners", "Ironsides", "Kestrels", "Millers"]
_CREATURES = ["beetle", "frog", "moth", "lizard", "snail", "orchid", "mushroom", "bat", "newt"]
_ADJ = ["golden", "spotted", "striped", "silver", "pale", "crested", "lesser", "giant", "ember"]
_INDUSTRY = ["bakery", "shipping", "textile", "software", "furniture", "bicycle", "tea", "glass"]
_WEATHER = ["snow", "flooding", "storms", "fog", "hail", "gales"]
_AGENCIES = ["Grid Authority", "Roads Office", "Weather Bureau", "Civil Guard", "Power Board"]
_ARTWORKS = ["Morning Tide", "The Quiet Orchard", "Salt and Iron", "Lamps at Dusk",
             "The Red Kite", "Winter Harbour", "Three Chimneys", "Glass River"]
_OUTLETS = ["the Courier", "the Evening Ledger", "the Gazette", "the Chronicle", "the Herald"]

_MATERIALS = ["silver", "bone", "glass", "copper", "obsidian", "oak", "amber", "iron", "jade"]
_OBJECTS = ["compass", "key", "lantern", "mirror", "dagger", "flute", "locket", "map", "ring"]
_COLOURS = ["crimson", "green", "violet", "black", "white", "blue", "grey", "gold"]
_BEASTS = ["dragon", "griffin", "basilisk", "wyvern", "unicorn", "sphinx", "kraken", "phoenix",
           "manticore", "salamander"]
_TREASURE = ["gold coins", "old books", "broken swords", "pearls", "feathers", "bones"]
_SUBJECTS = ["potions", "star reading", "old runes", "beast care", "weather charms", "herbs"]
_EFFECTS = ["light a cold fire", "mend broken glass", "open any lock", "silence a room",
            "call the wind", "make ink invisible", "freeze running water", "wake the dead trees"]
_WEAPONS = ["staff", "spear", "sword", "wand", "bow", "axe"]
_RELATIONS = ["aunt", "uncle", "grandmother", "grandfather", "cousin", "godmother"]
_PLACE_KINDS = ["Tower", "Hollow", "Keep", "Abbey", "Vale", "Spire", "Hall", "Marsh"]


# --------------------------------------------------------------------------------------
# NEWS-like documents
# --------------------------------------------------------------------------------------

def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _news_block(rng: random.Random, names: _Names, town: str, kind: int):
    """Return (sentences, facts) for one of the 7 news templates, about one town."""
    person, other = names.person(), names.person()
    n = rng.randint(3, 97)
    if kind == 0:
        s = rng.choice(_STRUCTURES)
        river = names.place()
        return ([f"The {town} town council voted on {rng.choice(_WEEKDAYS)} to build a new {s} "
                 f"across the {river} River.",
                 f"The project will be led by the engineer {person} and is expected to cost "
                 f"{n} million crowns."],
                [(f"Who will lead the new {s} project in {town}?", person),
                 (f"How much is the new {s} in {town} expected to cost?", f"{n} million crowns")])
    if kind == 1:
        party = rng.choice(_PARTIES)
        return ([f"{person} won the election for mayor of {town} with {n} percent of the vote.",
                 f"The defeated candidate, {other} of the {party} Party, said the count had been "
                 f"fair."],
                [(f"Who won the election for mayor of {town}?", person),
                 (f"Which party did {other} represent?", f"the {party} Party")])
    if kind == 2:
        team, rival = rng.choice(_TEAMS), names.place()
        a, b = rng.randint(2, 6), rng.randint(0, 1)
        return ([f"The {town} {team} beat {rival} {a} to {b} in the cup final on "
                 f"{rng.choice(_WEEKDAYS)}.",
                 f"Their captain, {person}, scored the winning goal in the {_ordinal(n)} "
                 f"minute."],
                [(f"Who captained the {town} {team}?", person),
                 (f"What was the score when the {town} {team} beat {rival}?", f"{a} to {b}")])
    if kind == 3:
        adj, creature, forest = rng.choice(_ADJ), rng.choice(_CREATURES), names.place()
        return ([f"Researchers at the University of {town} have found a new kind of {creature} in "
                 f"the {forest} Forest.",
                 f"The team, led by Professor {person}, named it the {adj} {forest} {creature}."],
                [(f"Who led the team that found the {adj} {forest} {creature}?",
                  f"Professor {person}"),
                 (f"Where was the {adj} {forest} {creature} found?", f"the {forest} Forest")])
    if kind == 4:
        company = f"{names.word()} {rng.choice(['Works', 'Holdings', 'and Sons', 'Company'])}"
        return ([f"{company}, the {rng.choice(_INDUSTRY)} firm based in {town}, will open {n} new "
                 f"shops next year.",
                 f"Its chief executive, {person}, said sales had grown for the third year in a "
                 f"row."],
                [(f"Who is the chief executive of {company}?", person),
                 (f"How many new shops will {company} open next year?", str(n))])
    if kind == 5:
        weather, town2, agency = rng.choice(_WEATHER), names.place(), rng.choice(_AGENCIES)
        return ([f"The road between {town} and {town2} was closed by heavy {weather} for "
                 f"{rng.randint(2, 9)} days.",
                 f"A spokesperson for the {agency}, {person}, said that {n} hundred homes had "
                 f"lost power."],
                [(f"What closed the road between {town} and {town2}?", f"heavy {weather}"),
                 (f"Who spoke for the {agency} about the road between {town} and {town2}?",
                  person)])
    art = rng.choice(_ARTWORKS)
    return ([f"The {town} Autumn Festival drew {n} thousand visitors this year, according to "
             f"{rng.choice(_OUTLETS)}.",
             f"The main prize went to the painter {person} for a picture called {art}."],
            [(f"Who won the main prize at the {town} Autumn Festival?", person),
             (f"What was the prize-winning picture at the {town} Autumn Festival called?", art)])


def _news_document(rng: random.Random, names: _Names) -> Document:
    town = names.place()
    month, year = rng.choice(_MONTHS), rng.randint(2019, 2031)
    sentences = [f"{town}, {month} {year}: a busy week for the town of {town}."]
    facts: list[tuple[str, str]] = []
    for kind in rng.sample(range(7), 2):
        block_sentences, block_facts = _news_block(rng, names, town, kind)
        sentences += block_sentences
        facts += block_facts
    sentences.append(rng.choice([
        "Local people said they would follow the story closely.",
        "The council will publish a full report later this month.",
        "More details are expected at a public meeting next week.",
        "Reporters were unable to reach the regional office for comment.",
    ]))
    return Document(sentences, facts)


# --------------------------------------------------------------------------------------
# BOOKS-like documents
# --------------------------------------------------------------------------------------

def _books_document(rng: random.Random, names: _Names) -> Document:
    hero, friend, mentor = names.person().split()[0], names.surname(), names.person()
    hero_full = f"{hero} {names.surname()}"
    pron = rng.choice(["her", "his"])
    place = f"the {names.word()} {rng.choice(_PLACE_KINDS)}"
    material, obj = rng.choice(_MATERIALS), rng.choice(_OBJECTS)
    colour, beast = rng.choice(_COLOURS), rng.choice(_BEASTS)
    sentences = [f"Chapter {rng.randint(2, 40)}. {hero_full} climbed the stairs of {place} with "
                 f"the {material} {obj} hidden under {pron} cloak."]
    facts = [(f"What did {hero} hide under {pron} cloak in {place}?", f"the {material} {obj}")]
    kinds = rng.sample(range(4), 2)
    for kind in kinds:
        if kind == 0:
            sentences += [f"\u201cYou must never open the {colour} door,\u201d said {mentor} to "
                          f"{hero}.",
                          f"But that night {hero} opened it and found a {beast} asleep on a heap "
                          f"of {rng.choice(_TREASURE)}."]
            facts += [(f"What did {hero} find behind the {colour} door?", f"a {beast}"),
                      (f"Who told {hero} never to open the {colour} door?", mentor)]
        elif kind == 1:
            spell, subject, effect = names.word(), rng.choice(_SUBJECTS), rng.choice(_EFFECTS)
            sentences += [f"In the lesson on {subject}, {mentor} taught them the word {spell}, "
                          f"which could {effect}.",
                          f"{friend} tried it first and set {pron} sleeve alight."]
            facts += [(f"Which word could {effect}?", spell),
                      (f"Who taught {hero} the lesson on {subject}?", mentor)]
        elif kind == 2:
            village, villain, days = names.place(), names.person(), rng.randint(2, 12)
            sentences += [f"{hero} and {friend} rode for {days} days to reach the village of "
                          f"{village}.",
                          f"There the people spoke only in whispers of {villain} and the "
                          f"{rng.choice(_WEAPONS)} of {rng.choice(_MATERIALS)}."]
            facts += [(f"Which village did {hero} and {friend} ride to?", village),
                      (f"Who did the people of {village} whisper about?", villain)]
        else:
            relative, city = names.person(), names.place()
            relation = rng.choice(_RELATIONS)
            sentences += [f"A letter arrived for {hero}, sealed with {colour} wax.",
                          f"It came from {relative}, {pron} {relation}, who lived in the city of "
                          f"{city}."]
            facts += [(f"Who sent {hero} the letter sealed with {colour} wax?", relative),
                      (f"In which city did {hero}'s {relation} live?", city)]
    sentences.append(rng.choice([
        f"{hero} said nothing, but {pron} hands were shaking.",
        "Far below, the bells of the old town began to ring.",
        f"{friend} laughed, though nobody else did.",
        "Outside, the rain had turned to snow.",
    ]))
    return Document(sentences, facts)


_MAKERS = {"news": _news_document, "books": _books_document}


# --------------------------------------------------------------------------------------
# Assembling the MUSE layout
# --------------------------------------------------------------------------------------

def _qa(doc: Document, index: int) -> dict:
    question, answer = doc.facts[index % len(doc.facts)]
    return {"question": question, "answer": answer}


def _verbmem_item(doc: Document) -> dict:
    # "prompt" is the opening sentence, "gt" the continuation (MUSE: prompt + true continuation).
    return {"prompt": doc.sentences[0], "gt": " ".join(doc.sentences[1:])}


@lru_cache(maxsize=8)
def _generate(spec: CorpusSpec) -> dict[str, object]:
    rng = random.Random(f"muse-quant-embedded/{EMBEDDED_VERSION}/{spec.flavour}/{spec.seed}")
    names = _Names(rng)
    make = _MAKERS[spec.flavour]
    docs = {split: [make(rng, names) for _ in range(n)]
            for split, n in (("forget", spec.n_forget), ("retain1", spec.n_retain),
                             ("holdout", spec.n_holdout), ("generic", spec.n_generic))}
    files: dict[str, object] = {
        f"raw/{split}.json": [d.text for d in split_docs] for split, split_docs in docs.items()
    }
    files["verbmem/forget.json"] = [_verbmem_item(d) for d in docs["forget"]]
    for split, key in (("forget", "forget"), ("retain1", "retain")):
        split_docs = docs[split]
        # ICL pairs use each document's *second* fact of the first N_ICL documents; the evaluated
        # questions use the *first* fact of every document, so no answer is given away.
        files[f"knowmem/{key}_qa_icl.json"] = [_qa(d, 1) for d in split_docs[:N_ICL]]
        files[f"knowmem/{key}_qa.json"] = [_qa(d, 0) for d in split_docs]
    files["knowmem/generic_qa.json"] = [
        {"question": q, "answer": a} for d in docs["generic"] for q, a in d.facts
    ]
    files["privleak/forget.json"] = [d.text for d in docs["forget"]]
    files["privleak/retain.json"] = [d.text for d in docs["retain1"]]
    files["privleak/holdout.json"] = [d.text for d in docs["holdout"]]
    return files


def generate(spec: CorpusSpec | None = None, **kwargs) -> dict[str, object]:
    """Return ``{relative path: JSON object}`` for one corpus, in MUSE's ``load_data.py`` layout."""
    spec = spec or CorpusSpec(**kwargs)
    # A deep copy via JSON, so callers may mutate the result without touching the cache.
    return json.loads(json.dumps(_generate(spec)))


def write(out_dir: str | Path, flavours=FLAVOURS, **spec_kwargs) -> Path:
    """Write ``<out_dir>/<flavour>/...`` for each flavour (MUSE layout) plus ``spec.json``."""
    out = Path(out_dir)
    for flavour in flavours:
        spec = CorpusSpec(flavour=flavour, **spec_kwargs)
        for rel, obj in _generate(spec).items():
            path = out / flavour / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        (out / flavour / "spec.json").write_text(
            json.dumps({"embedded_version": EMBEDDED_VERSION, **asdict(spec)}, indent=1) + "\n")
    return out
