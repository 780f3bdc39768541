import numpy as np
import pytest
import torch
import torchvision

import occ.ops
from occ import geometry
from occ.config import apply_overrides, get_config, preset_names
from occ.models import build_model
from occ.models.example_inputs import example_batch
from occ.models.image_backbone import ResNetTrunk, load_pretrained
from occ.models.lidar import LidarBranch, SparseConvolution
from occ.models.view_transform import GEOMETRY_KEYS, LSSViewTransformer

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine, two spinning OpenMP threads are many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# the detection presets (another grid, a detection head) are checked in tests/test_detection.py
DETECTION_PRESETS = ("bevdet_r50", "occbev_det_r50", "bevdet_r50_tiny", "occbev_det_r50_tiny")
# so are the OpenOccupancy presets (512 x 512 x 40 grid) in tests/test_openoccupancy.py
DETECTION_PRESETS += tuple(name for name in preset_names() if name.startswith("effocc_openoccupancy"))
FULL_PRESETS = [name for name in preset_names() if not name.endswith("_tiny") and name not in DETECTION_PRESETS]
TINY_PRESETS = [name for name in preset_names() if name.endswith("_tiny") and name not in DETECTION_PRESETS]


def count(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def build_on_meta(name):
    """Full-size model with meta tensors: parameter counts and shapes without memory or compute."""
    with torch.device("meta"):
        return build_model(get_config(name))


def bev_input_channels(model):
    if model.fuser is not None:
        return model.fuser.out_channels
    return model.view_transformer.out_channels if model.has_camera else model.lidar_branch.out_channels


# ------------------------------------------------------------------------------ parameter counts
def test_effocc_fusion_r18_has_the_published_parameter_count_module_by_module():
    model = build_on_meta("effocc_fusion_r18")
    second = model.bev_encoder
    assert count(model.img_backbone) == 11_176_512
    assert count(model.img_neck) == 262_656
    assert count(model.view_transformer) == 446_936
    assert count(model.lidar_branch) == 2_694_352
    assert count(model.fuser) == 737_792
    assert count(second.stage_a) + count(second.stage_b) == 4_280_832
    assert count(second.lateral_a) + count(second.up_b) == 295_936
    assert count(model.head) == 1_459_232
    assert count(model) == 21_354_248


def test_flashocc_r50_has_the_published_parameter_count():
    assert round(count(build_on_meta("flashocc_r50")) / 1e6, 2) == 44.74


def test_occbev_decoder_is_about_43k_parameters():
    assert 42_000 < count(build_on_meta("occbev_pretrain").head) < 44_000


# the figures of docs/architecture.md#tiny-presets
TINY_PARAMETERS = {"effocc_fusion_r18_tiny": 11_760_816, "effocc_fusion_r50_tiny": 24_264_368,
                   "effocc_fusion_swinb_tiny": 29_750_122, "effocc_lidar_tiny": 300_296,
                   "flashocc_r50_tiny": 24_380_072, "distillocc_r50_tiny": 24_410_888,
                   "occbev_pretrain_tiny": 24_352_362, "bevdet_r50_tiny": 24_418_847, "occbev_det_r50_tiny": 24_420_732}


@pytest.mark.parametrize("name", sorted(TINY_PARAMETERS))
def test_tiny_preset_parameter_counts_are_the_documented_ones(name):
    assert count(build_on_meta(name)) == TINY_PARAMETERS[name]


def test_camera_tiny_presets_carry_eight_height_bins_into_the_bev_encoder():
    """flashocc_r50_tiny differs from its one-height-bin version exactly by the BEV encoder's two
    convolutions that read the camera BEV (first block and its shortcut, 3 x 3, 32 out): (128 - 16) x 32 x 9 each."""
    with torch.device("meta"):
        one_bin = build_model(apply_overrides(get_config("flashocc_r50_tiny"), ["model.camera_height_bins=1"]))
    assert TINY_PARAMETERS["flashocc_r50_tiny"] - count(one_bin) == 2 * (16 * 8 - 16) * 32 * 9


# ------------------------------------------------------------------------ shapes of full presets
@pytest.mark.parametrize("name", FULL_PRESETS)
def test_full_preset_shapes(name):
    """Every stage of a full-size preset on meta tensors (the LiDAR branch by its computed shape)."""
    cfg = get_config(name)
    model = build_on_meta(name)
    H, W = cfg.data.image_size
    if model.has_camera:
        feat = model.img_neck(model.img_backbone(torch.empty(6, 3, H, W, device="meta")))
        assert tuple(feat.shape[-2:]) == (H // cfg.model.downsample, W // cfg.model.downsample)
        assert tuple(feat.shape[-2:]) == tuple(model.view_transformer.frustum.shape[1:3])
        assert model.view_transformer.frustum.shape[0] == 88
    if model.has_lidar:
        assert model.lidar_branch.encoder.out_shape[1:] == [200, 200]
    if cfg.model.modality == "fusion" and name.startswith("effocc"):
        assert model.lidar_branch.out_channels == 256
    bev = model.bev_encoder(torch.empty(1, bev_input_channels(model), 200, 200, device="meta"))
    logits = model.head(bev)
    assert tuple(bev.shape[2:]) == (200, 200)
    if cfg.model.head == "occ":
        assert tuple(logits.shape) == (1, 200, 200, 16, cfg.model.num_classes)  # 18 (Occ3D), 16 (Waymo)
    else:
        assert tuple(logits.shape) == (1, 200, 200, 16, 2)


def test_distillation_student_matches_the_teacher_bev_feature_and_head():
    student, teacher = build_on_meta("distillocc_r50"), build_on_meta("effocc_fusion_r18")
    assert student.bev_encoder.out_channels == teacher.bev_encoder.out_channels == 512
    assert {k: v.shape for k, v in student.head.state_dict().items()} == \
           {k: v.shape for k, v in teacher.head.state_dict().items()}


@pytest.mark.parametrize("suffix", ["", "_tiny"])
def test_occbev_pretraining_transfers_every_backbone_neck_and_bev_encoder_tensor(suffix):
    pre, fine = build_on_meta("occbev_pretrain" + suffix), build_on_meta("flashocc_r50" + suffix)
    for part in ("img_backbone", "img_neck", "bev_encoder", "view_transformer"):
        a, b = getattr(pre, part).state_dict(), getattr(fine, part).state_dict()
        assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}, part


# --------------------------------------------------------------------- tiny presets end to end
@pytest.mark.parametrize("name", TINY_PRESETS)
def test_tiny_preset_end_to_end_shapes_and_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    cfg = get_config(name)
    model = build_model(cfg).train()
    out = model(example_batch(cfg, num_points=8000))
    assert tuple(out["bev_feat"].shape[2:]) == (200, 200)
    if cfg.model.head == "occ":
        logits = out["occ_logits"]
        assert tuple(logits.shape) == (1, 200, 200, 16, cfg.model.num_classes)  # 18 (Occ3D), 16 (Waymo)
    else:
        logits = out["geo_logits"]
        assert tuple(logits.shape) == (1, 200, 200, 16, 2)
    assert ("cam_bev" in out) == (cfg.model.modality != "lidar")
    assert ("lidar_bev" in out) == (cfg.model.modality != "camera")
    # a loss that weights every output element differently, so no gradient cancels by symmetry
    weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(1))
    loss = (logits * weights).sum()
    if cfg.model.flow_head:  # OpenOcc: the flow branch too
        assert tuple(out["flow"].shape) == (1, 200, 200, 16, 2)
        loss = loss + (out["flow"] * torch.randn(out["flow"].shape, generator=torch.Generator().manual_seed(2))).sum()
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


