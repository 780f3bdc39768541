"""Distil a frozen LiDAR-camera fusion teacher into a camera-only occupancy student (DistillOcc, docs/training.md#distillocc).

    accelerate launch train_distill.py --config distillocc_r50 --teacher-ckpt work_dirs/r18/step_00042000.pt \
        --labelled-fraction 0.4 --data-root data/nuscenes --work-dir work_dirs/distill_40
    python train_distill.py --config distillocc_r50_tiny --teacher-ckpt work_dirs/tiny/step_00000300.pt \
        --labelled-fraction 0.4 --data-root data/synthetic --work-dir work_dirs/distill_tiny --max-minutes 10
    python train_distill.py ... --resume            # continue from the latest checkpoint in --work-dir

Every training scene is used; a seeded fraction of them (`--labelled-fraction`, docs/training.md#label-efficiency: seed 42, the
same scenes `train_fusion.py --scenes-fraction` trains on) is labelled. The teacher (the model of
the checkpoint's config, EMA weights by default) is frozen, in eval mode and run under no_grad; it
is not part of the optimizer, the EMA or the checkpoints. It reads the images, LiDAR points and
depth maps of a batch; the student reads the same augmented images and camera geometry only.
Losses (each logged to TensorBoard): CE on labelled samples (with train.loss "four": the four
losses, class-weighted by the labelled frames' class frequencies), BEV feature MSE and logit cosine
distance over fg / bg / empty masks from GT (labelled) or the teacher's argmax (unlabelled).
"""
import dataclasses

import cli  # noqa: F401  (first: quiets third-party warnings before they are imported)

import torch
from accelerate.utils import set_seed

from datasets.build import dataset_from_config
from datasets.labelled import class_frequencies
from datasets.nuscenes_occ import collate
from occ.checkpoint import load_partial
from occ.config import apply_overrides, get_config
from occ.data import scene_fraction
from occ.loop import fit, setup_run
from occ.errors import UsageError
from occ.evaluation import build_model_from_checkpoint, make_occupancy_validate
from occ.losses import camera_depth_loss, class_weights_from_frequencies, distill_losses
from occ.models import build_model

TEACHER_ONLY_KEYS = ("points", "depth_maps")   # batch entries the camera-only student never sees
GT_KEYS = ("semantics", "mask_camera", "mask_lidar", "flow")


def parse_args(argv=None):
    parser = cli.parser_for(__doc__)
    cli.add_training_args(parser)
    parser.add_argument("--teacher-ckpt", metavar="CKPT",
                        help="checkpoint of the trained fusion teacher (default: distill.teacher_ckpt of the config)")
    parser.add_argument("--teacher-raw-weights", action="store_true",
                        help="use the teacher's raw weights instead of its EMA weights")
    parser.add_argument("--labelled-fraction", type=float, default=1.0,
                        help="fraction of the training scenes whose labels are used (seeded sample, docs/training.md#label-efficiency)")
    args = parser.parse_args(argv)
    cli.check_training_args(args)
    return args


def build_config(args):
    cfg = get_config(args.config)
    apply_overrides(cfg, args.set)
    if cfg.distill.teacher is None:
        raise UsageError(f"--config {args.config} names no teacher (distill.teacher); use a distillocc preset")
    if cfg.model.modality != "camera" or cfg.model.head != "occ":
        raise UsageError(f"--config {args.config}: the student must be a camera-only occupancy model, got "
                         f"modality '{cfg.model.modality}' with a '{cfg.model.head}' head")
    if cfg.train.loss not in ("ce", "four"):
        raise UsageError(f"train.loss={cfg.train.loss!r} is not implemented by train_distill.py: the labelled "
                         f"samples get DistillOcc's cross-entropy (train.loss='ce') or the four losses ('four')")
    if args.teacher_ckpt:
        cfg.distill.teacher_ckpt = args.teacher_ckpt
    if not cfg.distill.teacher_ckpt:
        raise UsageError("no teacher checkpoint: pass --teacher-ckpt CKPT (or --set distill.teacher_ckpt=CKPT)")
    return cfg


def load_teacher(cfg, use_ema=True):
    """(frozen teacher in eval mode on the CPU, its config) from cfg.distill.teacher_ckpt, checked
    against the student: the preset cfg.distill.teacher, the same input image size."""
    path = cfg.distill.teacher_ckpt
    teacher, teacher_cfg = build_model_from_checkpoint(path, use_ema, "cpu")
    if teacher_cfg.name != cfg.distill.teacher:
        raise UsageError(f"--teacher-ckpt {path} holds a '{teacher_cfg.name}' model but {cfg.name} expects the "
                         f"teacher '{cfg.distill.teacher}' (pass --set distill.teacher={teacher_cfg.name} to use it)")
    if tuple(teacher_cfg.data.image_size) != tuple(cfg.data.image_size):
        raise UsageError(f"--teacher-ckpt {path} was trained on {teacher_cfg.data.image_size} images but the "
                         f"student's data.image_size is {cfg.data.image_size}: both read the same batch")
    teacher.requires_grad_(False)
    return teacher, teacher_cfg


def check_student_matches_teacher(student, teacher):
    """The feature loss compares BEV encoder outputs: their widths must agree."""
    widths = student.bev_encoder.out_channels, teacher.bev_encoder.out_channels
    if widths[0] != widths[1]:
        raise UsageError(f"student BEV output has {widths[0]} channels but the teacher's has {widths[1]}; "
                         f"set model.bev_neck_channels={widths[1]}")


def inherit_head(student, teacher):
    """Initialise the student's occupancy head from the teacher's ("inherit head", docs/training.md#distillocc)."""
    report = load_partial(student, teacher.state_dict(), ["head."])
    head_keys = [key for key in student.state_dict() if key.startswith("head.")]
    if report.shape_mismatched or report.unexpected or len(report.loaded) != len(head_keys):
        raise UsageError(f"distill.inherit_head: the teacher's head does not fit the student's:\n{report.summary()}")
    return report


