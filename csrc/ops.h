// Declarations of the kernels behind occ._C. The Python side (occ/ops) validates every argument
// and calls these with contiguous tensors on one device; the functions here only check the
// invariants they rely on for memory safety.
#pragma once
#include <ATen/core/Tensor.h>

#include <tuple>
#include <vector>

// BEV pooling (docs/architecture.md#bev-pooling). depth (B,N,D,H,W), feat (B,N,H,W,C), int32 ranks (P,), intervals (K,).
// Returns the pooled features laid out as (B*Z*Y*X, C); cells without an interval are zero.
at::Tensor bev_pool_forward_cpu(const at::Tensor& depth, const at::Tensor& feat,
                                const at::Tensor& ranks_depth, const at::Tensor& ranks_feat,
                                const at::Tensor& ranks_bev, const at::Tensor& interval_starts,
                                const at::Tensor& interval_lengths, int64_t num_cells);
// out_grad (B*Z*Y*X, C) -> (depth_grad shaped like depth, feat_grad shaped like feat).
std::vector<at::Tensor> bev_pool_backward_cpu(const at::Tensor& out_grad, const at::Tensor& depth,
                                              const at::Tensor& feat, const at::Tensor& ranks_depth,
                                              const at::Tensor& ranks_feat, const at::Tensor& ranks_bev,
                                              const at::Tensor& interval_starts,
                                              const at::Tensor& interval_lengths);

// Voxelisation (docs/architecture.md#voxelisation). voxel_size (3,) and range_min (3,) in metres, grid_size (X, Y, Z).
std::vector<at::Tensor> voxelize_cpu(const at::Tensor& points, std::vector<double> voxel_size,
                                     std::vector<double> range_min, std::vector<int64_t> grid_size,
                                     int64_t max_points, int64_t max_voxels);
at::Tensor dynamic_voxelize_cpu(const at::Tensor& points, std::vector<double> voxel_size,
                                std::vector<double> range_min, std::vector<int64_t> grid_size);

#ifdef WITH_CUDA
at::Tensor bev_pool_forward_cuda(const at::Tensor& depth, const at::Tensor& feat,
                                 const at::Tensor& ranks_depth, const at::Tensor& ranks_feat,
                                 const at::Tensor& ranks_bev, const at::Tensor& interval_starts,
                                 const at::Tensor& interval_lengths, int64_t num_cells);
std::vector<at::Tensor> bev_pool_backward_cuda(const at::Tensor& out_grad, const at::Tensor& depth,
                                               const at::Tensor& feat, const at::Tensor& ranks_depth,
                                               const at::Tensor& ranks_feat, const at::Tensor& ranks_bev,
                                               const at::Tensor& interval_starts,
                                               const at::Tensor& interval_lengths);
std::vector<at::Tensor> voxelize_cuda(const at::Tensor& points, std::vector<double> voxel_size,
                                      std::vector<double> range_min, std::vector<int64_t> grid_size,
                                      int64_t max_points, int64_t max_voxels);
at::Tensor dynamic_voxelize_cuda(const at::Tensor& points, std::vector<double> voxel_size,
                                 std::vector<double> range_min, std::vector<int64_t> grid_size);
#endif
