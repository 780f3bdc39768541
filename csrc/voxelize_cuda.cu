// Voxelisation on the GPU (docs/architecture.md#voxelisation), first-come like the sequential CPU pass, by sorting:
//   1. cell key per point (-1 out of range);
//   2. stable sort of the in-range points by key: each cell becomes a run whose first entry is the
//      cell's earliest point, and an entry's position in its run is its arrival order in the cell;
//   3. voxel id of a cell = rank of its earliest point among all cells' earliest points;
//   4. copy the first max_points points of each of the first max_voxels cells.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <tuple>

#include <ATen/Dispatch.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/argsort.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/nonzero.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/unique_consecutive.h>
#include <ATen/ops/zeros.h>

#include "ops.h"

namespace {

constexpr int kThreads = 256;

int64_t blocks_for(int64_t num_threads) { return (num_threads + kThreads - 1) / kThreads; }

struct Grid {
  double voxel_size[3];
  double range_min[3];
  int64_t size[3];  // X, Y, Z
};

Grid make_grid(const std::vector<double>& voxel_size, const std::vector<double>& range_min,
               const std::vector<int64_t>& grid_size) {
  Grid grid;
  for (int axis = 0; axis < 3; ++axis) {
    grid.voxel_size[axis] = voxel_size[axis];
    grid.range_min[axis] = range_min[axis];
    grid.size[axis] = grid_size[axis];
  }
  return grid;
}

// (z * Y + y) * X + x of the cell holding `point`, or -1 outside the grid; double precision as in
// the reference.
template <typename scalar_t>
__device__ int64_t cell_key(const scalar_t* point, const Grid& grid) {
  int64_t cell[3];
  for (int axis = 0; axis < 3; ++axis) {
    const double c = floor((static_cast<double>(point[axis]) - grid.range_min[axis]) / grid.voxel_size[axis]);
    if (!(c >= 0 && c < static_cast<double>(grid.size[axis]))) return -1;  // also catches NaN
    cell[axis] = static_cast<int64_t>(c);
  }
  return (cell[2] * grid.size[1] + cell[1]) * grid.size[0] + cell[0];
}

__device__ void write_zyx(int64_t key, const Grid& grid, int* coords) {
  coords[0] = key < 0 ? -1 : static_cast<int>(key / (grid.size[0] * grid.size[1]));
  coords[1] = key < 0 ? -1 : static_cast<int>((key / grid.size[0]) % grid.size[1]);
  coords[2] = key < 0 ? -1 : static_cast<int>(key % grid.size[0]);
}

template <typename scalar_t>
__global__ void cell_keys_kernel(const scalar_t* __restrict__ points, int64_t num_points,
                                 int64_t num_features, Grid grid, int64_t* __restrict__ keys) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < num_points) keys[i] = cell_key(points + i * num_features, grid);
}

template <typename scalar_t>
__global__ void dynamic_voxelize_kernel(const scalar_t* __restrict__ points, int64_t num_points,
                                        int64_t num_features, Grid grid, int* __restrict__ coords) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < num_points) write_zyx(cell_key(points + i * num_features, grid), grid, coords + 3 * i);
}

// One thread per in-range point j in key order: copy it to slot (j - run begin) of its cell's voxel.
template <typename scalar_t>
__global__ void fill_voxels_kernel(const scalar_t* __restrict__ points, const int64_t* __restrict__ sorted_point,
                                   const int64_t* __restrict__ run_of_entry, const int64_t* __restrict__ run_begin,
                                   const int64_t* __restrict__ voxel_of_run, int64_t num_entries,
                                   int64_t num_features, int64_t max_points, int64_t max_voxels,
                                   scalar_t* __restrict__ voxels) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j >= num_entries) return;
  const int64_t run = run_of_entry[j];
  const int64_t voxel = voxel_of_run[run];
  const int64_t slot = j - run_begin[run];
  if (voxel >= max_voxels || slot >= max_points) return;
  const scalar_t* src = points + sorted_point[j] * num_features;
  scalar_t* dst = voxels + (voxel * max_points + slot) * num_features;
  for (int64_t f = 0; f < num_features; ++f) dst[f] = src[f];
}

// One thread per cell: coordinates and point count of its voxel, when it got one.
__global__ void voxel_meta_kernel(const int64_t* __restrict__ run_key, const int64_t* __restrict__ run_size,
                                  const int64_t* __restrict__ voxel_of_run, int64_t num_runs,
                                  int64_t max_points, int64_t max_voxels, Grid grid,
                                  int* __restrict__ coords, int* __restrict__ num_points) {
  const int64_t run = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (run >= num_runs) return;
  const int64_t voxel = voxel_of_run[run];
  if (voxel >= max_voxels) return;
  write_zyx(run_key[run], grid, coords + 3 * voxel);
  num_points[voxel] = static_cast<int>(run_size[run] < max_points ? run_size[run] : max_points);
}

}  // namespace

