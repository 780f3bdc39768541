"""Command-line plumbing shared by the scripts (train_fusion.py, train_distill.py,
pretrain_occbev.py, evaluate.py); not part of the library `occ/`.

- `add_training_args`: the options every training script has; `setup_options` / `fit_options`
  turn them into the keyword arguments of occ.loop.setup_run / fit; `budget_args` writes them.
- `info_file`: the info file of a split (--info-dir, --train-split / --val-split).
- `add_scoring_args` / `check_scoring_args`: the options every scorer (evaluate.py and
  scoring/<benchmark>.py) shares, and their checks.
- `run_main`: runs a script's main() and turns errors a user caused into one line on stderr;
  every other exception keeps its traceback.
Importing it also silences third-party deprecation warnings that users cannot act on (spconv's).
"""
import argparse
import os
import sys
import warnings

# spconv 2.3.6 decorates with the deprecated torch.cuda.amp API and indexes with lists; set before
# anything imports spconv.
warnings.filterwarnings("ignore", category=FutureWarning, module="spconv")
warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")

import torch  # noqa: E402

from datasets.build import default_split, info_path  # noqa: E402
from occ.loop import NonFiniteLossError, TrainingInterrupted  # noqa: E402
from occ.errors import UsageError  # noqa: E402


def add_training_args(parser):
    """The command-line options every training script shares."""
    parser.add_argument("--config", required=True, help="preset name, e.g. effocc_fusion_r18 or effocc_fusion_r18_tiny")
    parser.add_argument("--data-root", required=True, help="nuScenes-format root (images, LiDAR, ground truth)")
    parser.add_argument("--info-dir", "--info", dest="info_dir", metavar="DIR",
                        help="folder of the info files occ_infos_<split>.pkl (datasets/prepare_nuscenes.py "
                             "--out-dir; default: --data-root)")
    parser.add_argument("--work-dir", required=True, help="checkpoints, config.json and TensorBoard logs")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. train.lr=1e-3 data.batch_size=2")
    parser.add_argument("--train-split", help="info split to train on (default: train, or mini_train)")
    parser.add_argument("--val-split", help="info split to validate on (default: val, or mini_val)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --work-dir")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run in a --work-dir that holds checkpoints (they are deleted)")
    parser.add_argument("--max-steps", type=int, help="stop (and save) after this many optimizer steps")
    parser.add_argument("--max-minutes", type=float, help="stop (and save) after this much training time")
    parser.add_argument("--ckpt-every", type=int, help="also save every N optimizer steps")
    parser.add_argument("--val-every", type=int, help="also validate every N optimizer steps")
    parser.add_argument("--no-val", action="store_true", help="never validate")
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], help="overrides accelerate's setting")
    parser.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    parser.add_argument("--skip-bad-samples", action="store_true",
                        help="replace a training sample whose files are missing or corrupt by the next one "
                             "(each is logged; the count is reported at the end and in TensorBoard)")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is present")
    return parser


def budget_args(steps, minutes):
    """The --max-steps / --max-minutes arguments of a training budget: `steps` when given, else
    `minutes` (for code that drives the training scripts, e.g. the benchmarks)."""
    return ["--max-steps", str(steps)] if steps else ["--max-minutes", str(minutes)]


