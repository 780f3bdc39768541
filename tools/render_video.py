"""Render an occupancy video of one scene: a frame per key frame, in time order, as an H.264 MP4.

    python tools/render_video.py --ckpt CKPT --data-root ROOT --scene NAME [--split val] --out scene.mp4
    python tools/render_video.py --pred-dir DIR --data-root ROOT --scene NAME --out scene.mp4
    python tools/render_video.py --data-root ROOT --scene NAME --out scene.mp4        (ground truth alone)

Each frame (occ/video.py) shows the six cameras with the occupied voxels of the prediction drawn
over them in the class colours (of the ground truth when neither --ckpt nor --pred-dir is given),
the bird's-eye ground truth vs prediction with the camera-visible region, the 3-D voxel view and
the class legend, in the colours of evaluate.py --vis-dir. The frame is --width x --height pixels
(default 1440 x 1024, both even), at --fps frames per second (default 2, the key-frame rate);
--png-dir DIR also writes each frame as DIR/<index>_<sample_token>.png.

The key frames are the records of ROOT/occ_infos_<split>.pkl (datasets/prepare_nuscenes.py; --info
to read another file; the default split is val, or mini_val when only that one exists) whose scene
is NAME; the ground truth is ROOT/gts/<scene_name>/<token>/labels.npz. --ckpt: the model rebuilt
from the checkpoint's config, EMA weights (--no-ema: the raw ones), run in test mode as
evaluate.py does. --pred-dir: Occ3D predictions <sample_token>.npz, as evaluate.py --save-pred
writes them. Runs headless (no display needed).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cli  # noqa: E402  (first: quiets third-party warnings before they are imported)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

from datasets.build import dataset_from_config, default_split, info_path  # noqa: E402
from datasets.nuscenes_occ import collate, load_infos, load_occ_gt  # noqa: E402
from occ import occ3d  # noqa: E402
from occ.errors import UsageError  # noqa: E402
from occ.geometry import invert_transform  # noqa: E402
from occ.video import scene_frame, write_mp4  # noqa: E402
from occ.visualize import save_png  # noqa: E402

# cameras front row left to right, then back row; others (non-nuScenes rigs) after them by name
CAMERA_ORDER = ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT")


def parse_args(argv=None):
    parser = cli.parser_for(__doc__)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--ckpt", help="checkpoint written by a training script")
    source.add_argument("--pred-dir", help="folder of Occ3D-format <sample_token>.npz predictions")
    parser.add_argument("--data-root", required=True, help="dataset root holding the info files, images and gts/")
    parser.add_argument("--scene", required=True, help="scene name, e.g. scene-0103")
    parser.add_argument("--out", required=True, help="the MP4 file to write")
    parser.add_argument("--split", help="info file split (default: val, or mini_val when only it exists)")
    parser.add_argument("--info", help="info file (default: DATA_ROOT/occ_infos_<split>.pkl)")
    parser.add_argument("--width", type=int, default=1440, help="frame width in pixels (even)")
    parser.add_argument("--height", type=int, default=1024, help="frame height in pixels (even)")
    parser.add_argument("--fps", type=float, default=2.0, help="frames per second (key frames are 2 Hz)")
    parser.add_argument("--png-dir", help="also write each frame as a PNG file into this folder")
    parser.add_argument("--no-ema", action="store_true", help="--ckpt: use the raw weights, not the EMA ones")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.no_ema and not args.ckpt:
        parser.error("--no-ema only applies to --ckpt")
    for name in ("width", "height"):
        value = getattr(args, name)
        if value < 16 or value % 2:
            raise UsageError(f"--{name} must be an even number >= 16 (H.264 4:2:0), got {value}")
    if args.fps <= 0:
        raise UsageError(f"--fps must be > 0, got {args.fps}")
    if args.png_dir and os.path.exists(args.png_dir) and not os.path.isdir(args.png_dir):
        raise UsageError(f"--png-dir {args.png_dir} is a file, not a folder")
    return args


def check_output(path):
    """Refuses, naming it, an output path that cannot be written (a folder, a parent folder that
    cannot be created, a read-only location), before anything is rendered."""
    if os.path.isdir(path):
        raise UsageError(f"--out {path} is a folder; give the path of the .mp4 file to write")
    existed = os.path.exists(path)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "ab"):
            pass
    except OSError as error:
        raise UsageError(f"cannot write --out {path}: {error.strerror or error}") from error
    if not existed:
        os.remove(path)


def scene_infos(path, scene):
    """The info records of `scene` in the info file, in time order; UsageError listing the
    file's scenes when it has none."""
    infos = load_infos(path)
    records = sorted((info for info in infos if info["scene_name"] == scene), key=lambda info: info["timestamp"])
    if not records:
        names = sorted({info["scene_name"] for info in infos})
        raise UsageError(f"scene {scene!r} is not in {path}; its scenes: {', '.join(names)}")
    return records


