"""LSS view transformer: image features -> depth distribution x context -> camera BEV (BEV pooling)."""
import torch
from torch import nn

from occ import ops
from occ.errors import UsageError

GEOMETRY_KEYS = ("cam2ego", "intrinsics", "post_rot", "post_tran", "bda")


def conv_bias_bn_relu(in_channels, out_channels, kernel_size, stride=1):
    """[Conv kxk (padding k // 2, with bias), BN, ReLU] as a list of layers. Unlike
    `occ.models.layers.conv3x3_bn_relu`, every conv of the LiDAR-depth net keeps its bias (the
    published parameter count includes it) and the kernel size varies."""
    return [nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class LidarDepthNet(nn.Module):
    """Depth net that also sees the LiDAR depth map of the input image (EFFOcc / BEVFusion style).

    depth map (B*N, 1, H_in, W_in) -> Conv1x1(1->8), Conv5x5 s4 (8->32), Conv5x5 s(downsample/4)
    (32->64), each +BN+ReLU; concat with the image feature; Conv3x3, Conv3x3 (+BN+ReLU) at the image
    width, Conv1x1 -> D + context channels.
    """

    def __init__(self, in_channels, num_depth, context_channels, downsample):
        super().__init__()
        if downsample % 4 != 0:
            raise UsageError(f"model.downsample must be a multiple of 4 for LiDAR-depth input, got {downsample}")
        self.depth_input = nn.Sequential(*conv_bias_bn_relu(1, 8, 1), *conv_bias_bn_relu(8, 32, 5, stride=4),
                                         *conv_bias_bn_relu(32, 64, 5, stride=downsample // 4))
        self.net = nn.Sequential(*conv_bias_bn_relu(in_channels + 64, in_channels, 3),
                                 *conv_bias_bn_relu(in_channels, in_channels, 3),
                                 nn.Conv2d(in_channels, num_depth + context_channels, 1))

    def forward(self, feat, depth_maps):
        depth_feat = self.depth_input(depth_maps)
        if depth_feat.shape[-2:] != feat.shape[-2:]:
            raise ValueError(f"depth_maps of size {tuple(depth_maps.shape[-2:])} give a {tuple(depth_feat.shape[-2:])} "
                             f"map, the image features are {tuple(feat.shape[-2:])}")
        return self.net(torch.cat([feat, depth_feat], dim=1))


class LSSViewTransformer(nn.Module):
    """Lift (depth distribution x context per pixel), splat (BEV pooling into one z bin).

    image_size (H_in, W_in); frustum of (D, H_in/downsample, W_in/downsample) points at
    u = linspace(0, W_in-1, W_f), v = linspace(0, H_in-1, H_f), d = arange(*depth_bins).
    BEV grid: x, y over pc_range with `bev_voxel` metres; `height_bins` z bins over the whole height
    (1 in the published models), stacked into channels: out_channels = context_channels x height_bins,
    channel c * height_bins + z. `pooling` "sum" (published) adds the depth-weighted context of every
    frustum point of a cell; "mean" divides that sum by the cell's number of frustum points, so that
    near cells (thousands of points) and far ones (a few) have features of the same scale.
    Without LiDAR-depth input the depth net is a 1x1 conv (published), after `depth_convs` 3x3
    conv+BN+ReLU layers at the input width when > 0 (the LiDAR-depth net's two, without the LiDAR).
    """

    def __init__(self, in_channels, context_channels, image_size, downsample, depth_bins, pc_range, bev_voxel,
                 use_lidar_depth, height_bins=1, pooling="sum", depth_convs=0):
        super().__init__()
        if pooling not in ("sum", "mean"):
            raise ValueError(f"pooling must be 'sum' or 'mean', got {pooling!r}")
        H_in, W_in = image_size
        if H_in % downsample or W_in % downsample:
            raise UsageError(f"data.image_size {image_size} must be divisible by model.downsample {downsample}")
        H_f, W_f = H_in // downsample, W_in // downsample
        depths = torch.arange(*depth_bins, dtype=torch.float32)
        us = torch.linspace(0, W_in - 1, W_f)
        vs = torch.linspace(0, H_in - 1, H_f)
        d, v, u = torch.meshgrid(depths, vs, us, indexing="ij")
        self.register_buffer("frustum", torch.stack([u, v, d], dim=-1), persistent=False)  # (D, H_f, W_f, 3)
        self.num_depth, self.context_channels = len(depths), context_channels
        self.use_lidar_depth = use_lidar_depth
        if use_lidar_depth:
            self.depth_net = LidarDepthNet(in_channels, self.num_depth, context_channels, downsample)
        elif depth_convs == 0:
            self.depth_net = nn.Conv2d(in_channels, self.num_depth + context_channels, 1)
        else:
            convs = [layer for _ in range(depth_convs) for layer in conv_bias_bn_relu(in_channels, in_channels, 3)]
            self.depth_net = nn.Sequential(*convs, nn.Conv2d(in_channels, self.num_depth + context_channels, 1))
        lower = torch.tensor(pc_range[:3], dtype=torch.float32)
        size = torch.tensor([bev_voxel, bev_voxel, (pc_range[5] - pc_range[2]) / height_bins], dtype=torch.float32)
        self.register_buffer("grid_lower", lower, persistent=False)
        self.register_buffer("grid_size", size, persistent=False)
        self.bev_hw = (round((pc_range[4] - pc_range[1]) / bev_voxel), round((pc_range[3] - pc_range[0]) / bev_voxel))
        self.height_bins, self.pooling = height_bins, pooling
        self.out_channels = context_channels * height_bins
        self._rank_cache = None  # (geometry tensors, ranks) of the last eval-mode call

    def frustum_to_ego(self, cam2ego, intrinsics, post_rot, post_tran, bda):
        """Frustum points in the augmented ego frame: (B, N, D, H_f, W_f, 3)."""
        B, N = cam2ego.shape[:2]
        # undo the image augmentation: [u, v, d] = post_rot^-1 ([u', v', d] - post_tran)
        pts = self.frustum.view(1, 1, *self.frustum.shape) - post_tran.view(B, N, 1, 1, 1, 3)
        pts = torch.einsum("bnij,bndhwj->bndhwi", torch.inverse(post_rot), pts)
        pts = torch.cat([pts[..., :2] * pts[..., 2:3], pts[..., 2:3]], dim=-1)  # d * [u, v, 1]
        cam2aug_ego = bda.view(B, 1, 4, 4) @ cam2ego  # BEV augmentation after calibration
        rot = cam2aug_ego[..., :3, :3] @ torch.inverse(intrinsics)
        pts = torch.einsum("bnij,bndhwj->bndhwi", rot, pts)
        return pts + cam2aug_ego[..., :3, 3].view(B, N, 1, 1, 1, 3)

    def _apply(self, fn, *args, **kwargs):
        # .to() / .cuda() / .cpu() / .half(): the cached ranks are no buffer and would stay on the
        # old device (holding its memory); drop them, the next eval call recomputes them on the new one
        self._rank_cache = None
        return super()._apply(fn, *args, **kwargs)

    def bev_ranks(self, geometry):
        """Sorted BEV-pooling ranks for this geometry; reused in eval mode while it is unchanged
        (same values on the same device)."""
        if not self.training and self._rank_cache is not None:
            cached_geometry, ranks = self._rank_cache
            if all(a.shape == b.shape and a.device == b.device and torch.equal(a, b)
                   for a, b in zip(cached_geometry, geometry)):
                return ranks
        with torch.autocast(geometry[0].device.type, enabled=False):  # coordinates stay in float32
            points = self.frustum_to_ego(*(g.float() for g in geometry))
        coords = torch.floor((points - self.grid_lower) / self.grid_size).long()  # floor, not truncation
        ranks = ops.bev_pool_prepare(coords, (points.shape[0], self.height_bins, *self.bev_hw))
        self._rank_cache = None if self.training else (tuple(g.detach().clone() for g in geometry), ranks)
        return ranks

    def lift(self, img_feat, depth_maps, batch_size):
        """img_feat (B*N, C, H_f, W_f), depth_maps (B, N, H_in, W_in) or None -> depth distribution
        (B, N, D, H_f, W_f) and context (B, N, H_f, W_f, context channels)."""
        if self.use_lidar_depth:
            if depth_maps is None:
                raise KeyError("batch['depth_maps'] is required by a model with model.use_lidar_depth=True")
            x = self.depth_net(img_feat, depth_maps.flatten(0, 1).unsqueeze(1))
        else:
            x = self.depth_net(img_feat)
        H_f, W_f = x.shape[-2:]
        if (H_f, W_f) != tuple(self.frustum.shape[1:3]):
            raise ValueError(f"image features are {H_f}x{W_f}, the frustum expects {tuple(self.frustum.shape[1:3])}: "
                             f"do the images match data.image_size?")
        depth = x[:, :self.num_depth].softmax(dim=1).view(batch_size, -1, self.num_depth, H_f, W_f)
        context = x[:, self.num_depth:].view(batch_size, -1, self.context_channels, H_f, W_f)
        return depth, context.permute(0, 1, 3, 4, 2).contiguous()

    def forward(self, img_feat, batch):
        """img_feat (B*N, C, H_f, W_f) -> camera BEV (B, context x height_bins, Y, X) and depth (B, N, D, H_f, W_f)."""
        geometry = tuple(batch[k] for k in GEOMETRY_KEYS)
        B = geometry[0].shape[0]
        depth, context = self.lift(img_feat, batch.get("depth_maps"), B)
        ranks = self.bev_ranks(geometry)
        # pooled in float32 (also under fp16 autocast): sums of many points, and the kernels take float32
        bev_shape = (B, self.height_bins, *self.bev_hw)
        bev = ops.bev_pool_v2(depth.float(), context.float(), *ranks, bev_shape)
        if self.pooling == "mean":
            bev = mean_over_points(bev, ranks[2], bev_shape)
        return bev.flatten(1, 2), depth  # (B, C, Z, Y, X) -> (B, C * Z, Y, X)


def ground_inverse_depth(cam2ego, intrinsics, post_rot, post_tran, image_hw, reference_depth=10.0):
    """Per pixel of the (augmented) input images, `reference_depth` divided by the depth (along the
    camera axis, as the frustum's d) at which the pixel's ray meets the ground plane z = 0 of the ego
    frame; 0 where the ray points at or above the horizon. (B, N, 3/4 x 4 geometry) -> (B, N, 1, H, W).
    A camera-only model's cue to where things stand: the ground contact of an object sets its depth."""
    B, N = cam2ego.shape[:2]
    H, W = image_hw
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float32, device=cam2ego.device),
                          torch.arange(W, dtype=torch.float32, device=cam2ego.device), indexing="ij")
    pixels = torch.stack([u, v, torch.ones_like(u)], dim=-1)  # (H, W, 3): [u', v', 1] of the augmented image
    pixels = torch.einsum("bnij,bnhwj->bnhwi", torch.inverse(post_rot), pixels - post_tran.view(B, N, 1, 1, 3))
    ray_z = torch.einsum("bnj,bnhwj->bnhw", (cam2ego[..., :3, :3] @ torch.inverse(intrinsics))[..., 2, :], pixels)
    camera_height = cam2ego[..., 2, 3].view(B, N, 1, 1)  # ego z of the camera centre
    return (-ray_z / camera_height).clamp(min=0).mul(reference_depth).unsqueeze(2)


def batch_ground_prior(batch):
    """ground_inverse_depth of a batch's images (batch['images'] (B, N, 3, H, W) and its geometry):
    (B, N, 1, H, W) in the images' dtype."""
    images = batch["images"]
    geometry = (batch[key].float() for key in GEOMETRY_KEYS[:4])  # cam2ego, intrinsics, post_rot, post_tran
    return ground_inverse_depth(*geometry, images.shape[-2:]).to(images.dtype)


def mean_over_points(bev, ranks_bev, bev_shape):
    """Pooled sums (B, C, Z, Y, X) -> means over each cell's frustum points (ranks_bev (P,), one entry
    per point); cells without points stay 0. The counts depend on the geometry only."""
    B, Z, Y, X = bev_shape
    ones = torch.ones(ranks_bev.shape[0], dtype=bev.dtype, device=bev.device)
    counts = torch.zeros(B * Z * Y * X, dtype=bev.dtype, device=bev.device).index_add(0, ranks_bev.long(), ones)
    return bev / counts.view(B, 1, Z, Y, X).clamp(min=1)
