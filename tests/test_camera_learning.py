"""Levers that help camera models learn: depth supervision (model.depth_loss_weight,
occ.losses.depth_loss), height bins and mean pooling of the camera BEV (model.camera_height_bins,
model.camera_bev_pooling) and a deeper camera depth net (model.camera_depth_convs)."""
import math

import pytest
import torch

from bench.free_bias import geometry_counts
from datasets.build import dataset_from_config, info_path
from datasets.nuscenes_occ import collate
from occ import occ3d
from occ.config import apply_overrides, get_config
from occ.errors import UsageError
from occ.losses import camera_depth_loss, depth_bin_count, depth_loss, depth_targets
from occ.models import build_model
from occ.models.example_inputs import example_batch

BINS = (1.0, 5.0, 1.0)  # frustum depths 1, 2, 3, 4 -> D = 4
CAMERA_R18 = ["model.modality=camera", "model.use_lidar_depth=false"]  # the camera branch of the fusion preset


def camera_r18(*overrides):
    return apply_overrides(get_config("effocc_fusion_r18_tiny"), CAMERA_R18 + list(overrides))


def test_depth_target_is_the_nearest_valid_depth_of_each_patch_rounded_to_the_nearest_bin():
    depth = torch.zeros(1, 1, 4, 6)
    depth[0, 0, 0, 0], depth[0, 0, 1, 1] = 3.2, 2.4   # patch (0, 0): nearest 2.4 -> bin of depth 2 (index 1)
    depth[0, 0, 0, 2] = 2.5                            # patch (0, 1): exactly half-way 2 | 3 -> rounded up: 3
    depth[0, 0, 2, 2], depth[0, 0, 3, 3] = 0.0, 4.49   # patch (1, 1): zeros ignored -> 4.49 -> 4 (index 3)
    depth[0, 0, 2, 4] = 4.5                            # patch (1, 2): beyond the last bin's half width -> none
    depth[0, 0, 0, 4] = 0.49                           # patch (0, 2): below start - step / 2 -> none
    # patch (1, 0): no depth at all -> none
    expected = torch.tensor([[1, 2, -1], [-1, 3, -1]])
    assert torch.equal(depth_targets(depth, 2, BINS)[0, 0], expected)
    assert depth_bin_count((1.0, 45.0, 0.5)) == 88


def test_depth_targets_refuse_maps_that_do_not_divide_into_patches():
    with pytest.raises(ValueError, match="4 x 4 patches"):
        depth_targets(torch.zeros(1, 1, 6, 8), 4, BINS)


def test_depth_loss_is_the_bce_summed_over_bins_averaged_over_cells_with_a_target():
    D = depth_bin_count(BINS)
    probs = torch.full((1, 1, D, 2, 3), 1.0 / D)
    probs[0, 0, :, 0, 1] = torch.tensor([0.1, 0.6, 0.2, 0.1])
    depth = torch.zeros(1, 1, 4, 6)
    depth[0, 0, 0, 0] = 1.0   # cell (0, 0): bin 0, uniform prediction
    depth[0, 0, 0, 2] = 2.0   # cell (0, 1): bin 1, predicted 0.6
    uniform = -math.log(1 / D) - (D - 1) * math.log(1 - 1 / D)
    peaked = -math.log(0.6) - math.log(0.9) - math.log(0.8) - math.log(0.9)
    loss = depth_loss(probs, depth, 2, BINS)
    assert loss.item() == pytest.approx((uniform + peaked) / 2, rel=1e-5)


def test_cells_without_lidar_depth_get_no_gradient_and_no_depth_gives_zero_loss():
    D = depth_bin_count(BINS)
    logits = torch.randn(1, 2, D, 2, 3, requires_grad=True)
    depth = torch.zeros(1, 2, 4, 6)
    depth[0, 1, 2, 3] = 3.0   # one cell of camera 1 has a target
    depth_loss(logits.softmax(dim=2), depth, 2, BINS).backward()
    has_grad = logits.grad.abs().sum(dim=2) > 0   # (1, 2, 2, 3)
    expected = torch.zeros_like(has_grad)
    expected[0, 1, 1, 1] = True
    assert torch.equal(has_grad, expected)
    empty = depth_loss(logits.softmax(dim=2), torch.zeros(1, 2, 4, 6), 2, BINS)
    assert empty.item() == 0.0


def test_depth_loss_checks_the_distribution_against_the_targets():
    with pytest.raises(ValueError, match="does not match"):
        depth_loss(torch.rand(1, 1, 3, 2, 3), torch.zeros(1, 1, 4, 6), 2, BINS)   # 3 bins, the config has 4


