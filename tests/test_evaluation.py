"""`foresight eval` end to end on the random tiny model (numbers meaningless, structure and plumbing real)."""

import json

import numpy as np
import pytest

from foresight.cli import main
from foresight.evaluation import EVAL_SEED_START, format_table, predictions_figure, run_eval
from foresight.imaging import read_image


def test_eval_report_has_every_variant(tmp_path):
    report = run_eval("tiny-random", n=2, seed=0, variants=("aid", "aid-paraphrase", "base", "no-de"), steps=1)
    assert report["seeds"] == [EVAL_SEED_START, EVAL_SEED_START + 2]
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
    assert "| no-states |" in capsys.readouterr().out
    assert set(json.loads((tmp_path / "r.json").read_text())["variants"]) == {"aid", "no-states"}
    figure = read_image(tmp_path / "fig" / "pred.png")
    # 2 rows of 64 px + a 2 px gap; 8 frames (context + 7 predicted), the 8 px bar, the final frame; scaled 2x
    assert figure.shape == (2 * (2 * 64 + 2), 2 * (8 * 66 - 2 + 8 + 64), 3)


def test_predictions_figure_puts_the_recorded_final_frame_after_a_white_bar():
    from sim_bridge.tabletop import make_episode

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
