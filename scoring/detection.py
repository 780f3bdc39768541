"""nuScenes 3-D detection (docs/metrics.md#nuscenes-detection-nds): a detection checkpoint's boxes,
or an existing nuScenes result file, scored by nuscenes-devkit's DetectionEval with the
detection_cvpr_2019 config: mAP, NDS, mATE / mASE / mAOE / mAVE / mAAE and per-class AP.

    python evaluate.py --benchmark detection --ckpt CKPT --data-root ROOT [--split val] [--save-json FILE] [--out metrics.json]
    python evaluate.py --benchmark detection --pred-json FILE --data-root ROOT [--split val] [--out metrics.json]

ROOT holds the nuScenes tables (ROOT/<version>/*.json: v1.0-mini for the mini_* splits,
v1.0-trainval for train / val) and, with --ckpt, the sensor files and the info file
ROOT/occ_infos_<split>.pkl (--info to read another one, e.g. for a read-only root). With --ckpt the
model is rebuilt from its checkpoint (EMA weights unless --no-ema), run in test mode, its boxes
decoded (occ/detection.py: top 500, score > 0.1, rotated BEV NMS) and written as a nuScenes result
file (global frame, --save-json to keep it). A result file must hold every sample of the split,
finite scores and known class names. The default split is val, or mini_val when only its info
file (--ckpt) or tables (--pred-json) exist; with --info, the split that file holds.
"""
import json
import math
import os
import tempfile

import cli  # noqa: F401  (first: quiets third-party warnings before they are imported)

import numpy as np
import torch
from tqdm import tqdm

from datasets.build import dataset_from_config
from datasets.nuscenes_occ import collate, load_info_file
from datasets.prepare_nuscenes import VERSION_SPLITS, info_path, load_nuscenes
from occ.data import move_batch
from occ.detection import CLASS_NAMES, DetectionGrid, decode
from occ.errors import DataError, UsageError
from occ.geometry import rotation_to_quaternion
from occ.loop import evaluate_with_ema
from scoring.common import checkpoint_model, finish

SPLIT_VERSIONS = {split: version for version, splits in VERSION_SPLITS.items() for split in splits}
EVAL_CONFIG = "detection_cvpr_2019"
TP_ERRORS = {"trans_err": "mATE", "scale_err": "mASE", "orient_err": "mAOE", "vel_err": "mAVE", "attr_err": "mAAE"}
MOVING_SPEED = 0.2  # m/s: above it a box gets its class's "moving" attribute (mmdet3d's rule)
DEFAULT_ATTRIBUTES = {"car": "vehicle.parked", "truck": "vehicle.parked", "construction_vehicle": "vehicle.parked",
                      "bus": "vehicle.moving", "trailer": "vehicle.parked", "barrier": "", "motorcycle":
                      "cycle.without_rider", "bicycle": "cycle.without_rider", "pedestrian": "pedestrian.moving",
                      "traffic_cone": ""}
RESULT_META = {"use_camera": True, "use_lidar": False, "use_radar": False, "use_map": False, "use_external": False}


def parse_args(argv=None):
    parser = cli.parser_for(__doc__)
    cli.add_scoring_args(parser, "checkpoint of a detection model (train_fusion.py, model.head 'detection')",
                         "--pred-json", "a nuScenes detection result file to score",
                         "nuScenes root: the tables, and with --ckpt the sensor files and info files")
    parser.add_argument("--save-json", help="--ckpt: also write the predictions as a nuScenes result file here")
    args = parser.parse_args(argv)
    cli.check_scoring_args(parser, args, ckpt_only=("no_ema", "save_json", "info"), files=("out", "save_json"))
    return args


def default_split(args):
    """The split of --info; else val when its info file (--ckpt) or trainval tables (--pred-json)
    exist; else mini_val."""
    if args.info:
        return load_info_file(args.info)["split"]
    if args.ckpt:
        return "val" if os.path.isfile(info_path(args.data_root, "val")) else "mini_val"
    return "val" if os.path.isdir(os.path.join(args.data_root, SPLIT_VERSIONS["val"])) else "mini_val"


def split_version(split):
    if split not in SPLIT_VERSIONS:
        raise UsageError(f"unknown split {split!r}; expected one of {sorted(SPLIT_VERSIONS)}")
    return SPLIT_VERSIONS[split]


# ----------------------------------------------------------------------------- result records
def attribute_name(class_name, velocity):
    """The nuScenes attribute of a predicted box by its speed (mmdet3d's rule): moving above
    MOVING_SPEED m/s (vehicles 'vehicle.moving', cycles 'cycle.with_rider'), else pedestrians
    'pedestrian.standing' and buses 'vehicle.stopped'; otherwise the class default."""
    if math.hypot(*velocity) > MOVING_SPEED:
        if class_name in ("car", "construction_vehicle", "bus", "truck", "trailer"):
            return "vehicle.moving"
        if class_name in ("bicycle", "motorcycle"):
            return "cycle.with_rider"
    else:
        if class_name == "pedestrian":
            return "pedestrian.standing"
        if class_name == "bus":
            return "vehicle.stopped"
    return DEFAULT_ATTRIBUTES[class_name]


