"""`foresight eval` end to end on the random tiny model (numbers meaningless, structure and plumbing real),
on simulator and on recorded episodes, and the knock-outs as a load-time option."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from test_bridge_raw import write_trajectory

from foresight.cli import main
from foresight.evaluation import (
    REWORD_VARIANTS,
    format_table,
    predictions_figure,
    recorded_clips,
    reworded_episodes,
    run_eval,
    run_eval_recorded,
    variant_pipeline,
)
from foresight.model_dir import LoadedModel, load_model, save_model_dir
from foresight.pipeline import ForesightPipeline
from sim_bridge.common.imaging import read_image
from sim_bridge.data.episode_io import write_episode
from sim_bridge.data.readers import find_episodes
from sim_bridge.simulator.tabletop import make_episode, make_episodes
from sim_bridge.simulator.tasks import EVAL_SEEDS, TRAINED_KINDS


def test_eval_report_has_every_variant(tmp_path):
    report = run_eval("tiny-random", n=2, seed=0, variants=("aid", "aid-paraphrase", "base", "no-de"), steps=1)
    assert report["seeds"] == [EVAL_SEEDS.start, EVAL_SEEDS.start + 2]
    assert set(report["variants"]) == {"aid", "aid-paraphrase", "base", "no-de"}
    for r in report["variants"].values():
        assert r["episodes"] == 2
        assert 0 <= r["follow_rate"] <= 1 and 0 < r["ssim"] < 1 and r["psnr"] > 0 and r["fd_stats"] >= 0
    table = format_table(report)
    assert table.count("\n") == 5 and "| base |" in table
    with pytest.raises(ValueError, match="at least 2 episodes"):
        run_eval("tiny-random", n=1, seed=0)


def test_eval_cli_writes_json_and_figure(tmp_path, capsys):
    main(["eval", "--model", "tiny-random", "--episodes", "2", "--variants", "aid,no-states", "--steps", "1",
          "--json", str(tmp_path / "r.json"), "--figure", str(tmp_path / "fig" / "pred.png")])
    out = capsys.readouterr().out
    assert "| no-states |" in out and "following by task kind" in out
    variants = json.loads((tmp_path / "r.json").read_text())["variants"]
    assert set(variants) == {"aid", "no-states"}
    kinds = variants["aid"]["follow_by_kind"]
    assert sum(k["episodes"] for k in kinds.values()) == 2
    for kind, k in kinds.items():
        assert k["followed"] / k["episodes"] == variants["aid"]["follow_rate_by_kind"][kind]
        assert k["ci95"][0] <= k["followed"] / k["episodes"] <= k["ci95"][1]
    figure = read_image(tmp_path / "fig" / "pred.png")
    # 2 rows of 64 px + a 2 px gap; 8 frames (context + 7 predicted), the 8 px bar, the final frame; scaled 2x
    assert figure.shape == (2 * (2 * 64 + 2), 2 * (8 * 66 - 2 + 8 + 64), 3)


def test_eval_cli_rewording_report_scores_only_the_reworded_episodes(tmp_path, capsys):
    main(["eval", "--model", "tiny-random", "--episodes", "6", "--variants", "aid", "--rewording", "--steps", "1",
          "--json", str(tmp_path / "r.json")])
    report = json.loads((tmp_path / "r.json").read_text())["variants"]
    assert list(report) == ["aid", *REWORD_VARIANTS]
    assert report["aid"]["episodes"] == 6 and report["reword-colour"]["episodes"] == 6  # every task names a colour
    assert 0 < report["reword-relation"]["episodes"] < 6  # only "put on" and "next to" name a relation
    table = capsys.readouterr().out
    assert "| variant | episodes | follow rate |" in table and "| reword-all | 6 |" in table
    plain = list(make_episodes(range(EVAL_SEEDS.start, EVAL_SEEDS.start + 6), 32, 4, TRAINED_KINDS))
    verbs = reworded_episodes(plain, "reword-verb")
    assert verbs == reworded_episodes(plain, "reword-verb")  # the same sentences for every model
    assert all(v.instruction != p.instruction for v, p in zip(verbs, plain) if v.meta["seed"] == p.meta["seed"])
    with pytest.raises(ValueError, match="variants"):
        run_eval("tiny-random", n=2, seed=0, variants=("reword-adverb",))


def test_predictions_figure_puts_the_recorded_final_frame_after_a_white_bar():
    from sim_bridge.simulator.tabletop import make_episode

    ep = make_episode(1_000_000, size=64, num_frames=8)
    preds = np.zeros((1, 7, 64, 64, 3), np.uint8)
    figure = predictions_figure([ep], preds, context_frames=1, scale=1)
    assert np.array_equal(figure[:, :64], ep.frames[0])
    assert (figure[:, 8 * 66 - 2 : 8 * 66 + 6] == 255).all()
    assert np.array_equal(figure[:, -64:], ep.frames[-1])


def test_eval_cli_guidance_scales_reach_the_sampler(tmp_path):
    """On the embedded model (whose text changes predictions), s_T = 1 and s_T = 6 predict differently."""
    reports = []
    for s_t in ("1.0", "6.0"):
        main(["eval", "--model", "tiny", "--episodes", "2", "--variants", "aid", "--steps", "2", "--guide-every-step",
              "--guidance-frame", "1.0", "--guidance-text", s_t, "--json", str(tmp_path / f"{s_t}.json")])
        reports.append(json.loads((tmp_path / f"{s_t}.json").read_text()))
    assert [(r["guidance_frame"], r["guidance_text"]) for r in reports] == [(1.0, 1.0), (1.0, 6.0)]
    assert reports[0]["variants"]["aid"]["psnr"] != reports[1]["variants"]["aid"]["psnr"]


def _predict(model, card, episode, steps=2):
    pipe = ForesightPipeline(LoadedModel.of(model, card))
    return pipe.predict(episode.frames[None, :1], [episode.instruction], steps=steps, seed=3)


def test_knockouts_at_load_time_equal_the_old_in_place_knockouts():
    """The shipped model without adapters / DE predicts what zeroing the adapters' up-projections /
    switching off the DE branch on the live model predicted, frame for frame."""
    episode = make_episode(EVAL_SEEDS.start, size=64, num_frames=8)
    shipped = load_model("tiny")
    zeroed, card = shipped.model, shipped.card
    with torch.no_grad():
        for adapter in zeroed.unet.adapters.modules():
            if hasattr(adapter, "up"):
                adapter.up.weight.zero_()
                adapter.up.bias.zero_()
    no_adapters = load_model("tiny", knockouts=("adapters",)).model
    assert no_adapters.unet.adapters is None
    assert np.array_equal(_predict(zeroed, card, episode), _predict(no_adapters, card, episode))

    switched = load_model("tiny").model
    switched.dqformer.config = replace(switched.dqformer.config, use_de=False)
    no_de = load_model("tiny", knockouts=("de",)).model
    assert not hasattr(no_de.dqformer, "queries") and not any(k.startswith("dqformer.de_") for k in no_de.aid_state_dict())
    assert np.array_equal(_predict(switched, card, episode), _predict(no_de, card, episode))
    full = load_model("tiny").model
    assert not np.array_equal(_predict(full, card, episode), _predict(no_de, card, episode))


def test_knockout_names_are_checked_and_the_base_has_no_aid_part():
    with pytest.raises(ValueError, match="unknown knock-outs"):
        load_model("tiny-random", knockouts=("adaptors",))
    with pytest.raises(ValueError, match="knock out 'text'"):
        load_model("tiny-random", knockouts=("me", "de"))
    base = variant_pipeline("tiny", "base").model
    assert base.unet.adapters is None and base.dqformer is None and base.aid_state_dict() == {}
    no_me = load_model("tiny-random", knockouts=("me",)).model
    assert not hasattr(no_me.dqformer, "me_layers") and no_me.dqformer.config.use_de
    with pytest.raises(ValueError, match="unknown variant"):
        variant_pipeline("tiny-random", "no-text")


def _recorded_tree(root):
    """2 episodes of ours (10 frames, 64x64), 1 Bridge raw trajectory (9 frames, 480x640) usable;
    one Bridge trajectory too short for a clip, one without an instruction."""
    for seed in (0, 1):
        write_episode(make_episode(EVAL_SEEDS.start + seed, size=64, num_frames=10), root / "ours" / f"ep{seed}")
    raw = root / "bridge" / "raw" / "traj_group0"
    write_trajectory(raw / "traj0", frames=9)
    write_trajectory(raw / "traj1", frames=4)
    write_trajectory(raw / "traj2", frames=9, lang=None)
    return root


def test_recorded_clips_are_cut_evenly_and_fitted(tmp_path):
    sources = find_episodes(_recorded_tree(tmp_path))
    clips, skipped = recorded_clips(sources, num_frames=8, height=64, width=64, stride=1, per_episode=3)
    # ours: 10 frames -> starts 0, 1, 2; bridge traj0: 9 frames -> starts 0, 1 (3 evenly spread round to 2)
    assert [(c.meta["source"], c.meta["start"]) for c in clips] == [
        ("bridge/raw/traj_group0/traj0", 0), ("bridge/raw/traj_group0/traj0", 1),
        ("ours/ep0", 0), ("ours/ep0", 1), ("ours/ep0", 2), ("ours/ep1", 0), ("ours/ep1", 1), ("ours/ep1", 2)]
    assert skipped == {"too_short": 1, "no_instruction": 1}
    assert all(c.frames.shape == (8, 64, 64, 3) for c in clips)
    ours = sources[-1].load()
    assert np.array_equal(clips[-1].frames, ours.frames[2:10])
    strided, skipped = recorded_clips(sources, num_frames=5, height=64, width=64, stride=2)
    assert np.array_equal(strided[-1].frames, ours.frames[0:9:2]) and skipped["too_short"] == 1


def test_eval_on_recorded_episodes_reports_clips_and_says_when_there_is_no_i3d(tmp_path):
    root = _recorded_tree(tmp_path)
    report = run_eval_recorded("tiny-random", root, n=10, seed=0, variants=("aid", "no-states"), steps=1)
    assert report["episodes_found"] == 5 and report["episodes_used"] == 5 and report["clips"] == 3
    assert report["skipped"] == {"too_short": 1, "no_instruction": 1}
    assert report["clip"] == {"num_frames": 8, "context_frames": 1, "stride": 1, "per_episode": 1,
                              "height": 64, "width": 64}
    for r in report["variants"].values():
        assert r["clips"] == 3 and r["psnr"] > 0 and 0 < r["ssim"] < 1 and r["fd_stats"] >= 0
        assert "fvd_i3d" not in r and "follow_rate" not in r
    assert report["distance_note"].startswith("no I3D given")
    table = format_table(report)
    assert table.splitlines()[0] == "| variant | clips | PSNR | SSIM | fd_stats |" and "| no-states | 3 |" in table
    with pytest.raises(ValueError, match="aid-paraphrase"):
        run_eval_recorded("tiny-random", root, n=10, seed=0, variants=("aid-paraphrase",))
    with pytest.raises(ValueError, match="at least 2"):
        run_eval_recorded("tiny-random", root / "ours" / "ep0", n=10, seed=0, variants=("aid",))


class FakeI3D(torch.nn.Module):
    """The TorchScript I3D's call signature, with 6 cheap features per clip (plumbing only)."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = True) -> torch.Tensor:
        return torch.cat([x.mean((2, 3, 4)), x.std((2, 3, 4))], dim=1)


