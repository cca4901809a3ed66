"""Instruction text for tabletop tasks: training templates and held-out paraphrases.

Training data only ever uses TEMPLATES. PARAPHRASES say the same thing in other words and exist
to test whether a model follows the meaning of an instruction rather than memorising strings;
they must never reach training, so the two sets are kept disjoint (a test checks every rendered
sentence). Object names are "<colour> <shape>", e.g. "red block".
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class TaskWords(Protocol):
    """What a sentence needs of a task (`sim_bridge.simulator.tabletop.Task` has it)."""

    kind: str
    target: str
    direction: str | None
    ref: str | None

# Several wordings per kind, so that what a model learns is tied to the meaning rather than to
# one verb; none shares a pattern with PARAPHRASES.
# Per task kind: sentence patterns with {obj}, {ref}, {dir} (push direction or rotation sense) and
# {side} (the side of {ref} for put_next_to).
TEMPLATES: dict[str, tuple[str, ...]] = {
    "push": ("push the {obj} {dir}", "move the {obj} {dir}", "shove the {obj} {dir}", "drag the {obj} {dir}",
             "sweep the {obj} {dir}"),
    "put_on": ("put the {obj} on the {ref}", "place the {obj} on top of the {ref}",
               "stack the {obj} on the {ref}", "move the {obj} on top of the {ref}",
               "drop the {obj} on the {ref}", "carry the {obj} over to the {ref} and put it on it"),
    "put_next_to": ("put the {obj} next to the {ref}", "place the {obj} beside the {ref}",
                    "put the {obj} to the {side} of the {ref}", "move the {obj} next to the {ref}",
                    "put the {obj} by the {ref}", "move the {obj} to the {side} of the {ref}"),
    "pick_up": ("pick up the {obj}", "lift the {obj}", "raise the {obj}", "pick the {obj} up",
                "lift up the {obj}"),
    "rotate": ("rotate the {obj} {dir}", "turn the {obj} {dir}"),
}

PARAPHRASES: dict[str, tuple[str, ...]] = {
    "push": ("slide the {obj} {dir}", "the {obj} should be shifted {dir}",
             "nudge the {obj} {dir}"),
    "put_on": ("the {obj} should end up on top of the {ref}", "set the {obj} onto the {ref}",
               "lay the {obj} over the {ref}"),
    "put_next_to": ("set the {obj} alongside the {ref}", "position the {obj} close to the {ref}",
                    "the {obj} belongs on the {side} side of the {ref}"),
    "pick_up": ("grab the {obj} and raise it", "take the {obj} off the table",
                "the {obj} should be held up in the air"),
    "rotate": ("twist the {obj} {dir}", "give the {obj} a {dir} spin"),
}

# Words for task directions. Image "forward" is up (away from the camera).
_DIRECTION_WORDS = {
    "push": {"left": "to the left", "right": "to the right", "forward": "forward",
             "backward": "backward"},
    "rotate": {"clockwise": "clockwise", "counterclockwise": "counterclockwise"},
}
_PARAPHRASE_DIRECTION_WORDS = {
    "push": {"left": "leftwards", "right": "rightwards", "forward": "away from the camera",
             "backward": "towards the camera"},
    "rotate": {"clockwise": "clockwise", "counterclockwise": "anticlockwise"},
}


def instruction_for(task: TaskWords, rng: np.random.Generator | None = None,
                    paraphrase: bool = False) -> str:
    """Render `task` as a sentence; a random pattern with `rng`, else the first (canonical) one."""
    patterns = (PARAPHRASES if paraphrase else TEMPLATES)[task.kind]
    pattern = patterns[0] if rng is None else patterns[int(rng.integers(len(patterns)))]
    words = (_PARAPHRASE_DIRECTION_WORDS if paraphrase else _DIRECTION_WORDS).get(task.kind, {})
    return pattern.format(obj=task.target, ref=task.ref, side=task.direction,
                          dir=words.get(task.direction, task.direction))


def unambiguous_instruction(task: TaskWords) -> str:
    """The canonical training template, except for put_next_to, whose canonical sentence does
    not say which side: there the training template that does, so no two tasks read alike."""
    if task.kind == "put_next_to":
        pattern = next(p for p in TEMPLATES["put_next_to"] if "{side}" in p)
        return pattern.format(obj=task.target, ref=task.ref, side=task.direction)
    return instruction_for(task)
