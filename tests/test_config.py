import json

import pytest

from occ.config import (Config, apply_overrides, config_from_dict, config_to_dict, get_config, preset_names)

PUBLISHED = ["effocc_fusion_r18", "effocc_fusion_r50", "effocc_fusion_swinb", "flashocc_r50", "effocc_lidar",
             "distillocc_r50", "occbev_pretrain", "bevdet_r50", "occbev_det_r50", "effocc_waymo_fusion_r18",
             "effocc_waymo_lidar", "effocc_fusion_r18_flow", "effocc_openoccupancy_r18", "effocc_openoccupancy_r50"]


def test_every_preset_and_its_tiny_version_exist():
    assert set(preset_names()) == set(PUBLISHED) | {name + "_tiny" for name in PUBLISHED}
    for name in preset_names():
        cfg = get_config(name)
        assert isinstance(cfg, Config) and cfg.name == name


def test_unknown_preset_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown preset 'effocc_r18'.*effocc_fusion_r18.*flashocc_r50_tiny"):
        get_config("effocc_r18")


def test_presets_are_fresh_objects():
    a = get_config("effocc_fusion_r18")
    a.train.lr = 1.0
    assert get_config("effocc_fusion_r18").train.lr == 4e-4


def test_presets_hold_the_published_settings():
    r18 = get_config("effocc_fusion_r18")
    assert r18.data.image_size == (256, 704) and r18.data.num_sweeps == 9 and r18.data.batch_size == 8
    assert r18.model.depth_bins == (1.0, 45.0, 0.5) and r18.model.max_voxels == (90000, 120000)
    assert (r18.train.lr, r18.train.weight_decay, r18.train.epochs, r18.train.lr_step_epochs) == (4e-4, 1e-2, 48, (24,))
    swin = get_config("effocc_fusion_swinb")
    assert swin.data.image_size == (512, 1408) and swin.model.downsample == 16 and swin.model.context_channels == 256
    flash = get_config("flashocc_r50")
    assert flash.model.modality == "camera" and flash.train.lr == 1e-4 and flash.train.epochs == 24
    distill = get_config("distillocc_r50")
    assert distill.model.bev_neck_channels == 512 and distill.distill.teacher == "effocc_fusion_r18"
    occbev = get_config("occbev_pretrain")
    assert (occbev.train.lr_schedule, occbev.train.backbone_lr_mult, occbev.model.head) == ("cosine", 0.1, "geometry")


@pytest.mark.parametrize("name", PUBLISHED)
def test_tiny_presets_keep_the_output_grid_and_classes(name):
    full, tiny = get_config(name), get_config(name + "_tiny")
    assert tiny.model.point_cloud_range == full.model.point_cloud_range
    assert tiny.model.occ_voxel_size == full.model.occ_voxel_size == \
        {"bevdet_r50": 0.8, "effocc_openoccupancy_r18": 0.2, "effocc_openoccupancy_r50": 0.2}.get(name, 0.4)
    assert tiny.model.num_classes == full.model.num_classes == (10 if full.model.head == "detection" else
                                                                {"waymo": 16, "openocc": 17, "openoccupancy": 17}
                                                                .get(full.data.benchmark, 18))
    assert tiny.model.modality == full.model.modality
    assert tiny.data.image_size[0] * tiny.data.image_size[1] < full.data.image_size[0] * full.data.image_size[1]
    if full.distill.teacher:
        assert tiny.distill.teacher == full.distill.teacher + "_tiny"


def test_loading_flags_follow_the_modality():
    assert get_config("effocc_fusion_r18").data.load_points and get_config("effocc_fusion_r18").data.load_depth
    flash = get_config("flashocc_r50")
    assert not flash.data.load_points and not flash.data.load_depth
    lidar = get_config("effocc_lidar")
    assert lidar.data.load_points and not lidar.data.load_depth
    cfg = apply_overrides(get_config("effocc_fusion_r18"), ["model.modality=camera"])
    assert not cfg.data.load_points and not cfg.data.load_depth
    with pytest.raises(ValueError, match="data.load_points is derived"):
        apply_overrides(get_config("effocc_fusion_r18"), ["data.load_points=false"])


