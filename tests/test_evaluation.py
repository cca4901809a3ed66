"""`foresight eval` end to end on the random tiny model (numbers meaningless, structure and plumbing real)."""

import json

from foresight.cli import main
from foresight.evaluation import EVAL_SEED_START, format_table, run_eval


def test_eval_report_has_every_variant(tmp_path):
    report = run_eval("tiny-random", n=2, seed=0, variants=("aid", "aid-paraphrase", "base", "no-de"), steps=1)
    assert report["seeds"] == [EVAL_SEED_START, EVAL_SEED_START + 2]
    assert set(report["variants"]) == {"aid", "aid-paraphrase", "base", "no-de"}
    for r in report["variants"].values():
        assert r["episodes"] == 2
        assert 0 <= r["follow_rate"] <= 1 and 0 < r["ssim"] < 1 and r["psnr"] > 0 and r["fd_stats"] >= 0
    table = format_table(report)
    assert table.count("\n") == 5 and "| base |" in table


def test_eval_cli_writes_json(tmp_path, capsys):
    main(["eval", "--model", "tiny-random", "--episodes", "2", "--variants", "aid,no-states", "--steps", "1",
          "--json", str(tmp_path / "r.json")])
    assert "| no-states |" in capsys.readouterr().out
    assert set(json.loads((tmp_path / "r.json").read_text())["variants"]) == {"aid", "no-states"}
