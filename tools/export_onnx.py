"""Export a checkpoint's camera-only or fusion occupancy model to ONNX without any custom operator,
and check the export with onnxruntime (docs/deployment.md#onnx-export).

    python tools/export_onnx.py --ckpt CKPT --out model.onnx [--no-ema] [--opset 20]
                                [--data-root ROOT [--info-dir DIR] [--split mini_val] [--samples N]
                                 [--min-agreement 0.999]]

The graph holds the image backbone, neck, depth net, BEV pooling (gather, multiply, ScatterND
with reduction add), fuser, BEV encoder and occupancy head (`occ.deploy.ExportableOccNet`). Its
inputs: `images`, the int32 `ranks_depth` / `ranks_feat` / `ranks_bev` (computed per frame from
the camera geometry by `occ.deploy.pooling_ranks`; their length is the graph's one dynamic axis),
and for the fusion model `depth_maps` and `lidar_bev` (the LiDAR branch stays in PyTorch); its
output: `occ_logits` (1, X, Y, Z, classes). It is traced on a random batch of the config's shape.
With --data-root, every (or the first --samples) sample of the validation split runs through
PyTorch and through onnxruntime (CPU); the script prints the largest logit difference and the
fraction of voxels whose class (argmax) agrees, and fails when that is below --min-agreement.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cli  # noqa: E402  (first: quiets third-party warnings before they are imported)

import torch  # noqa: E402

from datasets.build import dataset_from_config, default_split, info_path  # noqa: E402
from datasets.nuscenes_occ import collate  # noqa: E402
from occ import deploy  # noqa: E402
from occ.errors import UsageError  # noqa: E402
from occ.evaluation import build_model_from_checkpoint  # noqa: E402
from occ.models.example_inputs import example_batch  # noqa: E402


def parse_args(argv=None):
    parser = cli.parser_for(__doc__)
    parser.add_argument("--ckpt", required=True, help="checkpoint of a camera-only or fusion occupancy model")
    parser.add_argument("--out", required=True, help="ONNX file to write")
    parser.add_argument("--no-ema", action="store_true", help="export the raw weights, not the EMA ones")
    parser.add_argument("--opset", type=int, default=deploy.DEFAULT_OPSET,
                        help=f"ONNX opset (>= 18; default {deploy.DEFAULT_OPSET})")
    parser.add_argument("--data-root", help="verify on the validation samples of this dataset root")
    parser.add_argument("--info-dir", help="folder of the info files occ_infos_<split>.pkl (default: --data-root)")
    parser.add_argument("--split", help="info split to verify on (default: val, or mini_val)")
    parser.add_argument("--samples", type=int, help="verify on the first N samples only")
    parser.add_argument("--min-agreement", type=float, default=0.999,
                        help="fail when fewer voxels than this fraction get the same class")
    args = parser.parse_args(argv)
    if args.opset < 18:
        raise UsageError(f"--opset {args.opset}: the exporter writes opset 18 or newer (ScatterND with "
                         f"reduction needs 16)")
    if os.path.isdir(args.out):
        raise UsageError(f"--out {args.out} is a folder; give the path of the .onnx file to write")
    if args.samples is not None and args.samples < 1:
        raise UsageError(f"--samples must be >= 1, got {args.samples}")
    return args


def verify(model, cfg, onnx_path, data_root, info_dir, split, num_samples):
    """Run the validation samples through PyTorch and onnxruntime; print and return
    (max |logit difference|, argmax agreement over all voxels)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    split = split or default_split(info_dir, "val")
    dataset = dataset_from_config(cfg, data_root, info_path(info_dir, split), train=False, load_gt=False)
    count = len(dataset) if num_samples is None else min(num_samples, len(dataset))
    max_abs, agreeing, voxels = 0.0, 0.0, 0
    for index in range(count):
        batch = collate([dataset[index]])
        with torch.no_grad():
            reference = model(batch)["occ_logits"]
        inputs = deploy.graph_inputs(model, batch)
        logits = session.run(None, {name: tensor.numpy() for name, tensor in inputs.items()})[0]
        sample_max_abs, sample_agreement = deploy.logit_agreement(reference, logits)
        print(f"{batch['sample_token'][0]}: {inputs['ranks_bev'].numel()} frustum points, max |diff| "
              f"{sample_max_abs:.2e}, argmax agreement {100 * sample_agreement:.4f} %")
        max_abs = max(max_abs, sample_max_abs)
        agreeing += sample_agreement * reference[..., 0].numel()
        voxels += reference[..., 0].numel()
    agreement = agreeing / voxels
    print(f"{count} samples of {split}: max |ONNX - PyTorch| {max_abs:.2e}, argmax agreement {100 * agreement:.4f} %")
    return max_abs, agreement


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(0)
    model, cfg = build_model_from_checkpoint(args.ckpt, not args.no_ema, "cpu")
    if cfg.model.modality == "lidar" or cfg.model.head != "occ":
        raise UsageError(f"{args.ckpt}: {cfg.name} is not a camera-only or fusion occupancy model; "
                         f"only those export to ONNX")
    start = time.perf_counter()
    names = deploy.export_onnx(model, example_batch(cfg, num_points=20000), args.out, args.opset)
    print(f"{cfg.name} -> {args.out} (opset {args.opset}, {time.perf_counter() - start:.1f} s); "
          f"inputs {', '.join(names)}; output {', '.join(deploy.OUTPUT_NAMES)}")
    if args.data_root:
        _, agreement = verify(model, cfg, args.out, args.data_root, args.info_dir or args.data_root, args.split,
                              args.samples)
        if agreement < args.min_agreement:
            sys.exit(f"error: {args.out}: argmax agreement {100 * agreement:.4f} % is below "
                     f"--min-agreement {100 * args.min_agreement:.2f} %")


if __name__ == "__main__":
    cli.run_main(main)
