"""The AID training step: only adapters + DQFormer move."""

from pathlib import Path

import torch

from foresight.model_dir import build_tiny_random
from foresight.training.loss import DropoutConfig, aid_loss


def test_training_step_updates_only_trainable_parameters():
    model = build_tiny_random()
    trainable = {id(p) for p in model.trainable_parameters()}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if id(p) not in trainable}
    before = {n: p.detach().clone() for n, p in model.named_parameters() if id(p) in trainable}
    assert frozen and before
    assert all(not p.requires_grad for n, p in model.named_parameters() if n in frozen)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    video = torch.rand(2, 8, 3, 64, 64, generator=g) * 2 - 1
    for _ in range(2):
        loss = aid_loss(model, video, ["push the red block left", "pick up the cup"],
                        [["a", "b"], ["c", "d"]], generator=g)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    params = dict(model.named_parameters())
    assert all(torch.equal(frozen[n], params[n]) for n in frozen), "a frozen parameter moved"
    ups = [n for n in before if n.endswith("up.weight")]
    assert ups and all(not torch.equal(before[n], params[n]) for n in ups), "zero-init adapters did not learn"
    assert not torch.equal(before["dqformer.queries"], params["dqformer.queries"])


def test_cross_attention_is_trainable_when_asked():
    from dataclasses import replace

    from foresight.loading import build_tiny_svd
    from foresight.model_dir import TINY_RANDOM_AID, TINY_RANDOM_SVD
    from foresight.models.aid import AIDModel
    from foresight.models.encoders import TextEncoder, bundled_text_encoder_path

    cfg = replace(TINY_RANDOM_AID, train_cross_attention=True)
    model = AIDModel(build_tiny_svd(TINY_RANDOM_SVD), TextEncoder(bundled_text_encoder_path(), 16), cfg)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(".attn2." in n for n in names)
    assert not any(".attn1." in n and "unet.unet" in n for n in names)
    assert any(k.startswith("unet.") for k in model.aid_state_dict())


def test_condition_dropout_rates():
    g = torch.Generator().manual_seed(0)
    drop_frames, drop_text = DropoutConfig(text=0.1, frames=0.2, both=0.3).sample(100_000, g)
    both = (drop_frames & drop_text).float().mean().item()
    assert abs(both - 0.3) < 0.01
    assert abs(drop_text.float().mean().item() - 0.4) < 0.01
    assert abs(drop_frames.float().mean().item() - 0.5) < 0.01


def test_vae_scaling_factor_makes_latents_unit_variance():
    from foresight.training.config import load_jobs
    from foresight.training.stages import VAEStage
    from foresight.training.trainer import calibration_clips

    (cfg,) = load_jobs("tiny-vae", ("data.episodes=6", "data.kinds=[\"push\"]"))
    stage = VAEStage(cfg).eval()
    video = calibration_clips(cfg, clips=12)
    scale = stage.calibrate(video)
    assert stage.vae.config.scaling_factor == scale != 0.18215
    with torch.no_grad():
        z = stage.vae.encode(video.flatten(0, 1)).latent_dist.mode() * scale
    assert abs(z.std().item() - 1.0) < 1e-3


def test_clip_stream_is_the_same_for_any_worker_count_and_shards_by_rank():
    from foresight.states import TemplateDecomposer
    from foresight.training.data import ClipStream, SimulatorEpisodes, clip_loader

    def batches(workers: int, rank: int = 0, start: int = 0) -> list:
        stream = ClipStream(SimulatorEpisodes(50, 32, 4, ("push",)), TemplateDecomposer(2), 4, 32, 32, 1, 2, seed=3,
                            rank=rank, world=2, start_batch=start)
        it = iter(clip_loader(stream, workers))
        return [next(it) for _ in range(3)]

    single, pooled = batches(0), batches(2)
    assert all(torch.equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2] for a, b in zip(single, pooled))
    other = batches(0, rank=1)
    assert not any(torch.equal(a[0], b[0]) for a, b in zip(single, other))
    resumed = batches(0, start=1)
    assert torch.equal(resumed[0][0], single[1][0]) and single[0][2][0] == TemplateDecomposer(2)(single[0][1][0])


def test_clip_windows_keep_stride_within_the_episode():
    import numpy as np

    from foresight.training.data import clip_indices

    rng = np.random.default_rng(0)
    for _ in range(50):
        idx = clip_indices(30, 8, 3, rng)
        assert len(idx) == 8 and idx[-1] <= 29 and (np.diff(idx) == 3).all()
    assert (np.diff(clip_indices(10, 8, 3, rng)) == 1).all()  # too short for stride 3
    assert clip_indices(5, 8, 2, rng).tolist() == [0, 1, 2, 3, 4, 4, 4, 4]