def test_depth_supervision_off_leaves_the_published_presets_unchanged():
    for name in ("effocc_fusion_r18", "flashocc_r50", "distillocc_r50", "occbev_pretrain", "effocc_lidar"):
        cfg = get_config(name)
        assert cfg.model.depth_loss_weight == 0
        assert camera_depth_loss({}, {}, cfg.model) == {}
    # the weight adds no parameter and changes no output: only the loss reads it
    torch.manual_seed(0)
    plain = build_model(camera_r18()).eval()
    torch.manual_seed(0)
    supervised = build_model(camera_r18("model.depth_loss_weight=3.0")).eval()
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in supervised.parameters())
    batch = example_batch(camera_r18())
    with torch.no_grad():
        assert torch.equal(plain(batch)["occ_logits"], supervised(batch)["occ_logits"])


def test_the_weight_needs_a_camera_branch_and_makes_the_dataset_load_depth():
    with pytest.raises(UsageError, match="depth_loss_weight"):
        apply_overrides(get_config("effocc_lidar_tiny"), ["model.depth_loss_weight=1.0"])
    with pytest.raises(UsageError, match="depth_loss_weight"):
        apply_overrides(get_config("flashocc_r50_tiny"), ["model.depth_loss_weight=-1.0"])
    cfg = apply_overrides(get_config("flashocc_r50_tiny"), ["model.depth_loss_weight=1.0"])
    assert cfg.data.load_depth and not cfg.data.load_points


def test_depth_targets_of_an_augmented_sample_lift_onto_its_lidar_points(data_root):
    """Image augmentation (resize, rotation, flip) and BEV flips: the frustum point of each supervised
    cell, at its target depth, lies on the sample's (flipped) key-frame LiDAR points."""
    cfg = apply_overrides(get_config("effocc_fusion_r18_tiny"),
                          ["model.depth_loss_weight=1.0", "data.num_sweeps=0", "data.flip_prob=1.0"])
    dataset = dataset_from_config(cfg, data_root, info_path(data_root, "mini_train"), train=True, load_gt=False)
    model = build_model(cfg)
    vt, m = model.view_transformer, cfg.model
    checked = 0
    for index in range(len(dataset)):
        batch = collate([dataset[index]])
        target = depth_targets(batch["depth_maps"], m.downsample, m.depth_bins)  # (1, N, H_f, W_f)
        points = vt.frustum_to_ego(*(batch[k] for k in ("cam2ego", "intrinsics", "post_rot", "post_tran", "bda")))
        valid = target >= 0
        lifted = points.gather(2, target.clamp(min=0)[:, :, None, :, :, None].expand(-1, -1, 1, -1, -1, 3))
        lifted = lifted[:, :, 0][valid]  # (V, 3) in the augmented ego frame
        lidar = batch["points"][0][:, :3]
        nearest = torch.cdist(lifted, lidar).min(dim=1).values
        # a cell's frustum ray passes through its patch's corner, not the pixel of the nearest point:
        # allow a patch width at the depth plus half a bin
        assert (nearest < 1.0).float().mean() > 0.8, f"sample {index}: median {nearest.median():.2f} m"
        checked += int(valid.sum())
    assert checked > 500


def test_train_fusion_adds_the_depth_loss_of_a_camera_model_read_from_key_frame_depth(data_root):
    import train_fusion
    cfg = camera_r18("model.depth_loss_weight=3.0")
    dataset = dataset_from_config(cfg, data_root, info_path(data_root, "mini_train"), train=True)
    batch = collate([dataset[0]])
    assert "points" not in batch and batch["depth_maps"].shape == (1, 6, 128, 352)
    torch.manual_seed(0)
    model = build_model(cfg)
    losses = train_fusion.make_loss_fn(cfg)(model, batch)
    assert set(losses) == {"loss_ce", "loss_depth"}
    expected = 3.0 * depth_loss(model(batch)["depth"], batch["depth_maps"], 8, cfg.model.depth_bins)
    assert losses["loss_depth"].item() == pytest.approx(expected.item(), rel=1e-5)
    losses["loss_depth"].backward()
    assert model.view_transformer.depth_net.weight.grad.abs().sum() > 0


def test_height_bins_split_the_camera_bev_by_height_without_losing_a_point():
    outputs = {}
    for bins in (1, 4):
        cfg = camera_r18(f"model.camera_height_bins={bins}")
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        assert model.view_transformer.out_channels == 16 * bins
        batch = example_batch(cfg)
        with torch.no_grad():
            img_feat = model.img_neck(model.img_backbone(batch["images"].flatten(0, 1)))
            outputs[bins] = model.view_transformer(img_feat, batch)[0]
        assert model(batch)["occ_logits"].shape == (1, 200, 200, 16, 18)
    split = outputs[4].view(1, 16, 4, 200, 200)   # channel c * 4 + z
    assert torch.allclose(split.sum(dim=2), outputs[1], rtol=1e-4, atol=1e-3)
    per_height = split.abs().sum(dim=(0, 1, 3, 4))
    assert (per_height > 0).sum() >= 2   # the frustum reaches more than one height slab


