"""LiDAR branch: hard voxelisation, mean voxel feature, spconv sparse encoder -> LiDAR BEV."""
import contextlib
import warnings

import torch
from torch import nn

with warnings.catch_warnings():   # spconv 2.3.6 uses torch APIs deprecated since; nothing a user can act on
    warnings.simplefilter("ignore", FutureWarning)
    import spconv.pytorch as spconv
    from spconv.core import ConvAlgo
    from spconv.pytorch.conv import SparseConvolution

from occ import ops
from occ.errors import UsageError


def sparse_bn_relu(channels):
    return [nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01), nn.ReLU(inplace=True)]


class SparseBasicBlock(spconv.SparseModule):
    """SubM3+BN+ReLU+SubM3+BN, plus identity, ReLU (the convs of a stage share their indice pairs)."""

    def __init__(self, channels, indice_key):
        super().__init__()
        self.conv1 = spconv.SubMConv3d(channels, channels, 3, padding=1, bias=False, indice_key=indice_key)
        self.bn1 = nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)
        self.conv2 = spconv.SubMConv3d(channels, channels, 3, padding=1, bias=False, indice_key=indice_key)
        self.bn2 = nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.conv1(x)
        out = out.replace_feature(self.relu(self.bn1(out.features)))
        out = self.conv2(out)
        return out.replace_feature(self.relu(self.bn2(out.features) + x.features))


def conv_out_size(size, kernel, stride, padding):
    return (size + 2 * padding - kernel) // stride + 1


class SparseEncoder(nn.Module):
    """SECOND-style sparse 3-D encoder (docs/architecture.md#lidar-branch).

    SubM3 (in -> c0); stage i: `blocks` BasicBlocks(c_i) then (i < 3) SpConv3 (c_i -> c_i+1) with
    stride down_strides[i] and padding (1,1,1), (1,1,1), (0,1,1); out: SpConv k(3,1,1) s(2,1,1)
    (c3 -> c3). Dense output (B, c3, Z_out, Y, X) is returned as (B, c3 * Z_out, Y, X).
    """

    def __init__(self, in_channels, sparse_shape, channels, blocks, down_strides):
        super().__init__()
        if len(channels) != 4 or len(down_strides) != 3:
            raise UsageError(f"model.sparse_channels needs 4 stage widths and model.sparse_down_strides 3 strides, "
                             f"got {channels} and {down_strides}")
        self.sparse_shape = list(sparse_shape)  # (Z, Y, X)
        self.conv_input = spconv.SparseSequential(
            spconv.SubMConv3d(in_channels, channels[0], 3, padding=1, bias=False, indice_key="subm1"),
            *sparse_bn_relu(channels[0]))
        paddings = ((1, 1, 1), (1, 1, 1), (0, 1, 1))
        out_shape = list(sparse_shape)
        self.stages = nn.ModuleList()
        for i, width in enumerate(channels):
            layers = [SparseBasicBlock(width, indice_key=f"subm{i + 1}") for _ in range(blocks)]
            if i < 3:
                layers += [spconv.SparseConv3d(width, channels[i + 1], 3, stride=down_strides[i], padding=paddings[i],
                                               bias=False, indice_key=f"down{i + 1}"),
                           *sparse_bn_relu(channels[i + 1])]
                out_shape = [conv_out_size(s, 3, st, p) for s, st, p in zip(out_shape, down_strides[i], paddings[i])]
            self.stages.append(spconv.SparseSequential(*layers))
        self.conv_out = spconv.SparseSequential(
            spconv.SparseConv3d(channels[3], channels[3], (3, 1, 1), stride=(2, 1, 1), padding=0, bias=False,
                                indice_key="down_out"),
            *sparse_bn_relu(channels[3]))
        self.out_shape = [conv_out_size(out_shape[0], 3, 2, 0)] + out_shape[1:]
        if self.out_shape[0] < 1:
            raise UsageError(f"the sparse encoder reduces z ({sparse_shape[0]} voxels) to nothing: "
                             f"check model.voxel_size and model.sparse_down_strides")
        self.out_channels = channels[3] * self.out_shape[0]

    def use_algorithm_for(self, device):
        """spconv runs on CPU only with the Native algorithm; on CUDA use the implicit-GEMM default."""
        algo = ConvAlgo.Native if device.type == "cpu" else ConvAlgo.MaskImplicitGemm
        for module in self.modules():
            if isinstance(module, SparseConvolution) and module.algo != algo:
                module.algo = algo

    def forward(self, voxel_features, coords_bzyx, batch_size):
        device = voxel_features.device
        self.use_algorithm_for(device)
        keep_autocast = spconv_autocast_enabled(device)
        with contextlib.nullcontext() if keep_autocast else torch.autocast(device.type, enabled=False):
            if not keep_autocast:
                voxel_features = voxel_features.float()
            x = spconv.SparseConvTensor(voxel_features, coords_bzyx, self.sparse_shape, batch_size)
            x = self.conv_input(x)
            for stage in self.stages:
                x = stage(x)
            dense = self.conv_out(x).dense()  # (B, C, Z, Y, X)
        return dense.flatten(1, 2)


