// Voxelisation on the CPU (docs/architecture.md#voxelisation). Cell keys are computed in parallel; voxel ids and slots are
// then handed out in one sequential pass over the points (which is what makes the result
// first-come), looking cells up in an open-addressing hash map sized to the point count rather
// than a dense table over the whole grid (1600x1600x40 cells would be 400 MB); the point rows are
// finally copied into their voxels, and the unused slots zeroed, in parallel.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>

#include "ops.h"

namespace {

// key[i] = (z * Y + y) * X + x of the cell holding point i, or -1 when it lies outside the grid.
// The cell is floor((p - range_min) / voxel_size) computed in double precision, as in the reference.
template <typename scalar_t>
void cell_keys(const scalar_t* points, int64_t num_points, int64_t num_features,
               const std::vector<double>& voxel_size, const std::vector<double>& range_min,
               const std::vector<int64_t>& grid_size, int64_t* keys) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < num_points; ++i) {
    const scalar_t* point = points + i * num_features;
    int64_t cell[3];
    bool inside = true;
    for (int axis = 0; axis < 3; ++axis) {
      const double c = std::floor((static_cast<double>(point[axis]) - range_min[axis]) / voxel_size[axis]);
      inside = inside && c >= 0 && c < static_cast<double>(grid_size[axis]);  // false for NaN too
      cell[axis] = inside ? static_cast<int64_t>(c) : 0;
    }
    keys[i] = inside ? (cell[2] * grid_size[1] + cell[1]) * grid_size[0] + cell[0] : -1;
  }
}

// Cell key -> voxel id (-1: the cell came after max_voxels and is dropped). Open addressing with
// linear probing; capacity is a power of two at least twice the number of keys inserted.
class CellTable {
 public:
  explicit CellTable(int64_t max_keys) {
    int bits = 4;
    while ((int64_t{1} << bits) < 2 * max_keys) ++bits;
    shift_ = 64 - bits;
    mask_ = (int64_t{1} << bits) - 1;
    keys_.assign(int64_t{1} << bits, -1);
    voxels_.resize(int64_t{1} << bits);
  }

  // The voxel of `key`; when the key is new, it is stored with `voxel_if_new()`.
  template <typename NewVoxel>
  int find_or_insert(int64_t key, NewVoxel voxel_if_new) {
    int64_t slot = static_cast<int64_t>((static_cast<uint64_t>(key) * 0x9E3779B97F4A7C15ull) >> shift_);
    while (keys_[slot] != -1) {
      if (keys_[slot] == key) return voxels_[slot];
      slot = (slot + 1) & mask_;
    }
    keys_[slot] = key;
    voxels_[slot] = voxel_if_new();
    return voxels_[slot];
  }

 private:
  int shift_;
  int64_t mask_;
  std::vector<int64_t> keys_;
  std::vector<int> voxels_;
};

