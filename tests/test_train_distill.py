"""train_distill.py: labelled scenes, a student blind to LiDAR, a frozen teacher, one step end to end.

(The masks and each of the seven losses against hand computation: tests/test_distill_losses.py.)
"""
import os
import pickle

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train_distill
from datasets import prepare_nuscenes
from occ.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from occ.config import get_config
from occ.ema import EMA
from occ.data import select_scenes
from occ.models import build_model
from occ.models.example_inputs import example_batch

STUDENT, TEACHER = "distillocc_r50_tiny", "effocc_fusion_r18_tiny"
LOSS_NAMES = ["loss_ce", "loss_feat_fg", "loss_feat_bg", "loss_feat_empty", "loss_logit_fg", "loss_logit_bg",
              "loss_logit_empty"]


def write_teacher(path, preset=TEACHER, seed=0):
    """A fusion checkpoint as train_fusion.py writes it, with EMA weights that differ from the raw
    ones (so the test can tell which were loaded) and non-trivial BN statistics."""
    torch.manual_seed(seed)
    cfg = get_config(preset)
    model = build_model(cfg)
    ema = EMA(model)
    for value in ema.state.values():
        if value.dtype.is_floating_point:
            value.add_(0.01 * torch.randn_like(value))
    save_checkpoint(path, model=model.state_dict(), ema=ema.state_dict(), config=cfg)
    return path


def distill_args(data_root, work_dir, teacher_ckpt, *extra):
    return ["--config", STUDENT, "--teacher-ckpt", str(teacher_ckpt), "--data-root", str(data_root),
            "--work-dir", str(work_dir), *extra]


class FakeScenes(torch.utils.data.Dataset):
    """Three samples in each of ten scenes, with a GT grid."""

    def __init__(self):
        self.infos = [{"scene_token": f"scene-{s}", "token": f"{s}-{k}"} for s in range(10) for k in range(3)]

    def __len__(self):
        return len(self.infos)

    def __getitem__(self, index):
        return {"sample_token": self.infos[index]["token"], "semantics": torch.full((2, 2, 2), 4),
                "mask_camera": torch.ones(2, 2, 2, dtype=torch.bool)}


def test_labelled_fraction_marks_the_seeded_scenes_the_camera_only_run_trains_on():
    dataset = FakeScenes()
    scenes = train_distill.scene_fraction(dataset.infos, 0.4)
    assert scenes == train_distill.scene_fraction(FakeScenes().infos, 0.4)    # same seed, same scenes
    assert len(scenes) == 4
    labelled = train_distill.LabelledScenes(dataset, scenes)
    flags = [bool(labelled[i]["labelled"]) for i in range(len(labelled))]
    assert len(labelled) == 30 and sum(flags) == 12
    # the same scenes a 40 % camera-only run (train_fusion.py --scenes-fraction 0.4) keeps
    camera_only = FakeScenes()
    select_scenes(camera_only, 0.4)
    assert [info["token"] for info, flag in zip(dataset.infos, flags) if flag] == \
        [info["token"] for info in camera_only.infos]
    # an unlabelled sample carries no ground truth
    unlabelled = labelled[flags.index(False)]
    assert not unlabelled["mask_camera"].any() and not unlabelled["semantics"].any()
    assert labelled[flags.index(True)]["mask_camera"].all()


def test_the_student_never_reads_lidar():
    cfg = get_config(STUDENT)
    torch.manual_seed(0)
    student, teacher = build_model(cfg).eval(), build_model(get_config(TEACHER)).eval()
    batch = example_batch(cfg, num_points=4000, seed=0)
    moved = dict(batch, points=[p + torch.tensor([1.5, -2.0, 0.5, 0.0, 0.0]) for p in batch["points"]],
                 depth_maps=batch["depth_maps"].roll(7, dims=-1))
    with torch.no_grad():
        student_out, teacher_out = train_distill.forward_pair(student, teacher, batch)
        student_moved, teacher_moved = train_distill.forward_pair(student, teacher, moved)
    assert not torch.equal(teacher_out["occ_logits"], teacher_moved["occ_logits"])   # the change matters
    torch.testing.assert_close(student_moved["occ_logits"], student_out["occ_logits"], rtol=0, atol=0)
    torch.testing.assert_close(student_moved["bev_feat"], student_out["bev_feat"], rtol=0, atol=0)


def test_head_inheritance_and_width_checks(tmp_path):
    teacher_ckpt = write_teacher(tmp_path / "teacher" / "step_00000001.pt")
    cfg = get_config(STUDENT)
    cfg.distill.teacher_ckpt = str(teacher_ckpt)
    teacher, teacher_cfg = train_distill.load_teacher(cfg)
    assert teacher_cfg.name == TEACHER and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    ema_weights = load_checkpoint(teacher_ckpt)["ema"]["model"]
    for key, value in teacher.state_dict().items():          # EMA weights by default
        assert torch.equal(value, ema_weights[key]), key
    student = build_model(cfg)
    train_distill.inherit_head(student, teacher)
    for key, value in student.head.state_dict().items():
        assert torch.equal(value, teacher.head.state_dict()[key]), key
    narrow = get_config(STUDENT)
    narrow.model.bev_neck_channels = 32
    with pytest.raises(ValueError, match="bev_neck_channels=64"):
        train_distill.check_student_matches_teacher(build_model(narrow), teacher)
    # a checkpoint of another model than the preset's teacher is named and refused
    cfg.distill.teacher = "effocc_fusion_r50_tiny"
    with pytest.raises(ValueError, match=f"{teacher_ckpt}.*'{TEACHER}'.*distill.teacher="):
        train_distill.load_teacher(cfg)