def test_ablation_chain_leaves_out_one_part_per_folder():
    from foresight.training.config import load_jobs

    jobs = {job.out.split("/")[-1]: job for job in load_jobs("tiny-ablations", out="runs/a")}
    assert list(jobs) == ["full", "no-sentence-token", "no-de", "no-me", "no-states", "no-adapters"]
    assert len({(j.optim.steps, j.optim.batch, j.seed, j.model.svd) for j in jobs.values()}) == 1
    full = jobs["full"].model
    assert full.aid.dqformer.sentence_token and full.states == "template" and full.aid.adapters is not None
    assert not jobs["no-sentence-token"].model.aid.dqformer.sentence_token
    assert not jobs["no-de"].model.aid.dqformer.use_de and not jobs["no-me"].model.aid.dqformer.use_me
    assert jobs["no-states"].model.states == "none" and jobs["no-adapters"].model.aid.adapters is None


def test_chain_steps_are_checked(tmp_path):
    import pytest

    from foresight.training.config import load_jobs

    twice = tmp_path / "twice.json"
    twice.write_text('{"chain": ["tiny-aid", {"config": "tiny-aid"}]}')
    with pytest.raises(ValueError, match="same folder"):
        load_jobs(str(twice))
    typo = tmp_path / "typo.json"
    typo.write_text('{"chain": [{"config": "tiny-aid", "folders": "x"}]}')
    with pytest.raises(ValueError, match="chain step"):
        load_jobs(str(typo))


def test_presets_and_overrides():
    import json

    import pytest

    from foresight.training.config import load_jobs, preset_names

    assert {"tiny", "tiny-vae", "tiny-base", "tiny-aid", "svd-bridge", "svd-ssv2"} <= set(preset_names())
    chain = load_jobs("tiny", out="runs/x")
    assert [j.stage for j in chain] == ["vae", "base", "aid", "aid", "aid", "aid", "aid"] and chain[2].out == "runs/x/aid"
    continued = chain[3]
    assert continued.out == "runs/x/aid-continue" and continued.model.aid.dqformer.sentence_token
    for before, after in zip(chain[2:], chain[3:]):
        assert after.path(after.model.init) == before.path("{out}/model")
        assert after.path(after.model.svd) == chain[2].path(chain[2].model.svd)
    assert [(j.data.reword, j.seed) for j in chain[3:]] == [(0.0, 0), (0.5, 0), (0.5, 1), (0.6, 2)]
    assert chain[2].path(chain[2].model.svd).parts[-3:] == ("x", "base", "svd")
    bridge, ssv2 = load_jobs("svd-bridge")[0], load_jobs("svd-ssv2")[0]
    assert (bridge.model.aid.num_frames, bridge.model.aid.context_frames, bridge.model.aid.height) == (16, 1, 256)
    assert (ssv2.model.aid.num_frames, ssv2.model.aid.context_frames, ssv2.model.aid.height) == (12, 2, 256)
    assert not bridge.model.aid.train_cross_attention and chain[2].model.aid.train_cross_attention
    (job,) = load_jobs("tiny-aid", ("optim.steps=7", "model.svd=/m/svd", "mixed_precision=bf16"))
    assert (job.optim.steps, job.model.svd, job.mixed_precision, job.optim.batch) == (7, "/m/svd", "bf16", 8)
    with pytest.raises(ValueError, match="stepz"):
        load_jobs("tiny-aid", ("optim.stepz=7",))
    with pytest.raises(ValueError, match="'fp8'"):
        load_jobs("tiny-aid", ("mixed_precision=fp8",))
    with pytest.raises(FileNotFoundError, match="no-such"):
        load_jobs("no-such")
    assert json.loads(json.dumps(job.to_dict()))["optim"]["steps"] == 7
    (cont,) = load_jobs("tiny-aid-continue")
    assert cont.path(cont.model.init) == (Path(__file__).resolve().parents[1] / "foresight" / "weights" / "tiny").resolve()
    assert (cont.path(cont.model.svd) / "model_index.json").is_file() and cont.model.aid.dqformer.sentence_token


def _stage_folder(folder: Path, model, svd: Path, init: str = "", seconds: float = 60.0) -> Path:
    import json

    from foresight.model_dir import save_model_dir

    folder.mkdir(parents=True)
    config = {"stage": "aid", "seed": 0, "optim": {"batch": 8}, "model": {"svd": str(svd), "init": init}}
    (folder / "config.json").write_text(json.dumps(config))
    save_model_dir(model, folder / "model", svd=str(svd))
    (folder / "stats.json").write_text(json.dumps({"steps": 5, "seconds": seconds, "command": "foresight train x",
                                                   "commit": "abc"}))
    return folder