def test_eval_cli_on_recorded_episodes_with_an_i3d_reports_fvd_and_kvd(tmp_path, capsys):
    root = _recorded_tree(tmp_path / "data")
    torch.jit.script(FakeI3D()).save(str(tmp_path / "i3d.pt"))
    main(["eval", "--model", "tiny-random", "--episodes-dir", str(root), "--variants", "aid", "--steps", "1",
          "--clips-per-episode", "2", "--i3d", str(tmp_path / "i3d.pt"), "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert "6 clips from 5 of 5 episodes" in out and "| variant | clips | PSNR | SSIM | fvd_i3d | kvd_i3d |" in out
    report = json.loads((tmp_path / "r.json").read_text())
    r = report["variants"]["aid"]
    assert r["clips"] == 6 and r["fvd_i3d"] >= 0 and np.isfinite(r["kvd_i3d"])
    assert "I3D features" in report["distance_note"]


@pytest.mark.parametrize("variant", ["aid", "no-adapters", "no-de", "base"])
def test_eval_predicts_with_the_states_a_folder_was_trained_with(tmp_path, variant):
    """A folder trained with states = "none" (the retrained no-states ablation) is evaluated with none,
    in every row; eval used to build its pipelines with template states whatever the folder said."""
    save_model_dir(load_model("tiny-random").model, tmp_path / "m", states="none")
    pipe = variant_pipeline(str(tmp_path / "m"), variant)
    assert pipe.decomposer("push the red block to the left") == ["", ""]
    template = variant_pipeline("tiny-random", variant)
    assert template.decomposer("push the red block to the left") != ["", ""]


def test_a_follow_rate_interval_is_wilsons():
    from sim_bridge.common.metrics import rate_interval

    low, high = rate_interval(20, 31)  # (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), z = 1.96
    assert abs(low - 0.4695) < 1e-3 and abs(high - 0.7889) < 1e-3
    assert rate_interval(0, 10)[0] == 0.0 and rate_interval(10, 10)[1] == 1.0
    assert rate_interval(72, 107)[1] - rate_interval(72, 107)[0] < high - low  # more episodes, a narrower interval
