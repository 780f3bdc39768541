"""Active learning (occ/active.py, active_select.py, train_fusion.py --labelled): entropy, the top-K
frames, the even class split of the voxel choice, the selection file and its load errors, a loss
that ignores unselected voxels, selections that never repeat a frame, and the scripts end to end
on the small synthetic world (one training scene of 3 frames)."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import active_select
import train_fusion
from datasets.build import dataset_from_config, info_path
from datasets.labelled import LabelledFrames
from datasets.nuscenes_occ import NuScenesOccDataset, collate, load_infos, load_occ_gt
from occ import occ3d
from occ.active import (Selection, class_balanced_voxels, even_class_quotas, frame_score, load_selection,
                        random_frames, save_selection, selection_sha256, top_k_frames, voxel_entropy)
from occ.checkpoint import latest_checkpoint, load_checkpoint
from occ.config import get_config
from occ.data import move_batch
from occ.errors import DataError, UsageError
from occ.evaluation import build_model_from_checkpoint

PRESET = "effocc_lidar_tiny"


# ------------------------------------------------------------------------------- entropy, top-K

def test_entropy_of_hand_made_logits():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0],                          # uniform over 4: log 4
                           [0.0, math.log(3.0), -math.inf, -math.inf],    # p = 1/4, 3/4
                           [0.0, 0.0, -math.inf, -math.inf],              # p = 1/2, 1/2: log 2
                           [100.0, 0.0, 0.0, 0.0]])                       # almost one-hot
    expected = [math.log(4), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), math.log(2), 0.0]
    assert voxel_entropy(logits).tolist() == pytest.approx(expected, abs=1e-6)
    assert voxel_entropy(logits.reshape(2, 2, 1, 4)).shape == (2, 2, 1)


def test_frame_score_is_the_mean_entropy_inside_the_mask():
    entropy = np.array([[0.2, 0.4], [5.0, 0.9]], dtype=np.float32)
    mask = np.array([[True, True], [False, True]])
    assert frame_score(entropy, mask) == pytest.approx(0.5)                  # (0.2 + 0.4 + 0.9) / 3
    assert frame_score(entropy, np.zeros_like(mask)) == 0.0


def test_top_k_frames_highest_first_ties_in_token_order():
    scores = {"b": 0.5, "a": 0.5, "c": 0.9, "d": 0.1}
    assert top_k_frames(scores, 2) == ["c", "a"]
    assert top_k_frames(scores, 10) == ["c", "a", "b", "d"]


def test_random_frames_are_seeded_and_distinct():
    tokens = [f"t{i}" for i in range(20)]
    first = random_frames(tokens, 5, seed=3)
    assert first == random_frames(list(reversed(tokens)), 5, seed=3)       # the order given does not matter
    assert first != random_frames(tokens, 5, seed=4)
    assert len(set(first)) == 5 and sorted(random_frames(tokens, 50, seed=3)) == sorted(tokens)


# ------------------------------------------------------------------------------- the class split

def hand_made_grid():
    """A (3, 3, 2) grid: flat 0-9 predicted class 0, 10-11 class 5, 12-16 free; 17 (class 0, the
    highest entropy) is outside the candidates."""
    pred = np.array([0] * 10 + [5] * 2 + [occ3d.FREE] * 5 + [0]).reshape(3, 3, 2)
    entropy = np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6, 0.5, 0.05,   # class 0: best 1, 3, 5, then 7
                        0.01, 0.02,                                          # class 5
                        0.5, 0.95, 0.65, 0.3, 0.1,                           # free: best 13, 14, 12, then 15
                        9.9], dtype=np.float32).reshape(3, 3, 2)
    candidates = np.ones((3, 3, 2), dtype=bool)
    candidates.reshape(-1)[17] = False
    return entropy, pred, candidates


def test_even_class_quotas_give_a_small_class_all_it_has_and_share_the_rest():
    assert even_class_quotas([10, 2, 5], 9)[0].tolist() == [3, 2, 3]        # share 3, 1 voxel left over
    assert even_class_quotas([10, 2, 5], 12)[0].tolist() == [5, 2, 5]       # exactly even after class 2
    assert even_class_quotas([10, 2, 5], 4)[0].tolist() == [1, 1, 1]


def test_class_balanced_voxels_on_a_hand_made_grid():
    entropy, pred, candidates = hand_made_grid()
    # budget 8: 3 + 2 (all of class 5) + 3, the best of each class by entropy
    assert class_balanced_voxels(entropy, pred, candidates, 8).tolist() == [1, 3, 5, 10, 11, 12, 13, 14]
    # budget 9: the voxel left over goes to the class whose next voxel has the higher entropy
    # (class 0's 7 at 0.6 beats free's 15 at 0.3)
    assert class_balanced_voxels(entropy, pred, candidates, 9).tolist() == [1, 3, 5, 7, 10, 11, 12, 13, 14]
    # budget 4: share 1 each (1, 11, 13), the last to class 0 (0.8 beats free 0.65 and class 5 0.01)
    assert class_balanced_voxels(entropy, pred, candidates, 4).tolist() == [1, 3, 11, 13]
    # a budget beyond the candidates takes them all, never voxel 17 outside them
    assert class_balanced_voxels(entropy, pred, candidates, 100).tolist() == list(range(17))


def test_class_balanced_voxels_break_entropy_ties_by_flat_index_and_class():
    pred = np.array([2, 2, 2, 7, 7, 7]).reshape(1, 2, 3)
    entropy = np.ones((1, 2, 3), dtype=np.float32)
    candidates = np.ones((1, 2, 3), dtype=bool)
    assert class_balanced_voxels(entropy, pred, candidates, 3).tolist() == [0, 1, 3]


# ------------------------------------------------------------------------------- the selection file

def test_selection_file_round_trip(tmp_path):
    selection = Selection(["t2", "t1"], {"t3": np.array([5, 0, 639_999])})
    path = tmp_path / "sel.json"
    save_selection(str(path), selection)
    document = json.loads(path.read_text())
    assert document == {"version": 1, "frames": ["t2", "t1"], "voxels": {"t3": [0, 5, 639_999]}}
    loaded = load_selection(str(path), known_tokens={"t1", "t2", "t3"})
    assert loaded.frames == ["t2", "t1"] and list(loaded.voxels) == ["t3"]
    assert loaded.voxels["t3"].tolist() == [0, 5, 639_999] and loaded.voxels["t3"].dtype == np.int64
    mask = loaded.label_mask("t3")
    assert mask.shape == occ3d.GRID_SHAPE and mask.sum() == 3 and mask[199, 199, 15] and mask[0, 0, 5]
    assert loaded.label_mask("t1").all() and not loaded.label_mask("t9").any()


@pytest.mark.parametrize("document, message", [
    ({"version": 2, "frames": [], "voxels": {}}, "version 2"),
    ({"version": 1, "frames": []}, "expected the keys"),
    ({"version": 1, "frames": [], "voxels": {}, "extra": 1}, "expected the keys"),
    ({"version": 1, "frames": ["t1", "nope"], "voxels": {}}, "nope is not a frame of the training split"),
    ({"version": 1, "frames": [], "voxels": {"nope": [1]}}, "nope is not a frame of the training split"),
    ({"version": 1, "frames": ["t1", "t2", "t1"], "voxels": {}}, "frame t1 is listed twice"),
    ({"version": 1, "frames": ["t1"], "voxels": {"t1": [3]}}, "frame t1 is in both 'frames' and 'voxels'"),
    ({"version": 1, "frames": [], "voxels": {"t2": [1, 640_000]}}, "'voxels' of t2: index 640000 is outside"),
    ({"version": 1, "frames": [], "voxels": {"t2": [-1]}}, "'voxels' of t2: index -1 is outside"),
    ({"version": 1, "frames": [], "voxels": {"t2": [4, 9, 4]}}, "'voxels' of t2: voxel 4 is listed twice"),
    ({"version": 1, "frames": [], "voxels": {"t2": [1.5]}}, "'voxels' of t2: expected a non-empty list"),
    ({"version": 1, "frames": [], "voxels": {"t2": []}}, "'voxels' of t2: expected a non-empty list"),
    ({"version": 1, "frames": "t1", "voxels": {}}, "'frames' must be a list"),
    ([1, 2], "expected an object"),
])
def test_selection_file_errors_name_the_file_and_the_entry(tmp_path, document, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    with pytest.raises(DataError, match=f"selection file {path}.*{message}"):
        load_selection(str(path), known_tokens={"t1", "t2"})


def test_a_selection_file_that_is_not_json_or_missing(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"version": 1, "frames": [')
    with pytest.raises(DataError, match=f"selection file {path} is not JSON"):
        load_selection(str(path))
    with pytest.raises(FileNotFoundError, match="selection file not found"):
        load_selection(str(tmp_path / "absent.json"))


def test_a_frame_is_never_selected_twice_and_full_frames_supersede_voxels():
    selection = Selection().with_frames(["a", "b"]).with_voxels({"c": np.array([7, 3]), "d": np.array([1])})
    with pytest.raises(ValueError, match=r"frames selected twice: \['b'\]"):
        selection.with_frames(["c", "b"])
    with pytest.raises(ValueError, match=r"frames selected twice: \['e'\]"):
        selection.with_frames(["e", "f", "e"])
    with pytest.raises(ValueError, match="frame a is fully labelled"):
        selection.with_voxels({"a": np.array([1])})
    with pytest.raises(ValueError, match="frame c: voxels selected twice"):
        selection.with_voxels({"c": np.array([3, 4])})
    grown = selection.with_voxels({"c": np.array([4])}).with_frames(["d"])
    assert grown.frames == ["a", "b", "d"] and grown.voxels["c"].tolist() == [3, 4, 7] and "d" not in grown.voxels
    assert selection.frames == ["a", "b"] and selection.voxels["c"].tolist() == [3, 7]   # the old one unchanged


# ------------------------------------------------------------------------------- the loss

@pytest.mark.parametrize("loss", ["ce", "four"])
def test_the_loss_ignores_unselected_voxels(loss):
    cfg = get_config(PRESET)
    cfg.train.loss = loss
    generator = torch.Generator().manual_seed(0)
    grid = (1, 6, 5, 4)
    logits = torch.randn(*grid, occ3d.NUM_CLASSES, generator=generator, requires_grad=True)
    labels = torch.randint(0, occ3d.NUM_CLASSES, grid, generator=generator)
    batch = {"semantics": labels, "mask_camera": torch.rand(grid, generator=generator) < 0.7,
             "label_mask": torch.rand(grid, generator=generator) < 0.4}
    weights = torch.ones(occ3d.NUM_CLASSES) if loss == "four" else None
    losses = train_fusion.make_loss_fn(cfg, weights)(lambda b: {"occ_logits": logits}, batch)
    sum(losses.values()).backward()
    used = batch["mask_camera"] & batch["label_mask"]
    assert 0 < used.sum() < used.numel() and (batch["mask_camera"] & ~batch["label_mask"]).any()
    assert (logits.grad[~used] == 0).all()                       # exactly zero off the selection
    assert (logits.grad[used].abs().sum(-1) > 0).all()
    if loss == "ce":
        assert losses["loss_ce"].item() == pytest.approx(F.cross_entropy(logits[used], labels[used]).item(), rel=1e-6)


# ------------------------------------------------------------------------------- on the synthetic world


@pytest.fixture(scope="module")
def train_tokens(data_root):
    return [info["token"] for info in load_infos(info_path(data_root, "mini_train"))]


def select(data_root, out, *extra):
    return active_select.main(["--data-root", data_root, "--out", str(out), *extra])


def test_the_label_mask_is_flipped_like_the_gt(data_root, train_tokens, tmp_path):
    """Select the occupied voxels of one half of each frame (un-flipped): under every BEV flip the
    label mask must still cover exactly those labels."""
    path = info_path(data_root, "mini_train")
    chosen, expected = {}, {}
    for info in load_infos(path):
        gt = load_occ_gt(occ3d.gt_path(data_root, info["scene_name"], info["token"]))
        keep = (gt["semantics"] != occ3d.FREE) & (np.arange(200)[:, None, None] < 80)
        chosen[info["token"]] = np.flatnonzero(keep)
        expected[info["token"]] = np.sort(gt["semantics"][keep])
    base = NuScenesOccDataset(data_root, path, train=True, load_points=False, load_depth=False, load_images=False)
    dataset = LabelledFrames(base, Selection().with_voxels(chosen))
    flips = set()
    for epoch in range(4):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            sample = dataset[index]
            flips.add((float(sample["bda"][0, 0]), float(sample["bda"][1, 1])))
            labels = sample["semantics"][sample["label_mask"]].numpy()
            assert np.array_equal(np.sort(labels), expected[sample["sample_token"]])
    assert (-1.0, 1.0) in flips and (1.0, -1.0) in flips, flips                  # both flips were exercised


def test_only_selected_frames_are_trained_on(data_root, train_tokens):
    cfg = get_config(PRESET)
    base = dataset_from_config(cfg, data_root, info_path(data_root, "mini_train"), train=True)
    dataset = LabelledFrames(base, Selection([train_tokens[2]], {train_tokens[0]: np.array([11])}))
    assert len(dataset) == 2 and [info["token"] for info in dataset.infos] == [train_tokens[0], train_tokens[2]]
    assert dataset[1]["label_mask"].all() and int(dataset[0]["label_mask"].sum()) == 1


def test_random_rounds_never_select_a_frame_twice(data_root, train_tokens, tmp_path):
    rounds = []
    for number in range(3):
        extra = ["--labelled", str(tmp_path / f"r{number - 1}.json")] if number else []
        select(data_root, tmp_path / f"r{number}.json", "--strategy", "random", "--seed", "5", "--frames", "1", *extra)
        rounds.append(load_selection(str(tmp_path / f"r{number}.json")).frames)
    assert [len(frames) for frames in rounds] == [1, 2, 3]
    assert rounds[1][:1] == rounds[0] and rounds[2][:2] == rounds[1]          # accumulated, never repeated
    assert sorted(rounds[2]) == sorted(train_tokens)
    with pytest.raises(UsageError, match="nothing left to choose"):
        select(data_root, tmp_path / "r3.json", "--strategy", "random", "--frames", "1",
               "--labelled", str(tmp_path / "r2.json"))
    # seeded: the same seed gives the same file
    select(data_root, tmp_path / "again.json", "--strategy", "random", "--seed", "5", "--frames", "1")
    assert (tmp_path / "again.json").read_bytes() == (tmp_path / "r0.json").read_bytes()


def test_random_voxels_accumulate_inside_the_camera_mask(data_root, train_tokens, tmp_path):
    select(data_root, tmp_path / "start.json", "--strategy", "random", "--frames", "1")
    first = select(data_root, tmp_path / "v1.json", "--strategy", "random", "--voxels-per-frame", "40",
                   "--labelled", str(tmp_path / "start.json"))
    second = select(data_root, tmp_path / "v2.json", "--strategy", "random", "--voxels-per-frame", "40",
                    "--seed", "1", "--labelled", str(tmp_path / "v1.json"))
    assert sorted(second.voxels) == sorted(set(train_tokens) - set(first.frames)) and len(first.frames) == 1
    for info in load_infos(info_path(data_root, "mini_train")):
        if info["token"] in first.frames:
            continue
        mask = load_occ_gt(occ3d.gt_path(data_root, info["scene_name"], info["token"]))["mask_camera"].reshape(-1)
        before, after = first.voxels[info["token"]], second.voxels[info["token"]]
        assert before.size == 40 and after.size == 80 and np.isin(before, after).all()   # 40 new ones, none again
        assert mask[after].all()


def test_initial_scene_fraction_and_option_errors(data_root, train_tokens, tmp_path):
    initial = select(data_root, tmp_path / "all.json", "--strategy", "random", "--scenes-fraction", "1.0")
    assert initial.frames == train_tokens                                     # the one training scene
    with pytest.raises(UsageError, match="--strategy entropy needs --ckpt"):
        select(data_root, tmp_path / "x.json", "--frames", "1")
    with pytest.raises(UsageError, match="--scenes-fraction chooses scenes at random"):
        select(data_root, tmp_path / "x.json", "--ckpt", "c.pt", "--scenes-fraction", "0.5")
    with pytest.raises(UsageError, match="--frames must be >= 1"):
        select(data_root, tmp_path / "x.json", "--strategy", "random", "--frames", "0")
    with pytest.raises(UsageError, match="--labelled and --scenes-fraction exclude each other"):
        train_fusion.parse_args(["--config", PRESET, "--data-root", data_root, "--work-dir", str(tmp_path),
                                 "--labelled", str(tmp_path / "all.json"), "--scenes-fraction", "0.5"])


def test_train_fusion_refuses_a_selection_of_other_frames(data_root, tmp_path):
    val_token = load_infos(info_path(data_root, "mini_val"))[0]["token"]
    path = tmp_path / "val.json"
    save_selection(str(path), Selection([val_token]))
    with pytest.raises(DataError, match=f"selection file {path}: {val_token} is not a frame of the training split"):
        train_fusion.main(["--config", PRESET, "--data-root", data_root, "--work-dir", str(tmp_path / "w"),
                           "--labelled", str(path), "--no-val", "--max-steps", "1"])


# ------------------------------------------------------------------------------- end to end (slow)

def train(data_root, work_dir, *extra):
    return train_fusion.main(["--config", PRESET, "--data-root", data_root, "--work-dir", str(work_dir), "--no-val",
                              "--set", "train.warmup_iters=0", *extra])


@pytest.fixture(scope="module")
def one_step_checkpoint(data_root, tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("active_round0")
    train(data_root, work_dir, "--max-steps", "1")
    return str(latest_checkpoint(work_dir))


@pytest.fixture(scope="module")
def model_outputs(data_root, one_step_checkpoint):
    """{token: (entropy, pred, mask_camera)} of the training frames, computed here from the logits."""
    model, cfg = build_model_from_checkpoint(one_step_checkpoint, use_ema=True, device="cpu")
    dataset = dataset_from_config(cfg, data_root, info_path(data_root, "mini_train"), train=False)
    outputs = {}
    with torch.no_grad():
        for index in range(len(dataset)):
            batch = move_batch(collate([dataset[index]]), "cpu")
            probs = model(batch)["occ_logits"][0].double().softmax(-1)
            entropy = -(probs * probs.clamp(min=1e-300).log()).sum(-1)
            outputs[batch["sample_token"][0]] = (entropy.numpy(), probs.argmax(-1).numpy(),
                                                  batch["mask_camera"][0].numpy())
    return outputs


@pytest.mark.slow
def test_entropy_frames_pick_the_most_uncertain_frame(data_root, train_tokens, one_step_checkpoint,
                                                      model_outputs, tmp_path):
    save_selection(str(tmp_path / "start.json"), Selection([train_tokens[0]]))
    args = ["--ckpt", one_step_checkpoint, "--labelled", str(tmp_path / "start.json"), "--frames", "1"]
    chosen = select(data_root, tmp_path / "r1.json", *args).frames
    scores = {token: entropy[mask].mean() for token, (entropy, _, mask) in model_outputs.items()
              if token != train_tokens[0]}
    assert len(set(scores.values())) == 2                                    # a real choice
    assert chosen == [train_tokens[0], max(scores, key=scores.get)]
    select(data_root, tmp_path / "again.json", *args)
    assert (tmp_path / "again.json").read_bytes() == (tmp_path / "r1.json").read_bytes()   # deterministic


@pytest.mark.slow
def test_entropy_voxels_are_the_most_uncertain_of_each_class_split_evenly(data_root, train_tokens,
                                                                          one_step_checkpoint, model_outputs,
                                                                          tmp_path):
    save_selection(str(tmp_path / "start.json"), Selection([train_tokens[0]], {train_tokens[1]: np.array([0])}))
    budget = 500
    selection = select(data_root, tmp_path / "v1.json", "--ckpt", one_step_checkpoint, "--labelled",
                       str(tmp_path / "start.json"), "--voxels-per-frame", str(budget))
    assert selection.frames == [train_tokens[0]] and sorted(selection.voxels) == sorted(train_tokens[1:])
    for token in train_tokens[1:]:
        entropy, pred, mask = (array.reshape(-1) for array in model_outputs[token])
        old = [0] if token == train_tokens[1] else []
        new = np.setdiff1d(selection.voxels[token], old)
        assert new.size == budget and mask[new].all() and np.isin(old, selection.voxels[token]).all()
        candidates = mask.copy()
        candidates[old] = False
        taken = np.zeros_like(mask)
        taken[new] = True
        per_class = {}
        for cls in np.unique(pred[candidates]):
            in_class = candidates & (pred == cls)
            chosen, left = entropy[in_class & taken], entropy[in_class & ~taken]
            per_class[int(cls)] = (chosen.size, in_class.sum())
            if chosen.size and left.size:                                    # the most uncertain of the class
                assert chosen.min() >= left.max() - 1e-5
        # even: the classes with candidates left got the same share (+-1 for the left-over voxels), and
        # no class got more, so any class below the share has given every candidate it had
        open_counts = [count for count, available in per_class.values() if count < available]
        assert len(per_class) >= 2 and open_counts
        assert max(open_counts) - min(open_counts) <= 1
        assert all(count <= max(open_counts) for count, _ in per_class.values())


@pytest.mark.slow
def test_train_fusion_on_a_selection_records_it_and_resume_notices_a_changed_file(data_root, train_tokens,
                                                                                  one_step_checkpoint, tmp_path,
                                                                                  capsys):
    path = tmp_path / "labelled.json"
    save_selection(str(path), Selection([train_tokens[2]], {train_tokens[0]: np.arange(100, 400)}))
    work_dir = tmp_path / "round1"
    position = train(data_root, work_dir, "--labelled", str(path), "--init-from", one_step_checkpoint,
                     "--max-steps", "2")
    assert position.step == 2
    printed = capsys.readouterr().out
    assert "2 training samples" in printed and "1 fully labelled frames, 1 frames with 300 selected voxels" in printed
    settings = load_checkpoint(latest_checkpoint(work_dir))["run"]["settings"]
    assert settings["labelled"] == str(path) and settings["labelled_sha256"] == selection_sha256(str(path))
    save_selection(str(path), Selection([train_tokens[2], train_tokens[1]]))
    with pytest.raises(UsageError, match="labelled_sha256"):
        train(data_root, work_dir, "--labelled", str(path), "--init-from", one_step_checkpoint,
              "--max-steps", "3", "--resume")
