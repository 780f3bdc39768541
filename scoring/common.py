"""What every scorer (evaluate.py and scoring/<name>.py) shares: the split's records, reading and
checking prediction files, the checkpoint's model, writing the metrics."""
import json
import math
import os

import numpy as np
import torch

from datasets.build import default_split, info_path
from datasets.nuscenes_occ import load_infos, read_npz
from occ.errors import DataError, UsageError
from occ.evaluation import build_model_from_checkpoint


# ------------------------------------------------------------------------------- the split
def split_infos(args):
    """(split, info file, its records) of a scorer's --split / --info (default split: val, or
    mini_val when only that one exists); UsageError for an info file without samples."""
    split = args.split or default_split(args.data_root, "val")
    path = args.info or info_path(args.data_root, split)
    infos = load_infos(path)
    if not infos:
        raise UsageError(f"info file {path} holds no samples")
    return split, path, infos


# ------------------------------------------------------------------------------- predictions
def label_grid(path, array, shape, max_label, what):
    """Check a predicted label grid read from `path`: shape, integer dtype, labels in [0, max_label]
    (`what` describes them in the error); returns it as uint8. DataError naming the file otherwise."""
    if array.shape != shape:
        raise DataError(f"prediction {path} has shape {array.shape}, expected {shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"prediction {path} has dtype {array.dtype}, expected integer labels (uint8)")
    if array.min() < 0 or array.max() > max_label:
        raise DataError(f"prediction {path} holds labels outside [0, {max_label}] ({what}): "
                        f"min {array.min()}, max {array.max()}")
    return array.astype(np.uint8)


def read_semantics(path):
    """The `semantics` array of a prediction file (or its single array); FileNotFoundError when the
    file is missing, DataError naming it when it is empty, truncated, corrupt or holds other arrays."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"prediction not found: {path}")
    arrays = read_npz(path, "prediction")  # BadZipFile, EOFError, zlib.error... -> DataError
    if "semantics" in arrays:
        return arrays["semantics"]
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    raise DataError(f"prediction {path} holds {sorted(arrays)}: expected 'semantics' or a single array")


def save_prediction(folder, token, pred):
    """pred, a label grid, as `semantics` (uint8) in folder/<token>.npz (the folder made when missing)."""
    os.makedirs(folder, exist_ok=True)
    np.savez_compressed(os.path.join(folder, f"{token}.npz"), semantics=np.asarray(pred, dtype=np.uint8))


def check_prediction_folder(pred_dir, infos):
    """Raises naming the samples of the split that have no <token>.npz in pred_dir; returns the
    number of files there that are not part of the split."""
    if not os.path.isdir(pred_dir):
        raise FileNotFoundError(f"prediction folder not found: {pred_dir}")
    present = {name[:-len(".npz")] for name in os.listdir(pred_dir) if name.endswith(".npz")}
    tokens = [info["token"] for info in infos]
    missing = [token for token in tokens if token not in present]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise FileNotFoundError(f"prediction folder {pred_dir} lacks {len(missing)} of the {len(tokens)} samples "
                                f"of the split: {shown} (expected <sample_token>.npz for each)")
    return len(present - set(tokens))


def check_scored_folder(pred_dir, infos, info_file):
    """check_prediction_folder for a scorer: raises for missing samples, says on stdout how many
    files of pred_dir are not samples of `info_file` (they are not scored)."""
    extra = check_prediction_folder(pred_dir, infos)
    if extra:
        print(f"note: {extra} prediction files in {pred_dir} are not samples of {info_file}; not scored")


# ------------------------------------------------------------------------------- the model
def checkpoint_model(args, benchmark=None, head="occ"):
    """(model, cfg) of --ckpt on --device, EMA weights unless --no-ema, seeded; says which on stdout.
    With `benchmark`, a checkpoint trained for another data.benchmark is a UsageError that names the
    scorer it belongs to; a model with another head a CheckpointError."""
    torch.manual_seed(0)
    model, cfg = build_model_from_checkpoint(args.ckpt, not args.no_ema, args.device, head)
    if benchmark is not None and cfg.data.benchmark != benchmark:
        raise UsageError(f"checkpoint {args.ckpt} ({cfg.name}) was trained for data.benchmark = "
                         f"{cfg.data.benchmark!r}: score it with --benchmark {cfg.data.benchmark}")
    print(f"model {cfg.name} from {args.ckpt} ({'raw' if args.no_ema else 'EMA'} weights) on {args.device}")
    return model, cfg


# ------------------------------------------------------------------------------- the metrics
def json_safe(value):
    """NaN -> None recursively (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_metrics(path, metrics):
    """The metrics as JSON (NaN -> null) at `path`, its folder made when missing."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(json_safe(metrics), f, indent=2)
    print(f"metrics written to {path}")


def finish(args, metrics, report_text):
    """A scorer's last words: the report, where --save-pred / --vis-dir wrote (when the scorer has
    them and they were given), the metrics to --out; returns the metrics."""
    print(report_text)
    if getattr(args, "save_pred", None):
        print(f"predictions written to {args.save_pred}")
    if getattr(args, "vis_dir", None):
        print(f"pictures of {min(args.vis_samples, metrics['num_samples'])} samples written to {args.vis_dir}")
    if args.out:
        write_metrics(args.out, metrics)
    return metrics