def test_overrides_parse_to_the_field_types():
    cfg = apply_overrides(get_config("effocc_fusion_r18"), [
        "train.lr=1e-3", "train.epochs=12", "train.lr_step_epochs=8,11", "data.bev_flip=false",
        "model.pretrained_path=/weights/r18.pth", "data.image_size=(128, 352)", "train.grad_clip=3",
        "model.sparse_down_strides=((2,2,2),(2,1,1),(1,1,1))", "name=my_run"])
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 12 and cfg.train.lr_step_epochs == (8, 11)
    assert cfg.data.bev_flip is False
    assert cfg.model.pretrained_path == "/weights/r18.pth"
    assert cfg.data.image_size == (128, 352)
    assert cfg.train.grad_clip == 3.0 and isinstance(cfg.train.grad_clip, float)
    assert cfg.model.sparse_down_strides == ((2, 2, 2), (2, 1, 1), (1, 1, 1))
    assert cfg.name == "my_run"
    cfg = apply_overrides(cfg, ["model.pretrained_path=None", "train.lr_step_epochs=30"])
    assert cfg.model.pretrained_path is None and cfg.train.lr_step_epochs == (30,)


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", "train has no field 'lrr'"),
    ("optim.lr=1", "unknown section 'optim'"),
    ("lr=1", "expected section.field"),
    ("train.lr", "expected section.field=value"),
    ("train.epochs=1.5", "train.epochs: expected an integer"),
    ("train.epochs=abc", "train.epochs: expected an integer"),
    ("train.lr=fast", "train.lr: expected a number"),
    ("data.bev_flip=maybe", "data.bev_flip: expected true/false"),
    ("data.image_size=(1, 2, 3)", "data.image_size: expected 2 values"),
    ("model.backbone=resnet101", "model.backbone = 'resnet101' is not one of"),
    ("model.modality=radar", "model.modality = 'radar' is not one of"),
    ("train.epochs=None", "train.epochs: expected an integer"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        apply_overrides(get_config("effocc_fusion_r18"), [override])


@pytest.mark.parametrize("name", preset_names())
def test_json_round_trip(name):
    cfg = apply_overrides(get_config(name), ["train.lr_step_epochs=3,5", "model.pretrained_path=/x.pth"])
    back = config_from_dict(json.loads(json.dumps(config_to_dict(cfg))))
    assert back == cfg


def test_config_from_dict_rejects_unknown_keys_and_bad_types():
    d = config_to_dict(get_config("effocc_lidar"))
    d["model"]["num_clases"] = 18
    with pytest.raises(ValueError, match="model.num_clases"):
        config_from_dict(d)
    d = config_to_dict(get_config("effocc_lidar"))
    d["train"]["epochs"] = "48"
    with pytest.raises(ValueError, match="train.epochs"):
        config_from_dict(d)


def test_camera_only_tiny_presets_get_the_camera_study_levers_and_no_other_preset_does():
    for name in preset_names():
        cfg = get_config(name)
        levers = (cfg.model.depth_loss_weight, cfg.model.camera_height_bins, cfg.model.camera_bev_pooling,
                  cfg.data.bev_flip, cfg.data.flip_prob, cfg.train.cosine_steps)
        if name.endswith("_tiny") and cfg.model.modality == "camera":
            assert levers == (3.0, 8, "mean", False, 0.0, 1600), name
            assert cfg.train.lr_schedule == "cosine" and cfg.data.resize_jitter == (0.0, 0.0), name
            assert cfg.train.loss == {"occ": "four", "geometry": "focal", "detection": "centerpoint"}[cfg.model.head], name
        else:
            assert levers[:3] == (0.0, 1, "sum") and cfg.train.cosine_steps == 0, name
