"""Score OpenOcc v2 occupancy and flow (the CVPR 2024 OpenOcc track): RayIoU@1/2/4 and RayIoU,
per-class RayIoU, mAVE and OccScore = 0.9 RayIoU + 0.1 max(1 - mAVE, 0) (docs/metrics.md).

    python evaluate.py --benchmark openocc --ckpt CKPT --data-root ROOT [--split val] [--no-ema]
        [--save-pred DIR] [--out metrics.json] [--vis-dir DIR]
    python evaluate.py --benchmark openocc --pred-dir DIR --data-root ROOT [--split val] [--out metrics.json]

The samples are the records of ROOT/occ_infos_<split>.pkl (datasets/prepare_nuscenes.py; --info
for another file; default split val, or mini_val), the ground truth
ROOT/openocc_v2/<scene_name>/<token>/labels.npz (`semantics` in the OpenOcc class order, free =
16, and `flow`; --gt-dir for another folder). No camera mask: RayIoU counts what its rays see.
With --ckpt the model (trained with data.benchmark "openocc" and a flow head, e.g. the preset
effocc_fusion_r18_flow) is rebuilt from the checkpoint's config with its EMA weights (--no-ema:
the raw ones) and run in test mode; --save-pred writes its predictions in the format --pred-dir
reads: one <sample_token>.npz per sample holding `semantics` (uint8 (200, 200, 16), OpenOcc
order) and `flow` (float32 (200, 200, 16, 2), vx, vy in m/s, ego frame). Every sample of the
split must be in --pred-dir; a file without `flow`, with a wrong shape, labels outside 0-16 or a
non-finite flow is an error naming it. --vis-dir draws the first --vis-samples samples (GT vs
prediction, dynamic classes coloured by speed with flow arrows). --out writes JSON (NaN as
null) with the keys rayiou, rayiou@1, rayiou@2, rayiou@4, mave, occ_score, per_class, ...
"""
import os

import cli  # noqa: F401  (first: quiets third-party warnings before they are imported)

import numpy as np

from datasets.build import dataset_from_config
from datasets.nuscenes_occ import collate, load_occ_gt, read_npz
from occ import occ3d, openocc
from occ.checkpoint import CheckpointError
from occ.errors import DataError
from occ.evaluation import predict
from occ.metrics import format_table, scene_lidar_origins
from occ.openocc_evaluation import score_openocc
from occ.visualize import gt_vs_pred_flow_image, save_png, voxel_render
from scoring.common import check_scored_folder, checkpoint_model, finish, split_infos

FLOW_SHAPE = occ3d.GRID_SHAPE + (2,)


def parse_args(argv=None):
    parser = cli.parser_for(__doc__)
    cli.add_scoring_args(parser, "checkpoint of a model trained on OpenOcc (flow head)", "--pred-dir",
                         "folder of <sample_token>.npz predictions (semantics + flow)",
                         "dataset root holding the info files and openocc_v2/")
    parser.add_argument("--gt-dir", default=openocc.GT_DIR, help="OpenOcc v2 GT folder inside the data root")
    parser.add_argument("--vis-dir", help="write PNG pictures of the first --vis-samples samples here")
    parser.add_argument("--vis-samples", type=int, default=4)
    parser.add_argument("--save-pred", help="--ckpt: write the predictions to this folder")
    args = parser.parse_args(argv)
    cli.check_scoring_args(parser, args, ckpt_only=("no_ema", "save_pred"), folders=("save_pred", "vis_dir"))
    return args


