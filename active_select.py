"""Active learning: choose what to label next and write a selection file (docs/training.md#active-learning).

    python active_select.py --strategy random --scenes-fraction 0.05 --data-root ROOT --out round0.json
    python active_select.py --ckpt CKPT --data-root ROOT --labelled round0.json --frames 35 --out round1.json
    python active_select.py --ckpt CKPT --data-root ROOT --labelled round0.json --voxels-per-frame 640 --out round1.json
    python active_select.py --strategy random --seed 1 --data-root ROOT --labelled round0.json --frames 35 --out random1.json
    python train_fusion.py ... --labelled round1.json --init-from CKPT    # the next round

The candidates are the training frames (ROOT/occ_infos_<split>.pkl) that --labelled does not label
fully (without --labelled: every training frame). --strategy entropy (the default) runs the model of
--ckpt (EMA weights, test mode: no augmentation, nearest sweeps) on each candidate and takes

- --frames K: the K frames with the highest mean voxel entropy of the softmax inside the camera
  mask (equal scores in token order);
- --voxels-per-frame V: in every candidate frame the V highest-entropy voxels of the camera mask
  that are not labelled yet, split evenly over the predicted classes (occ/active.py
  class_balanced_voxels: a class with fewer candidates than its share gives all of them and the
  other classes share the rest).

--strategy random (seeded by --seed, no --ckpt) takes --frames K random frames, or
--voxels-per-frame V random camera-mask voxels per frame, or with --scenes-fraction F every frame
of the seeded scene fraction that train_fusion.py --scenes-fraction F trains on (the initial
selection). The file --out holds the --labelled selection plus the new one; a frame chosen as a
full frame drops its earlier voxel entry. The choice is deterministic for a seed and checkpoint.
"""
import cli  # noqa: F401  (first: quiets third-party warnings before they are imported)

import numpy as np
import torch
from tqdm import tqdm

from datasets.build import dataset_from_config
from datasets.nuscenes_occ import collate, load_infos, load_occ_gt
from occ import occ3d
from occ.active import (Selection, class_balanced_voxels, frame_score, load_selection, predict_entropy,
                        random_frames, random_voxels, save_selection, top_k_frames)
from occ.data import scene_fraction
from occ.errors import UsageError
from occ.evaluation import build_model_from_checkpoint


def parse_args(argv=None):
    parser = cli.parser_for(__doc__)
    parser.add_argument("--data-root", required=True, help="nuScenes-format root (info files, inputs, ground truth)")
    parser.add_argument("--info-dir", "--info", dest="info_dir", metavar="DIR",
                        help="folder of the info files occ_infos_<split>.pkl (default: --data-root)")
    parser.add_argument("--train-split", help="info split of the training frames (default: train, or mini_train)")
    parser.add_argument("--labelled", metavar="FILE", help="the selection so far (default: nothing labelled)")
    parser.add_argument("--out", required=True, metavar="FILE", help="the new selection file (old + new)")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--frames", type=int, metavar="K", help="label K more frames fully")
    budget.add_argument("--voxels-per-frame", type=int, metavar="V",
                        help="label V more voxels in every frame that is not fully labelled")
    budget.add_argument("--scenes-fraction", type=float, metavar="F",
                        help="--strategy random: label every frame of the seeded scene fraction F "
                             "(the scenes of train_fusion.py --scenes-fraction F)")
    parser.add_argument("--strategy", choices=["entropy", "random"], default="entropy")
    parser.add_argument("--seed", type=int, default=0, help="seed of --strategy random")
    parser.add_argument("--ckpt", help="--strategy entropy: the checkpoint of the model that scores the frames")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    for name in ("frames", "voxels_per_frame"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.strategy == "entropy" and not args.ckpt:
        raise UsageError("--strategy entropy needs --ckpt (the model whose entropy chooses)")
    if args.strategy == "random" and args.ckpt:
        raise UsageError("--strategy random uses no model; leave out --ckpt")
    if args.scenes_fraction is not None and args.strategy != "random":
        raise UsageError("--scenes-fraction chooses scenes at random: use it with --strategy random")
    return args


def scored_frames(args, info_file, tokens):
    """predict_entropy's dicts of the frames `tokens`, from the --ckpt model (EMA weights), with progress."""
    model, cfg = build_model_from_checkpoint(args.ckpt, use_ema=True, device=args.device)
    print(f"model {cfg.name} from {args.ckpt} (EMA weights) on {args.device}")
    dataset = dataset_from_config(cfg, args.data_root, info_file, train=False, load_gt=True)
    dataset.infos = [info for info in dataset.infos if info["token"] in tokens]
    return tqdm(predict_entropy(model, dataset, args.device, collate), total=len(dataset), desc="entropy",
                unit="frame")


def choose_frames(args, info_file, candidates):
    """The tokens of the --frames K new full frames among the candidate infos."""
    tokens = [info["token"] for info in candidates]
    if args.strategy == "random":
        return random_frames(tokens, args.frames, args.seed)
    scores = {s["sample_token"]: frame_score(s["entropy"], s["mask_camera"])
              for s in scored_frames(args, info_file, set(tokens))}
    chosen = top_k_frames(scores, args.frames)
    print(f"mean frame entropy: chosen {np.mean([scores[t] for t in chosen]):.4f}, "
          f"all candidates {np.mean(list(scores.values())):.4f}")
    return chosen


def choose_voxels(args, info_file, candidates, selection):
    """{token: flat voxel indices} of --voxels-per-frame V new voxels in each candidate frame."""
    voxels = {}
    if args.strategy == "random":
        rng = np.random.default_rng(args.seed)
        for info in tqdm(candidates, desc="camera masks", unit="frame"):
            gt = load_occ_gt(occ3d.gt_path(args.data_root, info["scene_name"], info["token"]))
            unlabelled = gt["mask_camera"] & ~selection.label_mask(info["token"])
            voxels[info["token"]] = random_voxels(unlabelled, args.voxels_per_frame, rng)
        return voxels
    for s in scored_frames(args, info_file, {info["token"] for info in candidates}):
        unlabelled = s["mask_camera"] & ~selection.label_mask(s["sample_token"])
        voxels[s["sample_token"]] = class_balanced_voxels(s["entropy"], s["pred"], unlabelled, args.voxels_per_frame)
    return voxels


def main(argv=None):
    args = parse_args(argv)
    split, info_file = cli.info_file(args, "train")
    infos = load_infos(info_file)
    selection = load_selection(args.labelled, {info["token"] for info in infos}) if args.labelled else Selection()
    labelled_fully = set(selection.frames)
    candidates = [info for info in infos if info["token"] not in labelled_fully]
    if not candidates:
        raise UsageError(f"every frame of {info_file} is labelled fully in {args.labelled}: nothing left to choose")
    if args.scenes_fraction is not None:
        scenes = scene_fraction(infos, args.scenes_fraction)
        new = selection.with_frames([info["token"] for info in candidates if info["scene_token"] in scenes])
    elif args.frames is not None:
        new = selection.with_frames(choose_frames(args, info_file, candidates))
    else:
        new = selection.with_voxels(choose_voxels(args, info_file, candidates, selection))
    save_selection(args.out, new)
    print(f"{args.out}: {len(new.frames)} fully labelled frames ({len(new.frames) - len(selection.frames):+d}), "
          f"{len(new.voxels)} frames with {new.num_voxels()} selected voxels "
          f"({new.num_voxels() - selection.num_voxels():+d}), of {len(infos)} {split} frames")
    return new


if __name__ == "__main__":
    cli.run_main(main)