def perturbed(cfg, batch, keys):
    """A copy of batch with new random values for `keys`."""
    other = example_batch(cfg, num_points=8000, seed=1)
    return {**batch, **{k: other[k] for k in keys}}


@pytest.fixture(scope="module")
def fusion_tiny():
    torch.manual_seed(0)
    cfg = get_config("effocc_fusion_r18_tiny")
    return cfg, build_model(cfg).eval(), example_batch(cfg, num_points=8000)


def test_camera_only_model_ignores_points_and_depth_maps():
    cfg = apply_overrides(get_config("flashocc_r50_tiny"), ["data.image_size=(64, 192)"])
    model = build_model(cfg).eval()
    batch = example_batch(cfg)
    camera_keys = ("images",) + GEOMETRY_KEYS
    with torch.no_grad():
        ref = model(batch)["occ_logits"]
        assert torch.equal(model(perturbed(cfg, batch, ["points", "depth_maps"]))["occ_logits"], ref)
        assert torch.equal(model({k: batch[k] for k in camera_keys})["occ_logits"], ref)


def test_lidar_only_model_ignores_images():
    cfg = get_config("effocc_lidar_tiny")
    model = build_model(cfg).eval()
    batch = example_batch(cfg, num_points=8000)
    with torch.no_grad():
        ref = model(batch)["occ_logits"]
        assert torch.equal(model(perturbed(cfg, batch, ["images", "depth_maps"]))["occ_logits"], ref)
        assert torch.equal(model({"points": batch["points"]})["occ_logits"], ref)


def test_fusion_model_reads_images_points_and_depth_maps(fusion_tiny):
    cfg, model, batch = fusion_tiny
    with torch.no_grad():
        ref = model(batch)["occ_logits"]
        for key in ("images", "points", "depth_maps"):
            assert not torch.equal(model(perturbed(cfg, batch, [key]))["occ_logits"], ref), key
    with pytest.raises(KeyError, match="depth_maps"):
        model({k: v for k, v in batch.items() if k != "depth_maps"})