def check_training_args(args):
    """Refuse option values that cannot work, naming the option."""
    if args.grad_accum < 1:
        raise UsageError(f"--grad-accum must be >= 1, got {args.grad_accum}")
    for name in ("max_steps", "ckpt_every", "val_every"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be > 0, got {value}")
    if args.max_minutes is not None and args.max_minutes <= 0:
        raise UsageError(f"--max-minutes must be > 0, got {args.max_minutes}")
    if os.path.exists(args.work_dir) and not os.path.isdir(args.work_dir):
        raise UsageError(f"--work-dir {args.work_dir} is a file, not a folder")
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite exclude each other")


def info_file(args, kind):
    """(split, path) of the info file to use for `kind` "train" or "val"."""
    folder = args.info_dir or args.data_root
    split = (args.train_split if kind == "train" else args.val_split) or default_split(folder, kind)
    return split, info_path(folder, split)


def run_settings(args, *names):
    """The options that define a run (recorded in its checkpoints, compared on --resume): the
    shared ones plus the script's own `names`."""
    shared = ("config", "train_split", "val_split", "grad_accum", "mixed_precision", "skip_bad_samples")
    return {name: getattr(args, name) for name in shared + names}


def setup_options(args, settings, script, argv):
    """Keyword arguments of occ.loop.setup_run from the parsed training options; the recorded
    command line is `script` (its file name) and its arguments `argv` (None: sys.argv[1:])."""
    command = [os.path.basename(script), *(sys.argv[1:] if argv is None else argv)]
    return dict(work_dir=args.work_dir, resume=args.resume, overwrite=args.overwrite, cpu=args.cpu,
                mixed_precision=args.mixed_precision, grad_accum=args.grad_accum, settings=settings,
                command=command)


def fit_options(args):
    """Keyword arguments of occ.loop.fit from the parsed training options."""
    return dict(max_steps=args.max_steps, max_minutes=args.max_minutes, ckpt_every=args.ckpt_every,
                val_every=None if args.no_val else args.val_every)


def add_scoring_args(parser, ckpt_help, predictions, predictions_help, data_root_help, splits=None):
    """The options every scorer shares: what to score (--ckpt, or the scorer's option `predictions`,
    e.g. "--pred-dir"), the data (--data-root, --split, --info), --out, and how a checkpoint runs
    (--no-ema, --device, --batch-size, --num-workers). `splits`: the only splits allowed (default
    val); None: any, default val or mini_val (datasets.build.default_split)."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help=ckpt_help)
    source.add_argument(predictions, help=predictions_help)
    parser.add_argument("--data-root", required=True, help=data_root_help)
    if splits:
        parser.add_argument("--split", choices=splits, default="val")
    else:
        parser.add_argument("--split", help="info file split (default: val, or mini_val when only it exists)")
    parser.add_argument("--info", help="info file (default: DATA_ROOT/occ_infos_<split>.pkl)")
    parser.add_argument("--out", help="write the metrics as JSON here")
    parser.add_argument("--no-ema", action="store_true", help="--ckpt: use the raw weights, not the EMA ones")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--num-workers", type=int, default=0)
    return parser


def check_scoring_args(parser, args, ckpt_only=("no_ema",), files=("out",), folders=()):
    """Refuse scorer options that cannot work, naming the option: an option of `ckpt_only` without
    --ckpt, an existing folder where a file (`files`) is to be written, an existing file where a
    folder (`folders`) is, --batch-size < 1."""
    used = [option(name) for name in ckpt_only if getattr(args, name)]
    if used and not args.ckpt:
        parser.error(f"{', '.join(used)} only appl{'ies' if len(used) == 1 else 'y'} to --ckpt")
    for name in files:
        path = getattr(args, name)
        if path and os.path.isdir(path):
            raise UsageError(f"{option(name)} {path} is a folder; give the path of the file to write")
    for name in folders:
        path = getattr(args, name)
        if path and os.path.exists(path) and not os.path.isdir(path):
            raise UsageError(f"{option(name)} {path} is a file, not a folder")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")


def option(name):
    """The command-line spelling of an argparse destination: "save_pred" -> "--save-pred"."""
    return "--" + name.replace("_", "-")


def run_main(main):
    """main() with one-line errors for what a user can fix, and the exit status of a stop signal."""
    try:
        main()
    except (UsageError, FileNotFoundError, NotADirectoryError, IsADirectoryError, NonFiniteLossError) as error:
        sys.exit(f"error: {error}")
    except TrainingInterrupted as stop:
        print(f"stopped: {stop}", file=sys.stderr)
        sys.exit(128 + stop.signum)


def parser_for(doc):
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