def test_ship_packages_a_continuation_and_keeps_the_chain(tmp_path):
    """Issue 22: shipping a stage that continued the shipped model keeps the shipped base, records
    the earlier stages from the old card and this one after them, and writes a loadable fp16 model."""
    import json

    from safetensors.torch import load_file

    from foresight.model_dir import build_tiny_random, load_model_dir, save_model_dir
    from foresight.training.ship import REPLAY, ship

    model = build_tiny_random()
    dest, base = tmp_path / "weights" / "tiny", tmp_path / "weights" / "tiny-svd"
    model.svd_components().save_pretrained(base)
    save_model_dir(model, dest, svd="../tiny-svd", card={"commands": ["foresight train --out r"], "commit": "old",
                                                          "recipe_seed": 0, "training_seconds": {"vae": 1, "aid": 2}})
    (dest / "README.md").write_text("card")
    base_bytes = {p.name: p.read_bytes() for p in base.rglob("*.safetensors")}
    run = _stage_folder(tmp_path / "run", model, base, init=str(dest), seconds=30)
    report = tmp_path / "eval.json"
    report.write_text(json.dumps({"seeds": [1_000_000, 1_000_004], "variants": {"aid": {"episodes": 4}}}))
    ship(run, report, dest=dest)
    card = json.loads((dest / "model_card.json").read_text())
    assert [(e["stage"], e["commit"]) for e in card["chain"]] == [("vae", "old"), ("aid", "old"), ("aid", "abc")]
    assert card["training_seconds"] == 33 and card["replay"] == REPLAY
    assert (dest / "README.md").read_text() == "card"
    assert json.loads((dest / "aid_config.json").read_text())["svd"] == "../tiny-svd"
    assert {p.name: p.read_bytes() for p in base.rglob("*.safetensors")} == base_bytes  # the base stays as shipped
    assert all(v.dtype == torch.float16 for v in load_file(str(dest / "aid.safetensors")).values())
    shipped = load_model_dir(dest).model
    assert shipped.dqformer is not None and not (tmp_path / "weights" / "tiny.tmp").exists()


def test_ship_follows_a_continuation_of_a_continuation_back_to_the_shipped_card(tmp_path):
    """A stage continued from another run's `model` records that run and what made it, once, whether
    or not that run was shipped in between."""
    import json

    from foresight.model_dir import build_tiny_random, save_model_dir
    from foresight.training.ship import ship

    model = build_tiny_random()
    dest, base = tmp_path / "weights" / "tiny", tmp_path / "weights" / "tiny-svd"
    model.svd_components().save_pretrained(base)
    save_model_dir(model, dest, svd="../tiny-svd", card={"commands": ["foresight train --out r"], "commit": "old",
                                                          "recipe_seed": 0, "training_seconds": {"aid": 2}})
    first = _stage_folder(tmp_path / "first", model, base, init=str(dest), seconds=30)
    second = _stage_folder(tmp_path / "second", model, base, init=str(first / "model"), seconds=20)
    report = tmp_path / "eval.json"
    report.write_text(json.dumps({"seeds": [1_000_000, 1_000_004], "variants": {"aid": {"episodes": 4}}}))
    for _ in range(2):
        ship(second, report, dest=dest)
        card = json.loads((dest / "model_card.json").read_text())
        assert [(e["commit"], e["seconds"]) for e in card["chain"]] == [("old", 2), ("abc", 30), ("abc", 20)]


def test_ship_copies_a_chain_runs_own_base(tmp_path):
    import json

    from foresight.model_dir import build_tiny_random
    from foresight.training.ship import ship

    model = build_tiny_random()
    run = tmp_path / "run"
    model.svd_components().save_pretrained(run / "base" / "svd")
    _stage_folder(run / "aid", model, run / "base" / "svd")
    report = tmp_path / "eval.json"
    report.write_text(json.dumps({"seeds": [0, 4], "variants": {"aid": {"episodes": 4}}}))
    dest = tmp_path / "weights" / "tiny"
    ship(run, report, dest=dest)
    assert (tmp_path / "weights" / "tiny-svd" / "model_index.json").is_file()
    assert [e["stage"] for e in json.loads((dest / "model_card.json").read_text())["chain"]] == ["aid"]


def test_ship_puts_a_distilled_run_beside_its_teacher_on_the_same_base(tmp_path):
    """`--name tiny-turbo`: the student references the teacher's shipped base, its card carries the
    teacher's chain then the distill stage, and the budget counts every shipped folder."""
    import json

    from foresight.model_dir import build_tiny_random, save_model_dir
    from foresight.training.ship import ship

    model = build_tiny_random()
    teacher, base = tmp_path / "weights" / "tiny", tmp_path / "weights" / "tiny-svd"
    model.svd_components().save_pretrained(base)
    save_model_dir(model, teacher, svd="../tiny-svd", card={"chain": [{"stage": "aid", "commit": "old", "seconds": 7}]})
    run = _stage_folder(tmp_path / "turbo", model, base, init=str(teacher), seconds=40)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(config | {"stage": "distill"}))
    report = tmp_path / "eval.json"
    report.write_text(json.dumps({"seeds": [0, 4], "variants": {"aid": {"episodes": 4}}}))
    dest = ship(run, report, dest=tmp_path / "weights" / "tiny-turbo")
    card = json.loads((dest / "model_card.json").read_text())
    assert [(e["stage"], e["commit"]) for e in card["chain"]] == [("aid", "old"), ("distill", "abc")]
    assert card["name"] == "tiny-turbo" and "tiny-turbo" in card["replay"]
    assert json.loads((dest / "aid_config.json").read_text())["svd"] == "../tiny-svd"
    assert not (tmp_path / "weights" / "tiny-turbo-svd").exists()
    on_disk = sum(p.stat().st_size for p in (tmp_path / "weights").rglob("*") if p.is_file())
    assert card["package_bytes"] == on_disk - (dest / "model_card.json").stat().st_size
