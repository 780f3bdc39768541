"""pretrain_depth.py: monocular depth pre-training of a camera backbone from projected LiDAR."""
import os

import torch

import pretrain_depth
from occ.checkpoint import load_checkpoint, model_weights
from occ.config import apply_overrides, get_config
from occ.models import build_model

CAMERA_R18 = ["model.modality=camera", "model.use_lidar_depth=false", "data.image_size=(32,88)"]


def test_the_depth_net_learns_the_depth_of_a_batch():
    cfg = apply_overrides(get_config("effocc_fusion_r18_tiny"), CAMERA_R18 + ["model.depth_loss_weight=1.0"])
    torch.manual_seed(0)
    model = pretrain_depth.MonoDepthNet(cfg.model)
    images = torch.randn(1, 2, 3, 32, 88)
    depth_maps = torch.zeros(1, 2, 32, 88)
    depth_maps[:, :, :16] = 30.0   # far in the upper half, near in the lower half
    depth_maps[:, :, 16:] = 5.0
    batch = {"images": images, "depth_maps": depth_maps}
    loss_fn = pretrain_depth.make_loss_fn(cfg.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = loss_fn(model, batch)["loss_depth"].item()
    for _ in range(15):
        optimizer.zero_grad()
        loss_fn(model, batch)["loss_depth"].backward()
        optimizer.step()
    assert loss_fn(model, batch)["loss_depth"].item() < 0.5 * first
    assert model(batch)["depth"].shape == (1, 2, 88, 4, 11)


def test_pretrain_depth_writes_the_ema_backbone_that_model_pretrained_path_loads(data_root, tmp_path):
    work_dir = str(tmp_path / "depth")
    position = pretrain_depth.main(["--config", "effocc_fusion_r18_tiny", "--data-root", data_root, "--work-dir",
                                    work_dir, "--max-steps", "2", "--no-val", "--set", *CAMERA_R18])
    assert position.step == 2
    path = os.path.join(work_dir, "backbone.pth")
    saved = torch.load(path, weights_only=True)
    ckpt_path = os.path.join(work_dir, "step_00000002.pt")
    ema = model_weights(load_checkpoint(ckpt_path), use_ema=True, path=ckpt_path)
    cfg = apply_overrides(get_config("effocc_fusion_r18_tiny"), CAMERA_R18 + [f"model.pretrained_path={path}"])
    own = build_model(cfg).img_backbone.state_dict()
    assert set(saved) == set(own)
    assert all(torch.equal(own[key], saved[key]) and torch.equal(saved[key], ema["img_backbone." + key])
               for key in saved)


class OneHotDepth(torch.nn.Module):
    """Predicts a fixed bin everywhere."""

    def __init__(self, bin_index, num_bins=4):
        super().__init__()
        self.bin_index, self.num_bins = bin_index, num_bins

    def forward(self, batch):
        B, N, H, W = batch["depth_maps"].shape
        depth = torch.zeros(B, N, self.num_bins, H // 2, W // 2)
        depth[:, :, self.bin_index] = 1.0
        return {"depth": depth}


def test_depth_scores_count_cells_within_one_bin_of_their_target():
    model_cfg = get_config("flashocc_r50_tiny").model
    model_cfg.downsample, model_cfg.depth_bins = 2, (1.0, 5.0, 1.0)   # 4 bins at 1, 2, 3, 4 m
    depth_maps = torch.zeros(1, 4, 6)
    depth_maps[0, 0, 0], depth_maps[0, 0, 2], depth_maps[0, 2, 4] = 1.0, 2.0, 4.0   # targets: bins 0, 1, 3
    dataset = [{"depth_maps": depth_maps, "sample_token": "a"}]   # one sample, one camera
    # predicting bin 1: within one bin of targets 0 and 1, not of 3
    loss, within = pretrain_depth.depth_scores(OneHotDepth(1), dataset, "cpu", model_cfg)
    assert within == 2 / 3
    assert loss > 0
    _, within = pretrain_depth.depth_scores(OneHotDepth(3), dataset, "cpu", model_cfg)
    assert within == 1 / 3


def test_the_depth_net_reads_the_ground_prior_of_the_camera_geometry():
    from occ.models.example_inputs import example_batch
    outputs = {}
    for prior in (False, True):
        cfg = apply_overrides(get_config("effocc_fusion_r18_tiny"),
                              CAMERA_R18 + ["model.depth_loss_weight=1.0", f"model.camera_ground_prior={prior}"])
        torch.manual_seed(0)
        model = pretrain_depth.MonoDepthNet(cfg.model).eval()
        if prior:
            torch.nn.init.normal_(model.img_backbone.conv1_extra.weight, std=0.5)
        batch = example_batch(cfg)
        lower = {**batch, "cam2ego": batch["cam2ego"].clone()}
        lower["cam2ego"][:, :, 2, 3] -= 0.5   # cameras half a metre lower: another ground prior
        with torch.no_grad():
            outputs[prior] = (model(batch)["depth"], model(lower)["depth"])
    assert torch.equal(*outputs[False])                             # without the prior the geometry is not read
    assert (outputs[True][0] - outputs[True][1]).abs().max() > 1e-4  # with it, the depth depends on it
