"""State decomposition: template, VLM answer parsing, JSON cache."""

import json

import numpy as np
import pytest

from foresight.states import (
    CachedDecomposer,
    TemplateDecomposer,
    VLMDecomposer,
    make_decomposer,
    parse_numbered_list,
)


def test_template_decomposer_is_deterministic_and_sized():
    for n in (1, 2, 4, 7):
        states = TemplateDecomposer(n)("Push the red block to the left.")
        assert len(states) == n
        assert all("push the red block to the left" in s for s in states)
    d = TemplateDecomposer(4)
    assert d("pick up the cup") == d("pick up the cup")
    assert len(set(d("pick up the cup"))) == 4
    assert d("") == ["", "", "", ""]


def test_none_gives_empty_states(tmp_path):
    assert make_decomposer("none", 3)("push the red block left") == ["", "", ""]
    with pytest.raises(ValueError, match="'none'"):
        make_decomposer("nothing", 2)


def test_parse_numbered_list():
    text = "Sure:\n1. the box lies flat\n2) one end is lifted\n(3) it falls\n- it rests\nthanks"
    assert parse_numbered_list(text) == ["the box lies flat", "one end is lifted", "it falls", "it rests"]


class CountingDecomposer:
    uses_image = True

    def __init__(self):
        self.calls = 0

    def __call__(self, instruction, image=None):
        self.calls += 1
        return [f"{instruction} {self.calls} {int(image.sum()) if image is not None else -1}"]


def test_cache_keys_by_instruction_and_image(tmp_path):
    inner = CountingDecomposer()
    cache = CachedDecomposer(inner, tmp_path / "states.json")
    img_a, img_b = np.zeros((4, 4, 3), np.uint8), np.ones((4, 4, 3), np.uint8)
    first = cache("lift the box", img_a)
    assert cache("lift the box", img_a) == first and inner.calls == 1
    assert cache("lift the box", img_b) != first and inner.calls == 2
    reloaded = CachedDecomposer(CountingDecomposer(), tmp_path / "states.json")
    assert reloaded("lift the box", img_a) == first  # served from the file
    assert len(json.loads((tmp_path / "states.json").read_text())) == 2


def test_template_cache_ignores_the_image(tmp_path):
    cache = CachedDecomposer(TemplateDecomposer(2), tmp_path / "s.json")
    cache("open the drawer", np.zeros((2, 2, 3), np.uint8))
    assert list(json.loads((tmp_path / "s.json").read_text())) == ["open the drawer"]


def test_vlm_decomposer_needs_a_local_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        VLMDecomposer(tmp_path, 4)


def test_states_cache_takes_the_fallback_for_an_unparsed_answer_and_says_so(tmp_path, caplog):
    from foresight.states import UnparsedAnswer, build_states_cache

    class Garbled:
        uses_image = True

        def __call__(self, instruction, image=None):
            if "red" in instruction:
                raise UnparsedAnswer("VLM answer has no numbered states: 'zx'")
            return ["reach", "done"]

    pairs = [("push the red block", None), ("lift the disc", None), ("push the red block", None)]
    added, fell_back = build_states_cache(pairs, Garbled(), tmp_path / "s.json", TemplateDecomposer(2))
    assert (added, fell_back) == (2, 1)
    cache = json.loads((tmp_path / "s.json").read_text())
    assert cache["push the red block"] == TemplateDecomposer(2)("push the red block")
    assert cache["lift the disc"] == ["reach", "done"]
    assert "'push the red block' takes the fallback's states" in caplog.text
    with pytest.raises(UnparsedAnswer):
        build_states_cache([("push the red cube", None)], Garbled(), tmp_path / "t.json")
