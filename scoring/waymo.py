"""Score Occ3D-Waymo predictions: mIoU = nanmean of the IoU of the 15 classes GENERALOBJECT ... WALKABLE
(free excluded) over the voxels inside `infov AND final_voxel_state`, from one confusion matrix of
the whole split; a per-class table with the Waymo names, and the geometry IoU (occupied vs free).

    python evaluate.py --benchmark waymo --ckpt CKPT --data-root ROOT [--split val] [--no-ema]
                       [--save-pred DIR] [--out m.json]
    python evaluate.py --benchmark waymo --pred-dir DIR --data-root ROOT [--split train|val] [--out m.json]

ROOT is an Occ3D-Waymo-layout root with the info files of datasets/prepare_waymo.py
(occ_infos_<split>.pkl; --info for another file) and the ground truth
voxel04/<training|validation>/<scene:03d>/<frame:03d>_04.npz. Predictions (--pred-dir, and what
--save-pred writes): one <scene:03d>_<frame:03d>.npz per frame of the split holding `semantics`, a
uint8 (200, 200, 16) array of classes 0..15 (free = 15; the key may be omitted when it is the file's
only array). With --ckpt the model is rebuilt from the checkpoint's config (it must be an Occ3D-Waymo
model, data.benchmark = "waymo") and run in test mode. --out writes the metrics as JSON (key `miou`).
"""
import os

import cli
from datasets.build import dataset_from_config, info_path
from datasets.nuscenes_occ import collate, load_infos
from datasets.waymo_occ import load_waymo_gt
from occ import waymo
from occ.errors import DataError
from occ.evaluation import predict, score_occupancy
from occ.metrics import format_table
from scoring.common import (check_scored_folder, checkpoint_model, finish, label_grid, read_semantics,
                            save_prediction)

SPLITS = ("train", "val")


def parse_args(argv=None):
    parser = cli.parser_for(__doc__)
    cli.add_scoring_args(parser, "checkpoint of an Occ3D-Waymo model (train_fusion.py)", "--pred-dir",
                         "folder of <scene:03d>_<frame:03d>.npz predictions",
                         "Occ3D-Waymo-layout root with its info files", splits=SPLITS)
    parser.add_argument("--save-pred", help="--ckpt: write the predictions to this folder")
    args = parser.parse_args(argv)
    cli.check_scoring_args(parser, args, ckpt_only=("no_ema", "save_pred"), folders=("save_pred",))
    return args


def load_prediction(path):
    """A prediction file -> uint8 (200, 200, 16) of classes 0..15; FileNotFoundError / DataError
    naming the file for a wrong key, shape, dtype or labels."""
    return label_grid(path, read_semantics(path), waymo.GRID_SHAPE, waymo.FREE, f"Waymo classes, free = {waymo.FREE}")


def folder_samples(pred_dir, infos, data_root):
    for info in infos:
        gt = load_waymo_gt(waymo.gt_path(data_root, info["split"], info["scene"], info["frame"]))
        pred = load_prediction(os.path.join(pred_dir, f"{info['token']}.npz"))
        yield {"sample_token": info["token"], "pred": pred, **gt}


def model_samples(args, path):
    model, cfg = checkpoint_model(args, "waymo")
    dataset = dataset_from_config(cfg, args.data_root, path, train=False, load_gt=True)
    return predict(model, dataset, args.device, collate, args.batch_size, args.num_workers)


def report(metrics):
    names = waymo.CLASS_NAMES[:waymo.FREE]
    table = format_table(names, {"IoU": [metrics["per_class"][n]["iou"] for n in names]}, {"IoU": metrics["miou"]})
    return "\n".join([table, f"mIoU (infov AND final_voxel_state, {metrics['split']}): {100 * metrics['miou']:.2f}",
                      f"geometry IoU: {100 * metrics['geometry_iou']:.2f}"])


def main(argv=None):
    args = parse_args(argv)
    path = args.info or info_path(args.data_root, args.split)
    infos = load_infos(path)
    missing = [key for key in ("split", "scene", "frame") if key not in infos[0]]
    if missing:
        raise DataError(f"info file {path} lacks {missing}: not an Occ3D-Waymo info file "
                        f"(datasets/prepare_waymo.py writes them)")
    if args.pred_dir:
        check_scored_folder(args.pred_dir, infos, path)
        samples = folder_samples(args.pred_dir, infos, args.data_root)
    else:
        samples = model_samples(args, path)

    def on_sample(index, sample):
        if args.save_pred:
            save_prediction(args.save_pred, sample["sample_token"], sample["pred"])

    metrics = score_occupancy(samples, "camera", None, total=len(infos), on_sample=on_sample,
                              class_names=waymo.CLASS_NAMES)
    metrics["mask"] = "infov AND final_voxel_state"
    metrics.update(benchmark="waymo", split=args.split, info_file=path, source=args.pred_dir or args.ckpt)
    return finish(args, metrics, report(metrics))
