"""Cache the Occ-BEV pre-training targets of every key frame of a nuScenes-format dataset.

    python datasets/prepare_occbev.py --root DIR --version VERSION [--out DIR/occbev_targets]
        [--frames 2] [--force]

Writes `<out>/<sample_token>.npz` (read it with `datasets.occbev_targets.load_occbev_target`):
binary occupancy on the Occ3D grid in the key frame's LiDAR ego frame, from the key frame, the
previous and next `--frames` key frames and every sweep between them. Existing files are kept
unless `--force`. No labels are read, only LiDAR, calibration and ego poses.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from tqdm import tqdm  # noqa: E402

from datasets.occbev_targets import occbev_target, occbev_target_path, save_occbev_target  # noqa: E402
from datasets.prepare_nuscenes import load_nuscenes  # noqa: E402
from occ.errors import UsageError  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, type=Path, help="nuScenes root (holds VERSION/, samples/, sweeps/)")
    parser.add_argument("--version", required=True, help="table folder, e.g. v1.0-trainval or v1.0-mini")
    parser.add_argument("--out", type=Path, default=None, help="target folder (default ROOT/occbev_targets)")
    parser.add_argument("--frames", type=int, default=2, help="key frames accumulated on each side (default 2)")
    parser.add_argument("--force", action="store_true", help="rewrite targets that already exist")
    args = parser.parse_args(argv)
    if args.frames < 0:
        parser.error(f"--frames must be >= 0, got {args.frames}")
    if not (args.root / args.version).is_dir():
        parser.error(f"--root/--version: table folder {args.root / args.version} does not exist")
    return args


def main(argv=None):
    args = parse_args(argv)
    out = args.out if args.out is not None else args.root / "occbev_targets"
    out.mkdir(parents=True, exist_ok=True)
    nusc = load_nuscenes(str(args.root), args.version)  # a missing or corrupt table: named
    written = kept = 0
    for sample in tqdm(nusc.sample, desc="Occ-BEV targets", unit="key frame"):
        path = occbev_target_path(out, sample["token"])
        if path.exists() and not args.force:
            kept += 1
            continue
        save_occbev_target(path, occbev_target(nusc, sample["token"], args.frames))
        written += 1
    print(f"Occ-BEV targets in {out}: {written} written, {kept} already there and kept"
          + (" (--force rewrites them)" if kept else ""))


if __name__ == "__main__":
    try:
        main()
    except (UsageError, FileNotFoundError) as error:  # a bad table or LiDAR file, named
        sys.exit(f"error: {error}")