template <typename scalar_t>
std::vector<at::Tensor> voxelize_impl(const at::Tensor& points, const std::vector<double>& voxel_size,
                                      const std::vector<double>& range_min,
                                      const std::vector<int64_t>& grid_size, int64_t max_points,
                                      int64_t max_voxels) {
  const int64_t num_points = points.size(0);
  const int64_t num_features = points.size(1);
  const scalar_t* point_data = points.data_ptr<scalar_t>();
  std::vector<int64_t> keys(num_points);
  cell_keys(point_data, num_points, num_features, voxel_size, range_min, grid_size, keys.data());

  // First-come pass: voxel id and slot of every point (-1: dropped).
  CellTable table(num_points);
  std::vector<int> point_voxel(num_points, -1);
  std::vector<int> point_slot(num_points, 0);
  std::vector<int64_t> voxel_first_point;  // the point that opened each voxel
  std::vector<int> voxel_count;            // points that reached each voxel, kept or not
  for (int64_t i = 0; i < num_points; ++i) {
    if (keys[i] < 0) continue;
    const int voxel = table.find_or_insert(keys[i], [&] {
      if (static_cast<int64_t>(voxel_first_point.size()) >= max_voxels) return -1;
      voxel_first_point.push_back(i);
      voxel_count.push_back(0);
      return static_cast<int>(voxel_first_point.size() - 1);
    });
    if (voxel < 0) continue;
    const int slot = voxel_count[voxel]++;
    if (slot < max_points) {
      point_voxel[i] = voxel;
      point_slot[i] = slot;
    }
  }

  const int64_t num_voxels = static_cast<int64_t>(voxel_first_point.size());
  at::Tensor voxels = at::empty({num_voxels, max_points, num_features}, points.options());
  at::Tensor coords = at::empty({num_voxels, 3}, points.options().dtype(at::kInt));
  at::Tensor counts = at::empty({num_voxels}, points.options().dtype(at::kInt));
  scalar_t* voxel_data = voxels.data_ptr<scalar_t>();
  int* coord_data = coords.data_ptr<int>();
  int* count_data = counts.data_ptr<int>();

#pragma omp parallel
  {
    // kept points into their slots
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < num_points; ++i) {
      if (point_voxel[i] < 0) continue;
      scalar_t* dst = voxel_data + (point_voxel[i] * max_points + point_slot[i]) * num_features;
      const scalar_t* src = point_data + i * num_features;
      for (int64_t f = 0; f < num_features; ++f) dst[f] = src[f];
    }
    // coordinates, counts and the zero padding of the unused slots
#pragma omp for schedule(static)
    for (int64_t v = 0; v < num_voxels; ++v) {
      const int64_t key = keys[voxel_first_point[v]];
      const int64_t kept = std::min<int64_t>(voxel_count[v], max_points);
      coord_data[3 * v + 0] = static_cast<int>(key / (grid_size[0] * grid_size[1]));  // z
      coord_data[3 * v + 1] = static_cast<int>((key / grid_size[0]) % grid_size[1]);  // y
      coord_data[3 * v + 2] = static_cast<int>(key % grid_size[0]);                   // x
      count_data[v] = static_cast<int>(kept);
      std::fill(voxel_data + (v * max_points + kept) * num_features,
                voxel_data + (v + 1) * max_points * num_features, scalar_t(0));
    }
  }
  return {voxels, coords, counts};
}

}  // namespace

std::vector<at::Tensor> voxelize_cpu(const at::Tensor& points, std::vector<double> voxel_size,
                                     std::vector<double> range_min, std::vector<int64_t> grid_size,
                                     int64_t max_points, int64_t max_voxels) {
  TORCH_CHECK(points.is_contiguous() && points.dim() == 2 && points.size(1) >= 3,
              "voxelize: points must be a contiguous (P, F>=3) tensor");
  std::vector<at::Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "voxelize_cpu", [&] {
    result = voxelize_impl<scalar_t>(points, voxel_size, range_min, grid_size, max_points, max_voxels);
  });
  return result;
}

at::Tensor dynamic_voxelize_cpu(const at::Tensor& points, std::vector<double> voxel_size,
                                std::vector<double> range_min, std::vector<int64_t> grid_size) {
  TORCH_CHECK(points.is_contiguous() && points.dim() == 2 && points.size(1) >= 3,
              "dynamic_voxelize: points must be a contiguous (P, F>=3) tensor");
  const int64_t num_points = points.size(0);
  std::vector<int64_t> keys(num_points);
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "dynamic_voxelize_cpu", [&] {
    cell_keys(points.data_ptr<scalar_t>(), num_points, points.size(1), voxel_size, range_min,
              grid_size, keys.data());
  });
  at::Tensor coords = at::empty({num_points, 3}, points.options().dtype(at::kInt));
  int* coord_data = coords.data_ptr<int>();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < num_points; ++i) {
    const int64_t key = keys[i];
    coord_data[3 * i + 0] = key < 0 ? -1 : static_cast<int>(key / (grid_size[0] * grid_size[1]));
    coord_data[3 * i + 1] = key < 0 ? -1 : static_cast<int>((key / grid_size[0]) % grid_size[1]);
    coord_data[3 * i + 2] = key < 0 ? -1 : static_cast<int>(key % grid_size[0]);
  }
  return coords;
}