std::vector<at::Tensor> voxelize_cuda(const at::Tensor& points, std::vector<double> voxel_size,
                                      std::vector<double> range_min, std::vector<int64_t> grid_size,
                                      int64_t max_points, int64_t max_voxels) {
  TORCH_CHECK(points.is_contiguous() && points.dim() == 2 && points.size(1) >= 3,
              "voxelize: points must be a contiguous (P, F>=3) tensor");
  const c10::cuda::CUDAGuard device_guard(points.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const Grid grid = make_grid(voxel_size, range_min, grid_size);
  const int64_t num_points = points.size(0);
  const int64_t num_features = points.size(1);
  const at::TensorOptions long_options = points.options().dtype(at::kLong);

  at::Tensor keys = at::empty({num_points}, long_options);
  if (num_points > 0) {
    AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "voxelize_cuda_keys", [&] {
      cell_keys_kernel<scalar_t><<<blocks_for(num_points), kThreads, 0, stream>>>(
          points.data_ptr<scalar_t>(), num_points, num_features, grid, keys.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  // In-range points sorted by key; ties keep input order, so each run starts with its earliest point.
  const at::Tensor in_range = at::nonzero(keys.ge(0)).flatten();
  at::Tensor sorted_keys, order;
  std::tie(sorted_keys, order) = at::sort(keys.index_select(0, in_range), /*stable=*/true, 0, false);
  const at::Tensor sorted_point = in_range.index_select(0, order).contiguous();
  at::Tensor run_key, run_of_entry, run_size;
  std::tie(run_key, run_of_entry, run_size) =
      at::unique_consecutive(sorted_keys, /*return_inverse=*/true, /*return_counts=*/true);
  const at::Tensor run_begin = at::cumsum(run_size, 0).sub(run_size);
  const int64_t num_runs = run_key.numel();

  // voxel id of a run = rank of its earliest point among the runs' earliest points
  const at::Tensor run_first_point = sorted_point.index_select(0, run_begin);
  const at::Tensor runs_by_arrival = at::argsort(run_first_point);
  const at::Tensor voxel_of_run = at::empty({num_runs}, long_options)
                                      .scatter_(0, runs_by_arrival, at::arange(num_runs, long_options));

  const int64_t num_voxels = std::min(num_runs, max_voxels);
  at::Tensor voxels = at::zeros({num_voxels, max_points, num_features}, points.options());
  at::Tensor coords = at::empty({num_voxels, 3}, points.options().dtype(at::kInt));
  at::Tensor counts = at::empty({num_voxels}, points.options().dtype(at::kInt));
  if (num_runs == 0) return {voxels, coords, counts};

  const int64_t num_entries = sorted_point.numel();
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "voxelize_cuda_fill", [&] {
    fill_voxels_kernel<scalar_t><<<blocks_for(num_entries), kThreads, 0, stream>>>(
        points.data_ptr<scalar_t>(), sorted_point.data_ptr<int64_t>(),
        run_of_entry.data_ptr<int64_t>(), run_begin.data_ptr<int64_t>(),
        voxel_of_run.data_ptr<int64_t>(), num_entries, num_features, max_points, max_voxels,
        voxels.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  voxel_meta_kernel<<<blocks_for(num_runs), kThreads, 0, stream>>>(
      run_key.data_ptr<int64_t>(), run_size.data_ptr<int64_t>(), voxel_of_run.data_ptr<int64_t>(),
      num_runs, max_points, max_voxels, grid, coords.data_ptr<int>(), counts.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {voxels, coords, counts};
}

at::Tensor dynamic_voxelize_cuda(const at::Tensor& points, std::vector<double> voxel_size,
                                 std::vector<double> range_min, std::vector<int64_t> grid_size) {
  TORCH_CHECK(points.is_contiguous() && points.dim() == 2 && points.size(1) >= 3,
              "dynamic_voxelize: points must be a contiguous (P, F>=3) tensor");
  const c10::cuda::CUDAGuard device_guard(points.device());
  const int64_t num_points = points.size(0);
  at::Tensor coords = at::empty({num_points, 3}, points.options().dtype(at::kInt));
  if (num_points == 0) return coords;
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "dynamic_voxelize_cuda", [&] {
    dynamic_voxelize_kernel<scalar_t><<<blocks_for(num_points), kThreads, 0,
                                        c10::cuda::getCurrentCUDAStream()>>>(
        points.data_ptr<scalar_t>(), num_points, points.size(1),
        make_grid(voxel_size, range_min, grid_size), coords.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return coords;
}
