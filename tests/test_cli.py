"""The `foresight` command."""

import json

import numpy as np
import pytest

from foresight.cli import main
from sim_bridge.common.imaging import read_image, write_png


def test_predict_writes_gif_and_contact_sheet(tmp_path, capsys):
    frame = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    write_png(tmp_path / "ctx.png", frame)
    main(["predict", "--model", "tiny-random", "--frames", str(tmp_path / "ctx.png"),
          "--instruction", "push the red block left", "--instruction", "pick up the cup",
          "--steps", "2", "--out", str(tmp_path / "out" / "pred.gif")])
    assert "predicted 2 x 7 frames at 64x64" in capsys.readouterr().out
    import imageio.v3 as iio

    gif = iio.imread(tmp_path / "out" / "pred.gif", index=None)
    assert gif.shape[0] == 8  # context + 7 predicted frames
    sheet = read_image(tmp_path / "out" / "pred.png")
    assert sheet.shape == (2 * 64 + 2, 8 * 64 + 7 * 2, 3)


def test_params_prints_the_budget(capsys):
    main(["params", "--json"])
    counts = json.loads(capsys.readouterr().out)
    assert counts["trainable_share"] <= 0.03 and counts["unet"] > 1e9


def test_a_users_error_is_one_line_and_exit_status_2(tmp_path, capsys):
    frame = np.zeros((64, 64, 3), np.uint8)
    write_png(tmp_path / "ctx.png", frame)
    for argv, message in (
        (["predict", "--model", str(tmp_path / "none"), "--frames", str(tmp_path / "ctx.png"), "--instruction", "x"],
         "foresight predict: error: " + str(tmp_path / "none") + " is not an AID model folder"),
        (["train", "tiny-turbo", "--out", str(tmp_path / "run"), "--set", "optim.stepz=3"],
         "foresight train: error: unknown config keys in optim: ['stepz']"),
    ):
        with pytest.raises(SystemExit) as exit:
            main(argv)
        assert exit.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(message) and "Traceback" not in "\n".join(err)
    with pytest.raises(ValueError, match="unknown config keys"):  # -v: the exception itself
        main(["-v", "train", "tiny-turbo", "--out", str(tmp_path / "run"), "--set", "optim.stepz=3"])