def spconv_autocast_enabled(device):
    """Whether the sparse encoder may run under the caller's autocast. spconv's convolutions react
    only to CUDA autocast, and then always cast to float16 (its custom_fwd); on the CPU its kernels
    take neither bfloat16 nor the half outputs autocast makes of its inner matmuls. So it runs in
    float32 except under CUDA float16 autocast (where a GradScaler guards the float16 gradients);
    under CUDA bfloat16 autocast float16 gradients would go unscaled."""
    return (device.type == "cuda" and torch.is_autocast_enabled("cuda")
            and torch.get_autocast_dtype("cuda") == torch.float16)


class LidarBranch(nn.Module):
    """points (list of B tensors (P_b, 5)) -> LiDAR BEV (B, C, Y, X)."""

    def __init__(self, voxel_size, pc_range, max_points_per_voxel, max_voxels, channels, blocks, down_strides,
                 bev_hw, in_channels=5):
        super().__init__()
        self.voxel_size, self.pc_range = tuple(voxel_size), tuple(pc_range)
        self.max_points_per_voxel = max_points_per_voxel
        self.max_voxels_train, self.max_voxels_test = max_voxels
        self.in_channels = in_channels
        grid = [round((pc_range[i + 3] - pc_range[i]) / voxel_size[i]) for i in range(3)]  # X, Y, Z
        sparse_shape = (grid[2] + 1, grid[1], grid[0])  # z gets one extra cell (SECOND convention)
        self.encoder = SparseEncoder(in_channels, sparse_shape, channels, blocks, down_strides)
        if tuple(self.encoder.out_shape[1:]) != tuple(bev_hw):
            raise UsageError(f"the sparse encoder gives a {tuple(self.encoder.out_shape[1:])} BEV, the model needs "
                             f"{tuple(bev_hw)}: check model.voxel_size and model.sparse_down_strides")
        self.out_channels = self.encoder.out_channels

    def voxelize(self, points):
        """Mean feature per voxel (M, F) and batch-prefixed coords (M, 4) int32 (b, z, y, x)."""
        max_voxels = self.max_voxels_train if self.training else self.max_voxels_test
        features, coords = [], []
        for b, pts in enumerate(points):
            if pts.dim() != 2 or pts.shape[1] < self.in_channels:
                raise ValueError(f"points[{b}] must have shape (P, {self.in_channels}), got {tuple(pts.shape)}")
            voxels, coords_zyx, num_points = ops.voxelize(pts[:, :self.in_channels].contiguous(), self.voxel_size,
                                                          self.pc_range, self.max_points_per_voxel, max_voxels)
            features.append(voxels.sum(dim=1) / num_points.clamp(min=1).unsqueeze(1).to(voxels.dtype))
            batch_idx = coords_zyx.new_full((coords_zyx.shape[0], 1), b)
            coords.append(torch.cat([batch_idx, coords_zyx], dim=1))
        return torch.cat(features), torch.cat(coords).int()

    def forward(self, points):
        features, coords = self.voxelize(points)
        return self.encoder(features, coords, len(points))
