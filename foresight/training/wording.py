"""Instruction rewording for training: the same task in words the dataset's templates lack.

A model trained on a handful of sentence patterns ties meaning to those exact strings, and a
reworded request ("shove the crimson block leftward") then reads as nothing it knows. Rewording
each training instruction at random spreads what the model learns over wording it has never been
asked to memorise: colour words for other colour names near the object's colour, and verbs, shape
nouns, relations and directions for other words of the same WordNet senses (the *train* half of
`sim_bridge.simulator.vocabulary`), in a polite or terse sentence frame. It works on plain text,
so recorded robot data gets it as well as the simulator (colour words there stand for the colour
the name itself has).

None of these words is one the vocabulary holds out or the simulator's held-out PARAPHRASES
introduce (a test checks), so evaluation on either still measures wording the model has never seen.
"""

from __future__ import annotations

import numpy as np

from sim_bridge.simulator import vocabulary

# sentence frames around the (already reworded) instruction
FRAMES: tuple[str, ...] = ("{}", "please {}", "{} please", "now {}", "robot, {}", "can you {}", "i need you to {}",
                           "{}.", "go and {}")


def reword(instruction: str, rng: np.random.Generator, swap: float = 0.5,
           colours: dict[str, tuple[int, int, int]] | None = None) -> str:
    """`instruction` with each known word swapped for a training synonym with probability `swap`
    (`colours`: the scene's object name -> RGB, when known), in a random sentence frame. Unknown
    words pass through unchanged."""
    text = vocabulary.reword(instruction, rng, "train", vocabulary.KINDS, swap, colours)
    return FRAMES[int(rng.integers(len(FRAMES)))].format(text)
