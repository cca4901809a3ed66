import re

import numpy as np
import pytest

from foresight.training.wording import FRAMES, reword
from sim_bridge.simulator.instructions import instruction_for
from sim_bridge.simulator.tabletop import PALETTE, Scene
from sim_bridge.simulator.vocabulary import colour_words_for


def _words(sentences) -> set[str]:
    return {w for s in sentences for w in re.findall(r"[a-z]+", s.lower())}


def _rendered(paraphrase: bool) -> set[str]:
    rng, out = np.random.default_rng(0), set()
    for seed in range(20):
        for task in Scene.random(np.random.default_rng(seed)).candidate_tasks():
            out |= {instruction_for(task, rng, paraphrase) for _ in range(8)}
    return out


def test_reworded_training_instructions_never_use_held_out_paraphrase_words():
    trained, held_out = _rendered(False), _rendered(True)
    rng = np.random.default_rng(1)
    reworded = {reword(s, rng, swap=0.7) for s in trained for _ in range(4)}
    paraphrase_only = _words(held_out) - _words(trained)
    assert paraphrase_only >= {"leftwards", "slide", "nudge", "alongside", "anticlockwise"}
    assert not _words(reworded) & paraphrase_only
    assert not reworded & held_out
    assert len(reworded) > 2 * len(trained)  # it does reword


def test_reword_keeps_meaning_and_is_seeded():
    sentence = "push the red block to the left"
    outs = [reword(sentence, np.random.default_rng(s)) for s in range(60)]
    assert outs == [reword(sentence, np.random.default_rng(s)) for s in range(60)]
    assert all("left" in o and "right" not in o for o in outs)
    assert len(set(outs)) > 20
    reds = colour_words_for(PALETTE["red"], [c for n, c in PALETTE.items() if n != "red"], "train")
    swapped = [reword("lift the red block", np.random.default_rng(s), swap=1.0,
                      colours={"red block": PALETTE["red"], "blue disc": PALETTE["blue"]}) for s in range(30)]
    assert all(any(f" {name} " in f" {o} " for name in reds) for o in swapped)
    assert reword("Open The Drawer", np.random.default_rng(0), swap=1.0) in {f.format("open the drawer") for f in FRAMES}
    swapped = reword("put the cup on top of the plate", np.random.default_rng(0), swap=1.0)
    assert "on top of" not in swapped and "cup" in swapped and "plate" in swapped


def test_clip_stream_rewords_the_asked_share_and_states_follow_the_new_words():
    from foresight.states import TemplateDecomposer
    from foresight.training.data import ClipStream, SimulatorEpisodes

    episodes = SimulatorEpisodes(40, 32, 4, ("push", "put_on"))

    def clips(share: float) -> list:
        stream = ClipStream(episodes, TemplateDecomposer(2), 4, 32, 32, 1, 1, seed=5, reword=share)
        return [stream.clip(s) for s in range(16)]

    plain, all_reworded = clips(0.0), clips(1.0)
    originals = {episodes.load(i).instruction for i in range(40)}
    assert all(text in originals for _, text, _ in plain)
    assert sum(text not in originals for _, text, _ in all_reworded) >= 12
    assert all(states == TemplateDecomposer(2)(text) for _, text, states in all_reworded)


def test_reword_share_is_checked():
    from foresight.training.config import load_jobs

    with pytest.raises(ValueError, match="data.reword"):
        load_jobs("tiny-aid-reword", ("data.reword=1.5",))
    (cfg,) = load_jobs("tiny-aid-reword", ())
    assert cfg.data.reword == 0.5 and cfg.model.init == "{weights}/tiny"
