// occ._C: one entry point per op, dispatching on the device of its tensors. Argument checking
// (shapes, dtypes, bounds) is done by the Python wrappers in occ/ops before these are called.
#include <torch/python.h>

#include "ops.h"

namespace {

#ifdef WITH_CUDA
constexpr bool kWithCuda = true;
#define DISPATCH_BY_DEVICE(tensor, name, ...) \
  return (tensor).is_cuda() ? name##_cuda(__VA_ARGS__) : name##_cpu(__VA_ARGS__)
#else
constexpr bool kWithCuda = false;
#define DISPATCH_BY_DEVICE(tensor, name, ...)                                               \
  TORCH_CHECK(!(tensor).is_cuda(), #name ": occ._C was built without CUDA (no CUDA_HOME)"); \
  return name##_cpu(__VA_ARGS__)
#endif

at::Tensor bev_pool_forward(const at::Tensor& depth, const at::Tensor& feat,
                            const at::Tensor& ranks_depth, const at::Tensor& ranks_feat,
                            const at::Tensor& ranks_bev, const at::Tensor& interval_starts,
                            const at::Tensor& interval_lengths, int64_t num_cells) {
  DISPATCH_BY_DEVICE(feat, bev_pool_forward, depth, feat, ranks_depth, ranks_feat, ranks_bev,
                     interval_starts, interval_lengths, num_cells);
}

std::vector<at::Tensor> bev_pool_backward(const at::Tensor& out_grad, const at::Tensor& depth,
                                          const at::Tensor& feat, const at::Tensor& ranks_depth,
                                          const at::Tensor& ranks_feat, const at::Tensor& ranks_bev,
                                          const at::Tensor& interval_starts,
                                          const at::Tensor& interval_lengths) {
  DISPATCH_BY_DEVICE(feat, bev_pool_backward, out_grad, depth, feat, ranks_depth, ranks_feat,
                     ranks_bev, interval_starts, interval_lengths);
}

std::vector<at::Tensor> voxelize(const at::Tensor& points, std::vector<double> voxel_size,
                                 std::vector<double> range_min, std::vector<int64_t> grid_size,
                                 int64_t max_points, int64_t max_voxels) {
  DISPATCH_BY_DEVICE(points, voxelize, points, voxel_size, range_min, grid_size, max_points, max_voxels);
}

at::Tensor dynamic_voxelize(const at::Tensor& points, std::vector<double> voxel_size,
                            std::vector<double> range_min, std::vector<int64_t> grid_size) {
  DISPATCH_BY_DEVICE(points, dynamic_voxelize, points, voxel_size, range_min, grid_size);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.attr("with_cuda") = kWithCuda;
  m.def("bev_pool_forward", &bev_pool_forward,
        "BEV pooling forward: (depth, feat, ranks_depth, ranks_feat, ranks_bev, interval_starts, "
        "interval_lengths, num_cells) -> (num_cells, C)");
  m.def("bev_pool_backward", &bev_pool_backward,
        "BEV pooling backward: (out_grad (num_cells, C), depth, feat, ranks...) -> [depth_grad, feat_grad]");
  m.def("voxelize", &voxelize,
        "hard voxelisation: (points, voxel_size, range_min, grid_size xyz, max_points, max_voxels) "
        "-> [voxels, coords_zyx, num_points]");
  m.def("dynamic_voxelize", &dynamic_voxelize,
        "per-point voxel coordinates: (points, voxel_size, range_min, grid_size xyz) -> (P, 3) zyx");
}