def test_mean_pooling_divides_each_cell_by_its_number_of_frustum_points():
    outputs = {}
    for pooling in ("sum", "mean"):
        cfg = camera_r18("model.camera_height_bins=4", f"model.camera_bev_pooling={pooling}")
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        batch = example_batch(cfg)
        with torch.no_grad():
            img_feat = model.img_neck(model.img_backbone(batch["images"].flatten(0, 1)))
            outputs[pooling] = model.view_transformer(img_feat, batch)[0].view(1, 16, 4, 200, 200)
    # counts from the frustum coordinates themselves, independently of the pooling's ranks
    vt = model.view_transformer
    points = vt.frustum_to_ego(*(batch[key] for key in ("cam2ego", "intrinsics", "post_rot", "post_tran", "bda")))
    cells = torch.floor((points - vt.grid_lower) / vt.grid_size).long().reshape(-1, 3)
    inside = ((cells >= 0) & (cells < torch.tensor([200, 200, 4]))).all(dim=1)
    x, y, z = cells[inside].unbind(dim=1)
    counts = torch.bincount((z * 200 + y) * 200 + x, minlength=4 * 200 * 200).view(4, 200, 200).float()
    assert counts.max() > 100 * counts[counts > 0].min()   # near and far cells differ by orders of magnitude
    expected = outputs["sum"] / counts.clamp(min=1)
    assert torch.allclose(outputs["mean"], expected, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(outputs["mean"], outputs["sum"])
    with pytest.raises(UsageError, match="camera_bev_pooling"):
        camera_r18("model.camera_bev_pooling=max")


def test_depth_convs_put_3x3_layers_before_the_camera_depth_net_and_nothing_else():
    plain, deep = build_model(camera_r18()), build_model(camera_r18("model.camera_depth_convs=2"))
    channels = plain.img_neck.out_channels
    assert isinstance(plain.view_transformer.depth_net, torch.nn.Conv2d)   # published: one 1x1 conv
    per_layer = 9 * channels * channels + channels + 2 * channels          # 3x3 conv with bias, BN weight + bias
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert count(deep) - count(plain) == 2 * per_layer
    assert count(deep.view_transformer.depth_net[-1]) == count(plain.view_transformer.depth_net)
    batch = example_batch(camera_r18("model.camera_depth_convs=2"))
    with torch.no_grad():
        img_feat = deep.eval().img_neck(deep.img_backbone(batch["images"].flatten(0, 1)))
        depth, context = deep.view_transformer.lift(img_feat, None, 1)
    assert depth.shape == (1, 6, 88, 16, 44) and context.shape == (1, 6, 16, 44, 16)
    assert torch.allclose(depth.sum(dim=2), torch.ones(1, 6, 16, 44))
    with pytest.raises(UsageError, match="camera_depth_convs"):
        apply_overrides(get_config("effocc_fusion_r18_tiny"), ["model.camera_depth_convs=2"])
    with pytest.raises(UsageError, match="camera_depth_convs"):
        camera_r18("model.camera_depth_convs=-1")


def test_onnx_graph_of_a_height_binned_mean_pooled_model_matches_the_model():
    from occ import deploy
    cfg = camera_r18("model.camera_height_bins=4", "model.camera_bev_pooling=mean")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    batch = example_batch(cfg)
    inputs = deploy.graph_inputs(model, batch)
    graph = deploy.ExportableOccNet(model).eval()
    with torch.no_grad():
        expected = model(batch)["occ_logits"]
        got = graph(**inputs)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_free_bias_counts_on_hand_made_logits():
    """bench/free_bias.py: a bias on the free logit moves voxels from occupied to free."""
    logits = torch.zeros(3, 1, 1, occ3d.NUM_CLASSES)
    logits[0, 0, 0, 0] = 1.0            # occupied (class 0) by 1 over free
    logits[1, 0, 0, occ3d.FREE] = 5.0   # free by 5
    logits[2, 0, 0, 3] = 0.5            # occupied (class 3) by 0.5
    semantics = torch.tensor([0, 0, occ3d.FREE]).view(3, 1, 1)
    mask = torch.ones(3, 1, 1, dtype=torch.bool)
    counts = geometry_counts(logits, semantics, mask, [0.0, 0.75, 2.0])
    assert counts == {0.0: (1, 1, 1), 0.75: (1, 0, 1), 2.0: (0, 0, 2)}   # (TP, FP, FN)
    mask[2] = False                      # outside the mask nothing counts
    assert geometry_counts(logits, semantics, mask, [0.0]) == {0.0: (1, 0, 1)}


def forward_camera(height, f=100.0, cx=50.0, cy=40.0):
    """Geometry of one camera `height` m above the ego ground looking along ego x (cam x -> ego -y,
    cam y -> ego -z, cam z -> ego x): cam2ego (1, 1, 4, 4), intrinsics (1, 1, 3, 3)."""
    cam2ego = torch.eye(4)
    cam2ego[:3, :3] = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    cam2ego[2, 3] = height
    intrinsics = torch.tensor([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])
    return cam2ego.view(1, 1, 4, 4), intrinsics.view(1, 1, 3, 3)


def test_ground_inverse_depth_on_a_level_camera_and_a_resized_image():
    from occ.models.view_transform import ground_inverse_depth
    cam2ego, intrinsics = forward_camera(height=2.0)
    identity, no_shift = torch.eye(3).view(1, 1, 3, 3), torch.zeros(1, 1, 3)
    prior = ground_inverse_depth(cam2ego, intrinsics, identity, no_shift, (80, 100))
    assert prior.shape == (1, 1, 1, 80, 100)
    # row v sees the ground at depth f * h / (v - cy): 10 m / depth = 10 (v - cy) / (f h); 0 at and above the horizon
    rows = torch.arange(80, dtype=torch.float32)
    expected = (10 * (rows - 40) / (100 * 2.0)).clamp(min=0)
    assert torch.allclose(prior[0, 0, 0], expected.view(80, 1).expand(80, 100), atol=1e-6)
    assert prior[0, 0, 0, 60, 0] == pytest.approx(1.0)  # 20 rows below the horizon: the ground 10 m away
    # an image resized by 1/2 (post_rot = diag(0.5, 0.5, 1)): pixel (u', v') is (2u', 2v') of the original
    half = torch.diag(torch.tensor([0.5, 0.5, 1.0])).view(1, 1, 3, 3)
    resized = ground_inverse_depth(cam2ego, intrinsics, half, no_shift, (40, 50))
    assert torch.allclose(resized[0, 0, 0], prior[0, 0, 0, ::2, ::2], atol=1e-6)


def test_ground_inverse_depth_matches_the_lidar_depth_of_ground_pixels(data_root):
    from occ.models.view_transform import ground_inverse_depth
    cfg = camera_r18("model.depth_loss_weight=3")
    dataset = dataset_from_config(cfg, data_root, info_path(data_root, "mini_val"), train=False)
    batch = collate([dataset[0]])
    prior = ground_inverse_depth(*(batch[key] for key in ("cam2ego", "intrinsics", "post_rot", "post_tran")),
                                 batch["images"].shape[-2:])[:, :, 0]
    lidar = batch["depth_maps"]
    both = (lidar > 0) & (prior > 0)
    ratio = lidar[both] * prior[both] / 10   # LiDAR depth / ground depth: 1 on the ground, < 1 in front of it
    assert both.sum() > 5000
    on_ground = ((ratio - 1).abs() < 0.02).float().mean()
    assert on_ground > 0.3                                 # the ground returns sit at the ground depth (47 %)
    assert ratio.quantile(0.98).item() < 1.05                            # nothing lies beyond the ground


def test_ground_prior_adds_a_zero_initialised_input_to_the_image_trunk_and_nothing_else():
    plain, prior = build_model(camera_r18()), build_model(camera_r18("model.camera_ground_prior=true"))
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert count(prior) - count(plain) == 64 * 7 * 7                   # conv1's kernel for the one extra map
    assert prior.img_backbone.conv1_extra.weight.abs().sum() == 0
    prior.load_state_dict(plain.state_dict(), strict=False)            # the same weights otherwise
    batch = example_batch(camera_r18())
    plain.eval(), prior.eval()
    with torch.no_grad():
        assert torch.equal(prior(batch)["occ_logits"], plain(batch)["occ_logits"])
    prior.train()
    prior(batch)["occ_logits"].sum().backward()
    assert prior.img_backbone.conv1_extra.weight.grad.abs().sum() > 0  # it learns from the first step
    with pytest.raises(UsageError, match="ResNet backbone"):
        camera_r18("model.camera_ground_prior=true", "model.backbone=swin_t")
    with pytest.raises(UsageError, match="camera_ground_prior needs a camera branch"):
        apply_overrides(get_config("effocc_lidar_tiny"), ["model.camera_ground_prior=true"])