def test_missing_teacher_checkpoint_is_named(tmp_path):
    with pytest.raises(ValueError, match="--teacher-ckpt"):
        train_distill.main(["--config", STUDENT, "--data-root", str(tmp_path), "--work-dir", str(tmp_path)])
    with pytest.raises(ValueError, match="flashocc_r50_tiny names no teacher"):
        train_distill.main(distill_args(tmp_path, tmp_path, "t.pt", "--config", "flashocc_r50_tiny"))


@pytest.fixture(scope="module")
def two_scene_root(synthetic_root, tmp_path_factory):
    """The shared synthetic world (linked, read-only), its info files, and 'mini_all': both of its
    scenes (mini_train + mini_val) as one training split."""
    root = tmp_path_factory.mktemp("train_distill_data")
    for entry in os.listdir(synthetic_root):
        os.symlink(os.path.join(synthetic_root, entry), root / entry)
    paths = prepare_nuscenes.prepare(str(root), "v1.0-mini", out_dir=str(root))
    infos = []
    for split in ("mini_train", "mini_val"):
        with open(paths[split], "rb") as f:
            infos += pickle.load(f)["infos"]
    with open(root / "occ_infos_mini_all.pkl", "wb") as f:
        pickle.dump({"version": "v1.0-mini", "split": "mini_all", "infos": infos}, f)
    return root


def test_a_training_step_moves_the_student_only_and_logs_each_loss(two_scene_root, tmp_path, monkeypatch):
    teacher_ckpt = write_teacher(tmp_path / "teacher" / "step_00000001.pt")
    loaded, load_teacher = {}, train_distill.load_teacher

    def load_teacher_and_keep(cfg, use_ema=True):
        loaded["teacher"], teacher_cfg = load_teacher(cfg, use_ema)
        loaded["teacher"].train()   # as if something had switched it: the loop must put it back in eval
        loaded["before"] = {k: v.clone() for k, v in loaded["teacher"].state_dict().items()}
        return loaded["teacher"], teacher_cfg

    monkeypatch.setattr(train_distill, "load_teacher", load_teacher_and_keep)
    counted, class_frequencies = [], train_distill.class_frequencies

    def class_frequencies_and_keep(dataset, selection=None, infos=None):
        counted.append(infos)
        return class_frequencies(dataset, selection, infos)

    monkeypatch.setattr(train_distill, "class_frequencies", class_frequencies_and_keep)
    work_dir = tmp_path / "student"
    position = train_distill.main(distill_args(two_scene_root, work_dir, teacher_ckpt, "--train-split", "mini_all",
                                               "--labelled-fraction", "0.5", "--no-val", "--max-steps", "1",
                                               "--set", "train.log_interval=1"))
    assert position.step == 1
    # the teacher: weights and BN running statistics untouched, no gradient
    teacher = loaded["teacher"]
    assert any("running_mean" in key for key in loaded["before"])
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, loaded["before"][key]), key
    assert all(p.grad is None for p in teacher.parameters())
    # the checkpoint holds the student alone (no LiDAR branch, no fuser), moved by the step
    checkpoint = load_checkpoint(latest_checkpoint(work_dir))
    student_keys = set(build_model(get_config(STUDENT)).state_dict())
    assert set(checkpoint["model"]) == student_keys and set(checkpoint["ema"]["model"]) == student_keys
    assert checkpoint["config"]["distill"]["teacher_ckpt"] == str(teacher_ckpt)
    teacher_head = teacher.head.state_dict()
    assert any(not torch.equal(checkpoint["model"][f"head.{k}"], v) for k, v in teacher_head.items())
    # each of the seven losses is its own TensorBoard scalar; the tiny student has the four losses
    # (train.loss "four") in place of the CE, weighted by the class frequencies of its labelled frames
    events = EventAccumulator(str(work_dir / "tensorboard"))
    events.Reload()
    assert get_config(STUDENT).train.loss == "four"
    assert {f"train/{name}" for name in LOSS_NAMES + ["loss_sem_scal", "loss_geo_scal", "loss_lovasz"]} \
        <= set(events.Tags()["scalars"])
    with open(two_scene_root / "occ_infos_mini_all.pkl", "rb") as f:
        labelled_scenes = train_distill.scene_fraction(pickle.load(f)["infos"], 0.5)
    assert len(counted) == 1 and len(labelled_scenes) == 1
    assert counted[0] and all(info["scene_token"] in labelled_scenes for info in counted[0])