def result_records(sample_token, ego2global, boxes, scores, labels):
    """nuScenes result records of one sample's boxes (K, 9) x, y, z, l, w, h, yaw, vx, vy in its
    key-frame ego frame: centre, heading and velocity moved to the global frame with ego2global
    (4x4), size as w, l, h, rotation as a (w, x, y, z) quaternion."""
    rotation = np.asarray(ego2global, dtype=np.float64)[:3, :3]
    translation = np.asarray(ego2global, dtype=np.float64)[:3, 3]
    records = []
    for box, score, label in zip(np.asarray(boxes, dtype=np.float64), np.asarray(scores), np.asarray(labels)):
        x, y, z, length, width, height, yaw, vx, vy = box
        cos, sin = math.cos(yaw), math.sin(yaw)
        box_rotation = rotation @ np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
        velocity = (rotation @ np.array([vx, vy, 0.0]))[:2]
        class_name = CLASS_NAMES[int(label)]
        records.append({
            "sample_token": sample_token,
            "translation": (rotation @ np.array([x, y, z]) + translation).tolist(),
            "size": [float(width), float(length), float(height)],
            "rotation": rotation_to_quaternion(box_rotation).tolist(),
            "velocity": velocity.tolist(),
            "detection_name": class_name,
            "detection_score": float(score),
            "attribute_name": attribute_name(class_name, velocity),
        })
    return records


def write_results(results, path):
    """{sample_token: [records]} -> a nuScenes result file (camera-only meta)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"meta": RESULT_META, "results": results}, f)


@torch.no_grad()
def predict_results(model, dataset, grid, device, batch_size=1, num_workers=0, progress=True):
    """{sample_token: [result records]} of a detection model over a test-mode dataset."""
    ego2global = {info["token"]: info["ego2global"] for info in dataset.infos}
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=collate)
    results = {}
    for batch in tqdm(loader, desc="detect", unit="batch", disable=not progress):
        detections = decode(model(move_batch(batch, device))["det_preds"], grid)
        for token, found in zip(batch["sample_token"], detections):
            results[token] = result_records(token, ego2global[token], found["boxes"].cpu().numpy(),
                                            found["scores"].cpu().numpy(), found["labels"].cpu().numpy())
    return results


# ------------------------------------------------------------------------------------ checking
def split_sample_tokens(nusc, split):
    """The key frames of a split, as the devkit's DetectionEval selects them."""
    from nuscenes.utils.splits import create_splits_scenes
    scenes = set(create_splits_scenes()[split])
    return [s["token"] for s in nusc.sample if nusc.get("scene", s["scene_token"])["name"] in scenes]


