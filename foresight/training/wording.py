"""Instruction rewording for training: the same task in words the dataset's templates lack.

A model trained on a handful of sentence patterns ties meaning to those exact strings, and a
reworded request ("slide the block leftwards") then reads as nothing it knows. Rewording each
training instruction at random (synonyms for verbs, directions and relations, plus polite or
terse sentence frames) spreads what the model learns over wording it has never been asked to
memorise. It works on plain text, so recorded robot data gets it as well as the simulator.

None of these words is one the simulator's held-out PARAPHRASES introduce (a test checks), so
evaluation on paraphrases still measures wording the model has never seen.
"""

from __future__ import annotations

import re

import numpy as np

# phrase -> training-side alternatives; a longer phrase wins over a shorter one inside it
SYNONYMS: dict[str, tuple[str, ...]] = {
    "to the left of": ("left of", "on the left of", "at the left of"),
    "to the right of": ("right of", "on the right of", "at the right of"),
    "to the left": ("toward the left", "left", "over to the left", "to the left edge"),
    "to the right": ("toward the right", "right", "over to the right", "to the right edge"),
    "forward": ("toward the back", "to the back", "ahead", "further up"),
    "backward": ("toward the front", "to the front", "toward me", "further down"),
    "push": ("press", "propel", "bump"),
    "move": ("bring", "transfer", "relocate"),
    "shove": ("push", "press"),
    "drag": ("pull", "haul"),
    "put": ("bring", "move", "transfer"),
    "place": ("put", "drop", "deposit"),
    "stack": ("pile", "put"),
    "pick up": ("hoist", "elevate", "pick"),
    "lift": ("hoist", "elevate"),
    "raise": ("hoist", "elevate", "lift"),
    "on top of": ("atop", "upon", "on the top of"),
    "on the": ("upon the", "atop the"),
    "next to": ("near", "adjacent to", "by", "beside"),
    "beside": ("near", "next to", "adjacent to"),
    "rotate": ("revolve", "swivel", "turn around"),
    "turn": ("rotate", "swivel"),
}

# sentence frames around the (already reworded) instruction
FRAMES: tuple[str, ...] = ("{}", "please {}", "{} please", "now {}", "robot, {}", "can you {}", "i need you to {}",
                           "{}.", "go and {}")

_PATTERN = re.compile(r"\b(" + "|".join(re.escape(p) for p in sorted(SYNONYMS, key=len, reverse=True)) + r")\b")


def reword(instruction: str, rng: np.random.Generator, swap: float = 0.5) -> str:
    """`instruction` with each known phrase swapped for a synonym with probability `swap`, in a
    random sentence frame. Unknown words pass through unchanged."""
    def substitute(match: re.Match) -> str:
        if rng.random() >= swap:
            return match.group(0)
        choices = SYNONYMS[match.group(0)]
        return choices[int(rng.integers(len(choices)))]

    text = _PATTERN.sub(substitute, instruction.strip().lower())
    return FRAMES[int(rng.integers(len(FRAMES)))].format(text)
