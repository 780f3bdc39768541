"""Write a synthetic driving world as a nuScenes-format dataset (the project's default data).

    python datasets/make_synthetic.py --out DIR [--scenes N] [--samples-per-scene K] [--seed S]
                                      [--image-size WxH] [--workers W] [--preview]
    python datasets/make_synthetic.py --format waymo --out DIR [...]   the same world, Occ3D-Waymo
                                      layout (datasets/synthetic/waymo.py, docs/data.md#occ3d-waymo):
                                      K frames at 10 Hz per scene, --image-size = the front cameras
                                      (default 1920x1280; the side cameras keep the height ratio 886/1280)

Layout under DIR (nuScenes v1.0-mini plus the occupancy ground truths):
    v1.0-mini/*.json                  the 13 nuScenes tables + lidarseg.json
    samples/CAM_*/*.jpg               key-frame images (WxH, default 1600x900, JPEG q85)
    samples/LIDAR_TOP/*.pcd.bin       key-frame scans, float32 (x, y, z, intensity, ring), LiDAR frame
    sweeps/LIDAR_TOP/*.pcd.bin        the 9 sweeps (20 Hz) between consecutive key frames (2 Hz)
    lidarseg/v1.0-mini/<token>_lidarseg.bin   uint8 nuScenes-lidarseg category index per key-frame point
    maps/<token>.png                  placeholder map masks (one per location)
    gts/<scene>/<sample>/labels.npz   Occ3D: semantics, mask_lidar, mask_camera (200x200x16 uint8)
    gts/annotations.json              Occ3D: train_split, val_split, scene_infos[scene][sample]
    openocc_v2/<scene>/<sample>/labels.npz    OpenOcc v2: semantics (OpenOcc class order), flow
                                      (200x200x16x2 float32 vx, vy m/s, ego frame), mask_lidar, mask_camera
    nuScenes-Occupancy/scene_<scene token>/occupancy/<lidar token>.npy
                                      OpenOccupancy: uint16 rows [z, y, x, cls], 0.2 m, LiDAR frame
Scenes take the v1.0-mini names (scene-0061, scene-0103, ...), so nuScenes' mini_train / mini_val
splits apply. The world itself is described in datasets/synthetic/world.py (layout, agents),
lidar.py, camera.py and occupancy.py (how each sensor and ground truth is made).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets.synthetic.generate import Options, generate  # noqa: E402
from datasets.synthetic.preview import write_preview  # noqa: E402
from datasets.synthetic.waymo import WaymoOptions, generate_waymo  # noqa: E402


def image_size(text):
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--image-size must look like 1600x900, got {text!r}")
    return width, height


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder (must not hold a v1.0-mini already)")
    parser.add_argument("--scenes", type=int, default=10, help="number of scenes, 1..10")
    parser.add_argument("--samples-per-scene", type=int, default=20, help="key frames per scene")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=("nuscenes", "waymo"), default="nuscenes",
                        help="nuScenes v1.0-mini layout (default) or the Occ3D-Waymo layout")
    parser.add_argument("--image-size", type=image_size, default=None,
                        help="camera image WxH (default 1600x900; waymo: front cameras, default 1920x1280)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes")
    parser.add_argument("--preview", action="store_true", help="also write DIR/preview.png")
    args = parser.parse_args(argv)
    if args.format == "waymo":
        if args.preview:
            parser.error("--preview draws the nuScenes format only")
        options = WaymoOptions(args.out, args.scenes, args.samples_per_scene, args.seed,
                               args.image_size or WaymoOptions.image_size, args.workers)
        try:
            generate_waymo(options)
        except (ValueError, FileExistsError) as error:
            parser.error(str(error))
        return
    options = Options(args.out, args.scenes, args.samples_per_scene, args.seed, args.image_size or (1600, 900),
                      args.workers)
    try:
        generate(options)
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))
    if args.preview:
        path = os.path.join(args.out, "preview.png")
        write_preview(args.out, path)
        print(f"preview written to {path}")


if __name__ == "__main__":
    main()
