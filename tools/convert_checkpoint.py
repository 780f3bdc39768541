"""Convert an official EFFOcc / FlashOcc / DistillOcc checkpoint (mmcv / mmdet3d) into a checkpoint
of this project (docs/deployment.md#official-checkpoints).

    python tools/convert_checkpoint.py --src OFFICIAL.pth --config effocc_fusion_r18 --out OURS.pt [--trust-file]

--src: an mmcv checkpoint ({'meta', 'state_dict', 'optimizer'}), an EMA file ({'epoch',
'state_dict', 'updates'}) or a bare state dict; a `module.` prefix is stripped. Every official key
is renamed onto the model of --config (any occupancy preset: effocc_fusion_r18 / _r50 / _swinb,
effocc_lidar, flashocc_r50, distillocc_r50); sparse-conv weights are read in either spconv layout
(decided by shape), Swin patch-merging tensors are reordered. When a key does not map, has the
wrong shape, or a weight of the model gets no key, nothing is written and every such key is listed.
The output holds the converted weights as both the raw and the EMA weights, and the config with
data.color_order = "bgr" (the official models were trained on BGR images); it is what
`evaluate.py --ckpt`, `tools/export_onnx.py --ckpt` and `train_fusion.py --init-from` read.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cli  # noqa: E402  (first: quiets third-party warnings before they are imported)

import torch  # noqa: E402

from occ import official_weights  # noqa: E402
from occ.checkpoint import save_checkpoint  # noqa: E402
from occ.config import get_config, preset_names  # noqa: E402
from occ.errors import UsageError  # noqa: E402
from occ.models import build_model  # noqa: E402


def parse_args(argv=None):
    parser = cli.parser_for(__doc__)
    parser.add_argument("--src", required=True, help="official checkpoint (.pth)")
    parser.add_argument("--config", required=True, help="preset of the same model, e.g. effocc_fusion_r18")
    parser.add_argument("--out", required=True, help="checkpoint to write (.pt)")
    parser.add_argument("--trust-file", action="store_true",
                        help="read --src with full unpickling (runs code from the file) when it holds "
                             "more than tensors and plain data")
    args = parser.parse_args(argv)
    if args.config not in preset_names():
        raise UsageError(f"--config {args.config!r} is not a preset; valid: {', '.join(preset_names())}")
    if os.path.isdir(args.out):
        raise UsageError(f"--out {args.out} is a folder; give the path of the .pt file to write")
    if os.path.abspath(args.out) == os.path.abspath(args.src):
        raise UsageError(f"--out {args.out} would overwrite --src")
    return args


def main(argv=None):
    args = parse_args(argv)
    cfg = get_config(args.config)
    cfg.data.color_order = "bgr"  # the official models were trained on BGR images
    official, extras = official_weights.read_official_checkpoint(args.src, args.trust_file)
    with torch.device("meta"):  # names and shapes only
        our_shapes = {key: tensor.shape for key, tensor in build_model(cfg).state_dict().items()}
    state, counts = official_weights.convert_state_dict(official, our_shapes, official_weights.module_map(cfg),
                                                        source=args.src)
    build_model(cfg).load_state_dict(state)  # strict: every key, every shape
    save_checkpoint(args.out, model=state, ema={"updates": extras.get("updates", 0), "model": state},
                    step=0, epoch=extras.get("epoch", 0), config=cfg, converted_from=os.path.abspath(args.src))
    how = ", ".join(f"{count} {name}" for name, count in sorted(counts.items()))
    print(f"{args.src}: {len(state)} tensors ({how}) -> {args.out} (config {cfg.name}, data.color_order=bgr)")
    return state


if __name__ == "__main__":
    cli.run_main(main)