# ------------------------------------------------------------------------------- predictions
def load_prediction(path):
    """An OpenOcc prediction file -> (semantics uint8 (200, 200, 16), flow float32 (200, 200, 16, 2));
    FileNotFoundError when it is missing, DataError naming the file when it is unreadable, lacks
    `semantics` or `flow`, or holds a wrong shape or dtype, labels outside 0-16 or a NaN / inf flow."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"prediction not found: {path}")
    arrays = read_npz(path, "prediction")
    missing = [key for key in ("semantics", "flow") if key not in arrays]
    if missing:
        raise DataError(f"prediction {path} lacks {missing} (has {sorted(arrays)}); an OpenOcc prediction holds "
                        f"'semantics' {occ3d.GRID_SHAPE} and 'flow' {FLOW_SHAPE}")
    semantics, flow = arrays["semantics"], arrays["flow"]
    if semantics.shape != occ3d.GRID_SHAPE:
        raise DataError(f"prediction {path}: 'semantics' has shape {semantics.shape}, expected {occ3d.GRID_SHAPE}")
    if not np.issubdtype(semantics.dtype, np.integer):
        raise DataError(f"prediction {path}: 'semantics' has dtype {semantics.dtype}, expected integer labels (uint8)")
    if semantics.min() < 0 or semantics.max() > openocc.FREE:
        raise DataError(f"prediction {path}: 'semantics' holds labels outside [0, {openocc.FREE}] (OpenOcc order): "
                        f"min {semantics.min()}, max {semantics.max()}")
    if flow.shape != FLOW_SHAPE:
        raise DataError(f"prediction {path}: 'flow' has shape {flow.shape}, expected {FLOW_SHAPE}")
    if not np.issubdtype(flow.dtype, np.floating):
        raise DataError(f"prediction {path}: 'flow' has dtype {flow.dtype}, expected float (m/s)")
    if not np.isfinite(flow).all():
        raise DataError(f"prediction {path}: 'flow' holds {int((~np.isfinite(flow)).sum())} NaN / inf values")
    return semantics.astype(np.uint8), flow.astype(np.float32)


def save_prediction(folder, token, semantics, flow):
    os.makedirs(folder, exist_ok=True)
    np.savez_compressed(os.path.join(folder, f"{token}.npz"), semantics=np.asarray(semantics, dtype=np.uint8),
                        flow=np.asarray(flow, dtype=np.float32))


def load_gt(path):
    """The OpenOcc v2 GT of one sample ({semantics, flow, ...}); DataError naming the file when it
    has no flow (an Occ3D file, not OpenOcc v2)."""
    gt = load_occ_gt(path)
    if "flow" not in gt:
        raise DataError(f"occupancy GT {path} has no 'flow': not an OpenOcc v2 file (--gt-dir)")
    return gt


def folder_samples(pred_dir, infos, data_root, gt_dir):
    """Scored OpenOcc samples (occ.openocc_evaluation) of a prediction folder and the GT files."""
    for info in infos:
        gt = load_gt(occ3d.gt_path(data_root, info["scene_name"], info["token"], gt_dir))
        pred, pred_flow = load_prediction(os.path.join(pred_dir, f"{info['token']}.npz"))
        yield {"sample_token": info["token"], "pred": pred, "pred_flow": pred_flow,
               "semantics": gt["semantics"], "flow": gt["flow"]}


def model_samples(args, path):
    """Scored OpenOcc samples of the checkpoint's model on the split; a checkpoint trained for
    another benchmark or without a flow head is refused."""
    model, cfg = checkpoint_model(args)
    if cfg.data.benchmark != "openocc" or not cfg.model.flow_head:
        raise CheckpointError(f"checkpoint {args.ckpt} ({cfg.name}) was trained for data.benchmark = "
                              f"{cfg.data.benchmark!r}{'' if cfg.model.flow_head else ' without a flow head'}; "
                              f"--benchmark openocc scores OpenOcc models with a flow head (e.g. effocc_fusion_r18_flow)")
    cfg.data.occ_gt_dir = args.gt_dir
    dataset = dataset_from_config(cfg, args.data_root, path, train=False, load_gt=True)
    return predict(model, dataset, args.device, collate, args.batch_size, args.num_workers)


def sample_writer(args):
    """on_sample(index, sample): pictures of the first --vis-samples samples, predictions to --save-pred."""
    def on_sample(index, sample):
        token = sample["sample_token"]
        if args.vis_dir and index < args.vis_samples:
            picture = gt_vs_pred_flow_image(sample["semantics"], sample["flow"], sample["pred"], sample["pred_flow"])
            save_png(picture, os.path.join(args.vis_dir, f"{token}_flow.png"))
            save_png(voxel_render(sample["pred"], free_label=openocc.FREE, palette=openocc.PALETTE),
                     os.path.join(args.vis_dir, f"{token}_3d.png"))
        if args.save_pred:
            save_prediction(args.save_pred, token, sample["pred"], sample["pred_flow"])
    return on_sample


def report(metrics):
    """The per-class table and the summary lines, as text."""
    names = openocc.CLASS_NAMES[:openocc.FREE]
    columns = {f"Ray@{t}": [metrics["per_class"][n][f"rayiou@{t}"] for n in names] for t in ("1", "2", "4")}
    means = {f"Ray@{t}": metrics[f"rayiou@{t}"] for t in ("1", "2", "4")}
    table = format_table(names, columns, means)
    ave = "\n".join(f"  AVE {name:<22} {metrics['per_class'][name]['ave']:.3f} m/s"
                    for name in (openocc.CLASS_NAMES[c] for c in openocc.DYNAMIC_CLASSES))
    return "\n".join([table, "per dynamic class (rays true-positive at 2 m; nan = none):", ave,
                      f"RayIoU: {100 * metrics['rayiou']:.2f}  (@1 m {100 * metrics['rayiou@1']:.2f}, "
                      f"@2 m {100 * metrics['rayiou@2']:.2f}, @4 m {100 * metrics['rayiou@4']:.2f})",
                      f"mAVE: {metrics['mave']:.3f} m/s", f"OccScore: {100 * metrics['occ_score']:.2f}"])


def main(argv=None):
    args = parse_args(argv)
    split, path, infos = split_infos(args)
    if args.pred_dir:
        check_scored_folder(args.pred_dir, infos, path)
        samples = folder_samples(args.pred_dir, infos, args.data_root, args.gt_dir)
    else:
        samples = model_samples(args, path)
    metrics = score_openocc(samples, scene_lidar_origins(infos), total=len(infos), on_sample=sample_writer(args))
    metrics.update(benchmark="openocc", split=split, info_file=path, source=args.pred_dir or args.ckpt)
    return finish(args, metrics, report(metrics))
