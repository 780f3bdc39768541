"""Custom ops: BEV pooling and voxelisation (C++/CUDA kernels in csrc/, references in Python)."""
from .bev_pool import bev_pool_prepare, bev_pool_v2, bev_pool_v2_reference
from .voxelize import dynamic_voxelize, dynamic_voxelize_reference, voxelize, voxelize_reference
