"""State decomposition: the paper's MLLM step, turning an instruction into N_s phase descriptions.

Four pieces behind one call signature `decomposer(instruction, image) -> list[str]`:
- TemplateDecomposer: deterministic and offline, the default (and what the embedded model
  was trained with);
- VLMDecomposer: any local transformers image-text-to-text model folder (LLaVA, Qwen-VL), with
  the paper's prompt;
- EmptyDecomposer: no states at all (the no-states ablation, trained or at inference);
- CachedDecomposer: a JSON file keyed by instruction (and image hash when the image matters),
  so an expensive VLM runs once per instruction, as the paper did offline.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)

PAPER_PROMPT = (
    "I have a video generation instruction: <{instruction}>. Based on the image, split this process "
    "into {n} state descriptions. Answer with a numbered list, one state per line."
)

# phase templates from start to end; N_s phases are sampled evenly from this list
PHASES = (
    "the scene before anything moves; the robot is about to {instruction}",
    "the gripper approaches the object it needs in order to {instruction}",
    "the gripper holds the object and moves it: {instruction}",
    "the object reaches its destination as asked: {instruction}",
    "the task is finished ({instruction}) and the gripper moves away",
)


class StateDecomposer(Protocol):
    uses_image: bool

    def __call__(self, instruction: str, image: np.ndarray | None = None) -> list[str]: ...


class TemplateDecomposer:
    """Phase descriptions from fixed templates: same instruction, same states, no model needed."""

    uses_image = False

    def __init__(self, num_states: int) -> None:
        if num_states < 1:
            raise ValueError(f"num_states must be >= 1, got {num_states}")
        self.num_states = num_states

    def __call__(self, instruction: str, image: np.ndarray | None = None) -> list[str]:
        text = instruction.strip().rstrip(".").lower()
        if not text:
            return [""] * self.num_states
        last = len(PHASES) - 1
        picks = [round(i * last / max(1, self.num_states - 1)) for i in range(self.num_states)]
        return [PHASES[p].format(instruction=text) for p in picks]


def parse_numbered_list(text: str) -> list[str]:
    """'1. a\\n2) b\\n(3) c' -> ['a', 'b', 'c']; lines without a number are ignored."""
    items = []
    for line in text.splitlines():
        m = re.match(r"^\s*(?:\(?\d+[.):]|[-*])\s*(.+?)\s*$", line)
        if m:
            items.append(m.group(1))
    return items


class VLMDecomposer:
    """Runs a local image-text-to-text model with the paper's prompt; never downloads."""

    uses_image = True

    def __init__(self, path: str | Path, num_states: int, max_new_tokens: int = 200, device: str = "cpu") -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"VLM folder {path} has no config.json")
        self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True).to(device).eval()
        self.num_states = num_states
        self.max_new_tokens = max_new_tokens

    def __call__(self, instruction: str, image: np.ndarray | None = None) -> list[str]:
        import torch
        from PIL import Image

        if image is None:
            raise ValueError("VLMDecomposer needs the first frame")
        prompt = PAPER_PROMPT.format(instruction=instruction, n=self.num_states)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        chat = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = self.processor(images=Image.fromarray(image), text=chat, return_tensors="pt").to(self.model.device)
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        answer = self.processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        states = parse_numbered_list(answer)
        if not states:
            raise UnparsedAnswer(f"VLM answer has no numbered states: {answer[:200]!r}")
        if len(states) != self.num_states:
            logger.warning("VLM gave %d states, expected %d; padding/truncating", len(states), self.num_states)
            states = (states + [states[-1]] * self.num_states)[: self.num_states]
        return states


def image_hash(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes() + str(image.shape).encode()).hexdigest()[:16]


class UnparsedAnswer(ValueError):
    """A VLM answered without the numbered list of states the prompt asks for."""


class CachedDecomposer:
    """Wraps a decomposer with a JSON cache file (written atomically after each new entry)."""

    def __init__(self, inner: StateDecomposer, path: str | Path) -> None:
        self.inner = inner
        self.uses_image = inner.uses_image
        self.path = Path(path)
        self.entries: dict[str, list[str]] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def key(self, instruction: str, image: np.ndarray | None) -> str:
        if self.uses_image and image is not None:
            return f"{instruction}\x00{image_hash(image)}"
        return instruction

    def __call__(self, instruction: str, image: np.ndarray | None = None) -> list[str]:
        key = self.key(instruction, image)
        if key not in self.entries:
            self.entries[key] = self.inner(instruction, image)
            self._write()
        return self.entries[key]

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(self.entries, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)


class StatesCache:
    """State descriptions looked up by instruction in a JSON file that `foresight states` wrote.

    Training and serving read it without loading the VLM; an instruction missing from it is an
    error that says how to add it, never a silent fallback.
    """

    uses_image = False

    def __init__(self, path: str | Path, num_states: int) -> None:
        self.path = Path(path)
        self.entries: dict[str, list[str]] = json.loads(self.path.read_text())
        wrong = [k for k, v in self.entries.items() if len(v) != num_states]
        if wrong:
            raise ValueError(f"{self.path}: {len(wrong)} entries do not have {num_states} states, e.g. {wrong[0]!r}")

    def __call__(self, instruction: str, image: np.ndarray | None = None) -> list[str]:
        try:
            return self.entries[instruction]
        except KeyError:
            raise KeyError(f"instruction {instruction!r} is not in {self.path}; "
                           "run `foresight states` over this dataset again") from None


class EmptyDecomposer:
    """Every state description empty: a model trained or evaluated without states (an ablation)."""

    uses_image = False

    def __init__(self, num_states: int) -> None:
        self.num_states = num_states

    def __call__(self, instruction: str, image: np.ndarray | None = None) -> list[str]:
        return [""] * self.num_states


def make_decomposer(source: str, num_states: int) -> StateDecomposer:
    """'template', 'none' (no states), a JSON file of `foresight states` answers, or a local VLM folder."""
    if source == "template":
        return TemplateDecomposer(num_states)
    if source == "none":
        return EmptyDecomposer(num_states)
    path = Path(source)
    if path.suffix == ".json":
        return StatesCache(path, num_states)
    if path.is_dir():
        return VLMDecomposer(path, num_states)
    raise ValueError(f"states must be 'template', 'none', a .json cache or a VLM folder, got {source!r}")


def build_states_cache(instructions_and_frames, decomposer: StateDecomposer, path: str | Path,
                       fallback: StateDecomposer | None = None) -> tuple[int, int]:
    """Decompose each new instruction once (with the first frame it appears with) into `path`.

    Resumable: instructions already in the file are skipped. An answer without numbered states
    takes `fallback`'s states for that instruction, with a warning naming it (None: raise
    UnparsedAnswer). Returns (instructions added, of which answered by the fallback).
    """
    cache = CachedDecomposer(decomposer, path)
    known = set(cache.entries)
    added = fell_back = 0
    for instruction, frame in instructions_and_frames:
        if instruction and instruction not in known:
            try:
                cache.entries[instruction] = decomposer(instruction, frame)
            except UnparsedAnswer as e:
                if fallback is None:
                    raise
                logger.warning("%s; %r takes the fallback's states", e, instruction)
                cache.entries[instruction] = fallback(instruction, frame)
                fell_back += 1
            cache._write()
            known.add(instruction)
            added += 1
    return added, fell_back