def check_result_file(path, sample_tokens):
    """DataError naming the file unless it is a nuScenes result file that holds every one of
    `sample_tokens` and no other sample, with finite numbers, known classes and at most 500
    boxes per sample. Returns its results ({sample_token: [boxes]})."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"result file not found: {path}")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as error:
        raise DataError(f"result file {path} is not valid JSON: {error}") from error
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict) or not isinstance(data.get("meta"),
                                                                                                  dict):
        raise DataError(f"result file {path}: expected a JSON object with 'meta' and 'results' "
                        f"({{sample_token: [boxes]}})")
    results = data["results"]
    missing = [token for token in sample_tokens if token not in results]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise DataError(f"result file {path} lacks {len(missing)} of the {len(sample_tokens)} samples of the "
                        f"split: {shown} (every sample needs an entry, an empty list when nothing is detected)")
    extra = sorted(set(results) - set(sample_tokens))
    if extra:
        raise DataError(f"result file {path} holds {len(extra)} samples that are not in the split, e.g. {extra[0]}")
    for token, boxes in results.items():
        if not isinstance(boxes, list) or len(boxes) > 500:
            raise DataError(f"result file {path}: sample {token} must hold a list of at most 500 boxes")
        for index, box in enumerate(boxes):
            where = f"result file {path}: sample {token}, box {index}"
            if not isinstance(box, dict):
                raise DataError(f"{where} is not an object")
            if box.get("detection_name") not in CLASS_NAMES:
                raise DataError(f"{where}: detection_name {box.get('detection_name')!r} is not one of {CLASS_NAMES}")
            for key, length in (("translation", 3), ("size", 3), ("rotation", 4), ("velocity", 2),
                                ("detection_score", None)):
                value = box.get(key)
                values = [value] if length is None else value
                if not isinstance(values, list) or (length is not None and len(values) != length) or not all(
                        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                    raise DataError(f"{where}: '{key}' must be {length or 1} number(s), got {value!r}")
                if not all(math.isfinite(v) for v in values):
                    raise DataError(f"{where}: '{key}' is not finite ({value!r})")
    return results


# ------------------------------------------------------------------------------------- scoring
def score_results(path, nusc, split, verbose=False):
    """The devkit's DetectionEval (detection_cvpr_2019) of a checked result file ->
    {"map", "nds", "mATE", ..., "per_class": {name: {"ap", "ap@0.5", ..., "trans_err", ...}}}.
    Errors are NaN where the devkit has none (e.g. mAAE without attribute labels)."""
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    if not any(check_result_file(path, split_sample_tokens(nusc, split)).values()):
        return nothing_detected_metrics()
    with tempfile.TemporaryDirectory() as output_dir:
        evaluator = DetectionEval(nusc, config_factory(EVAL_CONFIG), path, split, output_dir, verbose=verbose)
        summary = evaluator.evaluate()[0].serialize()
    metrics = {"map": summary["mean_ap"], "nds": summary["nd_score"]}
    for key, name in TP_ERRORS.items():
        metrics[name] = summary["tp_errors"][key]
    metrics["per_class"] = {name: {"ap": summary["mean_dist_aps"][name],
                                   **{f"ap@{d}": ap for d, ap in summary["label_aps"][name].items()},
                                   **summary["label_tp_errors"][name]} for name in CLASS_NAMES}
    return metrics


def nothing_detected_metrics():
    """score_results' figures for a result file without a single box, which the devkit cannot load:
    what it gives every class without a true positive (AP 0 at every distance, every TP error 1,
    NaN where it never scores the error: attribute and velocity of barriers, attribute, velocity and
    orientation of traffic cones), so mAP 0 and NDS 0."""
    from nuscenes.eval.common.config import config_factory
    never_scored = {"barrier": ("attr_err", "vel_err"), "traffic_cone": ("attr_err", "vel_err", "orient_err")}
    per_class = {name: {"ap": 0.0, **{f"ap@{d}": 0.0 for d in config_factory(EVAL_CONFIG).dist_ths},
                        **{err: math.nan if err in never_scored.get(name, ()) else 1.0 for err in TP_ERRORS}}
                 for name in CLASS_NAMES}
    return {"map": 0.0, "nds": 0.0, **{name: 1.0 for name in TP_ERRORS.values()}, "per_class": per_class}


def report(metrics):
    """The per-class table (AP in percent, TP errors as they are) and the summary line."""
    header = f"{'class':<21} {'AP':>7} {'ATE':>7} {'ASE':>7} {'AOE':>7} {'AVE':>7} {'AAE':>7}"
    lines = [header, "-" * len(header)]

    def cell(value, scale=1.0):
        return f"{'nan':>7}" if value is None or math.isnan(value) else f"{scale * value:7.3f}"

    for name in CLASS_NAMES:
        row = metrics["per_class"][name]
        lines.append(f"{name:<21} {cell(row['ap'], 100)} " + " ".join(cell(row[key]) for key in TP_ERRORS))
    lines.append("-" * len(header))
    lines.append(f"{'MEAN':<21} {cell(metrics['map'], 100)} " + " ".join(cell(metrics[n]) for n in TP_ERRORS.values()))
    lines.append(f"mAP {100 * metrics['map']:.2f}, NDS {100 * metrics['nds']:.2f} ({EVAL_CONFIG}, "
                 f"{metrics.get('num_samples', '?')} samples)")
    return "\n".join(lines)


def make_detection_validate(val_set, data_root, collate_fn=collate):
    """validate(run, step) for occ.loop.fit: the EMA weights on `val_set` (test mode), scored by
    the devkit against the tables of its info file's version in `data_root`; mAP and NDS to
    TensorBoard."""
    info = load_info_file(val_set.info_path)
    split = info["split"]
    nusc = load_nuscenes(data_root, split_version(split))

    def validate(run, step):
        grid = DetectionGrid.from_model_config(run.cfg.model)

        def score(network):
            results = predict_results(network, val_set, grid, run.accelerator.device, run.cfg.data.batch_size,
                                      progress=False)
            with tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, "results.json")
                write_results(results, path)
                return score_results(path, nusc, split)
        metrics = evaluate_with_ema(run, score)
        if metrics is None:
            return None
        run.writer.add_scalar("val/mAP", metrics["map"], step)
        run.writer.add_scalar("val/NDS", metrics["nds"], step)
        run.log(f"step {step}: val mAP {100 * metrics['map']:.2f}, NDS {100 * metrics['nds']:.2f}")
        return metrics
    return validate


def main(argv=None):
    args = parse_args(argv)
    split = args.split or default_split(args)
    nusc = load_nuscenes(args.data_root, split_version(split))
    with tempfile.TemporaryDirectory() as folder:
        path, source = args.pred_json, args.pred_json
        if args.ckpt:
            model, cfg = checkpoint_model(args, head="detection")
            info = args.info or info_path(args.data_root, split)
            dataset = dataset_from_config(cfg, args.data_root, info, train=False, load_gt=False)
            results = predict_results(model, dataset, DetectionGrid.from_model_config(cfg.model), args.device,
                                      args.batch_size, args.num_workers)
            path, source = args.save_json or os.path.join(folder, "results.json"), args.ckpt
            write_results(results, path)
            if args.save_json:
                print(f"predictions written to {args.save_json}")
        metrics = score_results(path, nusc, split)
    metrics.update(num_samples=len(split_sample_tokens(nusc, split)), split=split, source=source,
                   eval_config=EVAL_CONFIG)
    return finish(args, metrics, report(metrics))