def distillation_dataset(cfg, teacher_cfg, data_root, info_file, skip_bad_samples=False):
    """Training samples with the student's images and augmentation plus the teacher's LiDAR inputs
    (points, depth maps, its sweep count); depth maps also for a student with depth supervision."""
    data = dataclasses.replace(cfg.data, num_sweeps=teacher_cfg.data.num_sweeps,
                               load_points=teacher_cfg.data.load_points,
                               load_depth=teacher_cfg.data.load_depth or cfg.data.load_depth)
    return dataset_from_config(dataclasses.replace(cfg, data=data), data_root, info_file, train=True,
                               skip_bad_samples=skip_bad_samples)


class LabelledScenes(torch.utils.data.Dataset):
    """The samples of `dataset` with `labelled` (bool tensor) set for those of `labelled_scenes`
    (scene tokens); the ground truth of the other samples is zeroed (no class, empty masks), so
    nothing of it can reach a loss."""

    def __init__(self, dataset, labelled_scenes):
        self.dataset = dataset
        self.infos = dataset.infos
        self.labelled_scenes = set(labelled_scenes)
        self.scene_of = {info["token"]: info["scene_token"] for info in self.infos}

    def __len__(self):
        return len(self.dataset)

    def set_epoch(self, epoch):
        self.dataset.set_epoch(epoch)

    def __getitem__(self, index):
        sample = self.dataset[index]   # with skip_bad_samples possibly another index's: look its scene up
        labelled = self.scene_of[sample["sample_token"]] in self.labelled_scenes
        sample["labelled"] = torch.tensor(labelled)
        if not labelled:
            for key in GT_KEYS:
                if key in sample:
                    sample[key] = torch.zeros_like(sample[key])
        return sample


def student_inputs(batch):
    """The batch without the teacher's LiDAR inputs: what the camera-only student reads."""
    return {key: value for key, value in batch.items() if key not in TEACHER_ONLY_KEYS}


def forward_pair(student, teacher, batch):
    """(student outputs, teacher outputs) for one batch; the teacher in eval mode under no_grad."""
    teacher.eval()   # whatever calls .train() on the student, the teacher's BN keeps its statistics
    with torch.no_grad():
        teacher_out = teacher(batch)
    return student(student_inputs(batch)), teacher_out


def make_loss_fn(teacher, student_cfg, class_weights=None):
    """loss_fn(student, batch) -> the named DistillOcc losses (docs/training.md#distillocc; with
    train.loss "four" the four losses, weighted by `class_weights`, in place of the CE), plus the
    student's depth loss when it is trained with depth supervision (model.depth_loss_weight > 0; on
    every frame, labelled or not: the LiDAR is there)."""
    def loss_fn(student, batch):
        student_out, teacher_out = forward_pair(student, teacher, batch)
        losses = distill_losses(student_out["bev_feat"], student_out["occ_logits"], teacher_out["bev_feat"],
                                teacher_out["occ_logits"], batch["semantics"], batch["mask_camera"], batch["labelled"],
                                student_cfg.train.loss, class_weights)
        return {**losses, **camera_depth_loss(student_out, batch, student_cfg.model)}
    return loss_fn


def main(argv=None):
    args = parse_args(argv)
    cfg = build_config(args)
    teacher, teacher_cfg = load_teacher(cfg, use_ema=not args.teacher_raw_weights)
    train_split, train_info = cli.info_file(args, "train")
    train_set = distillation_dataset(cfg, teacher_cfg, args.data_root, train_info, args.skip_bad_samples)
    labelled_scenes = scene_fraction(train_set.infos, args.labelled_fraction)
    class_weights = None
    if cfg.train.loss == "four":   # weighted by the class frequencies of the labelled frames
        labelled_infos = [info for info in train_set.infos if info["scene_token"] in labelled_scenes]
        class_weights = class_weights_from_frequencies(class_frequencies(train_set, infos=labelled_infos))
    train_set = LabelledScenes(train_set, labelled_scenes)
    val_set = None
    if not args.no_val:
        val_set = dataset_from_config(cfg, args.data_root, cli.info_file(args, "val")[1], train=False)

    set_seed(cfg.train.seed)  # seeded initial weights (and the same on every process)
    student = build_model(cfg)
    check_student_matches_teacher(student, teacher)
    if cfg.distill.inherit_head:
        report = inherit_head(student, teacher)
        print(f"student head initialised from the teacher's ({len(report.loaded)} tensors: {', '.join(report.loaded)})")

    settings = cli.run_settings(args, "teacher_ckpt", "teacher_raw_weights", "labelled_fraction")
    run = setup_run(cfg, student, train_set, collate, **cli.setup_options(args, settings, __file__, argv))
    teacher.to(run.accelerator.device)
    num_labelled = sum(info["scene_token"] in labelled_scenes for info in train_set.infos)
    num_scenes = len({info["scene_token"] for info in train_set.infos})
    run.log(f"{cfg.name} from teacher {teacher_cfg.name} ({cfg.distill.teacher_ckpt}): {len(train_set)} training "
            f"samples ({train_split}), {num_labelled} of them labelled in {len(labelled_scenes)} of {num_scenes} "
            f"scenes (fraction {args.labelled_fraction}), {len(val_set) if val_set else 0} validation samples, "
            f"{run.accelerator.num_processes} process(es)")
    validate = make_occupancy_validate(val_set, collate) if val_set else None
    return fit(run, make_loss_fn(teacher, cfg, class_weights), validate, **cli.fit_options(args))


if __name__ == "__main__":
    cli.run_main(main)