def camera_rank(channel):
    """Sort key of a camera channel: CAMERA_ORDER first, then any other channel by name."""
    return (CAMERA_ORDER.index(channel) if channel in CAMERA_ORDER else len(CAMERA_ORDER), channel)


def cameras_of(info, data_root):
    """[(channel, image uint8 (h, w, 3), cam2ego (4, 4) to the key-frame ego frame, intrinsics)]
    of one info record, in CAMERA_ORDER."""
    global2keyego = invert_transform(info["ego2global"])
    cameras = []
    for channel in sorted(info["cams"], key=camera_rank):
        cam = info["cams"][channel]
        with Image.open(os.path.join(data_root, cam["path"])) as image:
            pixels = np.asarray(image.convert("RGB"))
        cam2keyego = global2keyego @ cam["ego2global"] @ cam["cam2ego"]
        cameras.append((channel, pixels, cam2keyego, cam["intrinsics"]))
    return cameras


def occupancy_samples(args, infos, info_file):
    """(source description, iterator of {"semantics", "mask_camera", "pred" (None: GT alone)} per
    key frame of `infos`, in order). The model code is imported only when needed: importing spconv
    takes seconds, which a ground-truth video does not need."""
    def ground_truth(info):
        return load_occ_gt(occ3d.gt_path(args.data_root, info["scene_name"], info["token"]))

    if args.pred_dir:
        from evaluate import load_prediction
        from scoring.common import check_prediction_folder
        check_prediction_folder(args.pred_dir, infos)
        samples = ({**ground_truth(info),
                    "pred": load_prediction(os.path.join(args.pred_dir, f"{info['token']}.npz"))} for info in infos)
        return f"predictions {args.pred_dir}", samples
    if args.ckpt:
        from occ.evaluation import build_model_from_checkpoint, predict
        torch.manual_seed(0)
        model, cfg = build_model_from_checkpoint(args.ckpt, not args.no_ema, args.device)
        dataset = dataset_from_config(cfg, args.data_root, info_file, train=False, load_gt=True)
        position = {info["token"]: index for index, info in enumerate(dataset.infos)}
        subset = torch.utils.data.Subset(dataset, [position[info["token"]] for info in infos])
        return f"{cfg.name}, {args.ckpt}", predict(model, subset, args.device, collate)
    return "ground truth", ({**ground_truth(info), "pred": None} for info in infos)


def main(argv=None):
    args = parse_args(argv)
    check_output(args.out)
    split = args.split or default_split(args.data_root, "val")
    info_file = args.info or info_path(args.data_root, split)
    infos = scene_infos(info_file, args.scene)
    source, samples = occupancy_samples(args, infos, info_file)

    def frames():
        for index, (info, sample) in enumerate(tqdm(zip(infos, samples), total=len(infos), desc="render",
                                                    unit="frame")):
            title = f"{args.scene}  key frame {index + 1}/{len(infos)}  {info['token']}  |  {source}"
            frame = scene_frame(cameras_of(info, args.data_root), sample["semantics"], sample["mask_camera"],
                                sample["pred"], title, size=(args.height, args.width))
            if args.png_dir:
                save_png(frame, os.path.join(args.png_dir, f"{index:03d}_{info['token']}.png"))
            yield frame

    count = write_mp4(frames(), args.out, fps=args.fps)
    print(f"video of {count} key frames ({args.width}x{args.height}, {args.fps:g} fps) written to {args.out}")
    return args.out


if __name__ == "__main__":
    cli.run_main(main)