# ---------------------------------------------------------------------------- view transformer
def small_view_transformer(use_lidar_depth=False):
    return LSSViewTransformer(in_channels=8, context_channels=4, image_size=(64, 176), downsample=8,
                              depth_bins=(1.0, 45.0, 0.5), pc_range=(-40.0, -40.0, -1.0, 40.0, 40.0, 5.4),
                              bev_voxel=0.4, use_lidar_depth=use_lidar_depth)


def augmented_geometry(image_size):
    """example_batch geometry with a real image augmentation (resize, crop, flip, rotate) and a BEV flip."""
    H, W = image_size
    resize = W / 1600 * 1.05
    post_rot, post_tran = geometry.image_aug_matrix(resize, (10.0, 900 * resize - H), True, 3.0, W, H)
    bda = geometry.bda_matrix(flip_x=True, rotate_deg=10.0)
    cfg = apply_overrides(get_config("flashocc_r50_tiny"), [f"data.image_size={image_size}"])
    batch = example_batch(cfg)
    batch["post_rot"] = torch.tensor(post_rot, dtype=torch.float32).expand(1, 6, 3, 3).contiguous()
    batch["post_tran"] = torch.tensor(post_tran, dtype=torch.float32).expand(1, 6, 3).contiguous()
    batch["bda"] = torch.tensor(bda, dtype=torch.float32)[None]
    return batch


def test_frustum_points_project_back_onto_their_pixels():
    vt = small_view_transformer()
    batch = augmented_geometry((64, 176))
    ego_aug = vt.frustum_to_ego(*(batch[k] for k in GEOMETRY_KEYS))[0].double().numpy()  # (N, D, H, W, 3)
    frustum = vt.frustum.double().numpy().reshape(-1, 3)
    bda = batch["bda"][0].double().numpy()
    post_rot, post_tran = batch["post_rot"][0, 0].double().numpy(), batch["post_tran"][0, 0].double().numpy()
    for n in range(6):
        ego = geometry.transform_points(geometry.invert_transform(bda), ego_aug[n].reshape(-1, 3))
        cam = geometry.transform_points(geometry.invert_transform(batch["cam2ego"][0, n].double().numpy()), ego)
        uv, depth = geometry.project_to_image(cam, batch["intrinsics"][0, n].double().numpy())
        uv_aug = uv @ post_rot[:2, :2].T + post_tran[:2]
        np.testing.assert_allclose(uv_aug, frustum[:, :2], atol=1e-3)
        np.testing.assert_allclose(depth, frustum[:, 2], atol=1e-4)


def test_out_of_grid_frustum_points_are_dropped_with_floor(monkeypatch):
    vt = small_view_transformer().eval()
    batch = augmented_geometry((64, 176))
    geometry_tensors = tuple(batch[k] for k in GEOMETRY_KEYS)
    points = vt.frustum_to_ego(*geometry_tensors)
    lower, upper = torch.tensor([-40.0, -40.0, -1.0]), torch.tensor([40.0, 40.0, 5.4])
    inside = ((points >= lower) & (points < upper)).all(dim=-1)
    # truncation towards zero would also keep points up to one voxel below the lower bounds
    assert (((points > lower - 0.4) & (points < lower)).any(dim=-1) & (points < upper).all(dim=-1)).any()
    ranks_depth, _, ranks_bev, _, _ = vt.bev_ranks(geometry_tensors)
    assert ranks_depth.numel() == int(inside.sum())
    assert torch.equal(torch.sort(ranks_depth.long()).values, torch.nonzero(inside.flatten()).flatten())
    cells = torch.floor((points.reshape(-1, 3)[ranks_depth.long()] - lower) / torch.tensor([0.4, 0.4, 6.4])).long()
    assert torch.equal(ranks_bev.long(), cells[:, 1] * 200 + cells[:, 0])


def test_bev_ranks_are_cached_only_in_eval_mode_with_unchanged_geometry(monkeypatch):
    calls = []
    prepare = occ.ops.bev_pool_prepare

    def counting_prepare(*args):
        calls.append(1)
        return prepare(*args)

    monkeypatch.setattr(occ.ops, "bev_pool_prepare", counting_prepare)
    vt = small_view_transformer()
    batch = example_batch(apply_overrides(get_config("flashocc_r50_tiny"), ["data.image_size=(64, 176)"]))
    img_feat = torch.randn(6, 8, 8, 22)
    vt.eval()
    first, _ = vt(img_feat, batch)
    assert len(calls) == 1
    same_values = {**batch, **{k: batch[k].clone() for k in GEOMETRY_KEYS}}  # new tensors, equal values
    again, _ = vt(img_feat, same_values)
    assert len(calls) == 1 and torch.equal(again, first)
    flipped = {**batch, "bda": torch.diag(torch.tensor([1.0, -1.0, 1.0, 1.0]))[None]}
    moved, _ = vt(img_feat, flipped)
    assert len(calls) == 2 and not torch.equal(moved, first)
    # the y-mirrored geometry puts the same features in the y-mirrored rows
    assert torch.allclose(moved, first.flip(-2), atol=1e-5)
    vt.train()
    vt(img_feat, batch)
    vt(img_feat, batch)
    assert len(calls) == 4


# ---------------------------------------------------------------------------------- LiDAR branch
def small_lidar_branch(max_voxels=(100, 100)):
    return LidarBranch(voxel_size=(0.2, 0.2, 0.4), pc_range=(-40.0, -40.0, -1.0, 40.0, 40.0, 5.4),
                       max_points_per_voxel=10, max_voxels=max_voxels, channels=(4, 4, 4, 4), blocks=1,
                       down_strides=((2, 2, 2), (2, 1, 1), (1, 1, 1)), bev_hw=(200, 200))


def test_voxel_features_are_point_means_with_batch_index():
    branch = small_lidar_branch()
    sample0 = torch.tensor([[0.01, 0.01, 0.0, 1.0, 0.0], [0.05, 0.11, 0.1, 3.0, 0.2], [10.1, -5.1, 2.1, 5.0, 0.1]])
    sample1 = torch.tensor([[-39.9, 39.9, 5.3, 2.0, 0.3], [50.0, 0.0, 0.0, 1.0, 0.0]])  # the second is out of range
    features, coords = branch.voxelize([sample0, sample1])
    assert coords.dtype == torch.int32
    assert coords.tolist() == [[0, 2, 200, 200], [0, 7, 174, 250], [1, 15, 399, 0]]  # (b, z, y, x)
    torch.testing.assert_close(features[0], sample0[:2].mean(0))
    torch.testing.assert_close(features[1], sample0[2])
    torch.testing.assert_close(features[2], sample1[0])


def test_max_voxels_depends_on_train_or_eval_mode():
    branch = small_lidar_branch(max_voxels=(2, 3))
    points = torch.tensor([[float(i), 0.0, 0.0, 0.0, 0.0] for i in range(5)])
    assert branch.train().voxelize([points])[0].shape[0] == 2
    assert branch.eval().voxelize([points])[0].shape[0] == 3


def test_sparse_convolutions_use_the_native_algorithm_on_cpu(fusion_tiny):
    _, model, batch = fusion_tiny
    with torch.no_grad():
        model(batch)
    algos = {m.algo.name for m in model.lidar_branch.modules() if isinstance(m, SparseConvolution)}
    assert algos == {"Native"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_model_built_on_cpu_moves_to_cuda(fusion_tiny):
    cfg, model, batch = fusion_tiny
    with torch.no_grad():
        cpu_out = model(batch)["occ_logits"]
    model = model.cuda()
    cuda_batch = {k: [p.cuda() for p in v] if k == "points" else v.cuda() for k, v in batch.items()}
    with torch.no_grad():
        out = model(cuda_batch)["occ_logits"]
    assert out.device.type == "cuda" and out.shape == cpu_out.shape and torch.isfinite(out).all()
    algos = {m.algo.name for m in model.lidar_branch.modules() if isinstance(m, SparseConvolution)}
    assert algos == {"MaskImplicitGemm"}
    model.cpu()


# --------------------------------------------------------------------------- ImageNet weights
def test_pretrained_weights_load_from_a_local_torchvision_file(tmp_path, capsys):
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    cfg = apply_overrides(get_config("effocc_fusion_r18_tiny"), [f"model.pretrained_path={path}"])
    model = build_model(cfg)
    for key, value in model.img_backbone.state_dict().items():
        assert torch.equal(value, reference.state_dict()[key]), key
    assert f"loaded {len(model.img_backbone.state_dict())} tensors from {path}; missing 0" in capsys.readouterr().out


def test_pretrained_errors_name_the_file(tmp_path):
    trunk = ResNetTrunk("resnet18", (2, 3, 4))
    with pytest.raises(FileNotFoundError, match="no such file .*missing.pth"):
        load_pretrained(trunk, str(tmp_path / "missing.pth"))
    wrong = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), wrong)
    with pytest.raises(ValueError, match="resnet50.pth: tensor 'layer1.0.conv1.weight' has shape"):
        load_pretrained(trunk, str(wrong))
    unrelated = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, unrelated)
    with pytest.raises(ValueError, match="other.pth: no tensor matches"):
        load_pretrained(trunk, str(unrelated))
