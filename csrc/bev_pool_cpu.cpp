// BEV pooling on the CPU (docs/architecture.md#bev-pooling). OpenMP over intervals (forward) and over feature rows
// (backward); the inner loops run over channels and vectorise. Every output row is written by one
// thread only, so no atomics are needed.
#include <omp.h>

#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include "ops.h"

namespace {

// out[ranks_bev[start], :] = sum over the interval of depth[ranks_depth[i]] * feat[ranks_feat[i], :]
template <typename scalar_t>
void pool_intervals(const scalar_t* depth, const scalar_t* feat, const int* ranks_depth,
                    const int* ranks_feat, const int* ranks_bev, const int* interval_starts,
                    const int* interval_lengths, int64_t num_intervals, int64_t channels,
                    scalar_t* out) {
#pragma omp parallel for schedule(dynamic, 64)
  for (int64_t k = 0; k < num_intervals; ++k) {
    const int64_t start = interval_starts[k];
    const int64_t end = start + interval_lengths[k];
    scalar_t* cell = out + static_cast<int64_t>(ranks_bev[start]) * channels;
    for (int64_t i = start; i < end; ++i) {
      const scalar_t weight = depth[ranks_depth[i]];
      const scalar_t* row = feat + static_cast<int64_t>(ranks_feat[i]) * channels;
#pragma omp simd
      for (int64_t c = 0; c < channels; ++c) cell[c] += weight * row[c];
    }
  }
}

// depth_grad[ranks_depth[i]] = <out_grad[ranks_bev[i], :], feat[ranks_feat[i], :]>
template <typename scalar_t>
void depth_grad_by_interval(const scalar_t* out_grad, const scalar_t* feat, const int* ranks_depth,
                            const int* ranks_feat, const int* ranks_bev, const int* interval_starts,
                            const int* interval_lengths, int64_t num_intervals, int64_t channels,
                            scalar_t* depth_grad) {
#pragma omp parallel for schedule(dynamic, 64)
  for (int64_t k = 0; k < num_intervals; ++k) {
    const int64_t start = interval_starts[k];
    const int64_t end = start + interval_lengths[k];
    const scalar_t* cell_grad = out_grad + static_cast<int64_t>(ranks_bev[start]) * channels;
    for (int64_t i = start; i < end; ++i) {
      const scalar_t* row = feat + static_cast<int64_t>(ranks_feat[i]) * channels;
      scalar_t dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t c = 0; c < channels; ++c) dot += cell_grad[c] * row[c];
      depth_grad[ranks_depth[i]] = dot;
    }
  }
}

// feat_grad[r, :] = sum over the points i with ranks_feat[i] == r of depth[ranks_depth[i]] * out_grad[ranks_bev[i], :]
// The points are regrouped by ranks_feat with a counting sort so that each row has one writer.
template <typename scalar_t>
void feat_grad_by_row(const scalar_t* out_grad, const scalar_t* depth, const int* ranks_depth,
                      const int* ranks_feat, const int* ranks_bev, int64_t num_points,
                      int64_t num_rows, int64_t channels, scalar_t* feat_grad) {
  std::vector<int64_t> row_begin(num_rows + 1, 0);  // points of row r: by_row[row_begin[r] : row_begin[r + 1]]
  for (int64_t i = 0; i < num_points; ++i) ++row_begin[ranks_feat[i] + 1];
  for (int64_t r = 0; r < num_rows; ++r) row_begin[r + 1] += row_begin[r];
  std::vector<int64_t> next_slot(row_begin.begin(), row_begin.end() - 1);
  std::vector<int> by_row(num_points);
  for (int64_t i = 0; i < num_points; ++i) by_row[next_slot[ranks_feat[i]]++] = static_cast<int>(i);

#pragma omp parallel for schedule(dynamic, 64)
  for (int64_t r = 0; r < num_rows; ++r) {
    scalar_t* row_grad = feat_grad + r * channels;
    for (int64_t j = row_begin[r]; j < row_begin[r + 1]; ++j) {
      const int i = by_row[j];
      const scalar_t weight = depth[ranks_depth[i]];
      const scalar_t* cell_grad = out_grad + static_cast<int64_t>(ranks_bev[i]) * channels;
#pragma omp simd
      for (int64_t c = 0; c < channels; ++c) row_grad[c] += weight * cell_grad[c];
    }
  }
}

}  // namespace

at::Tensor bev_pool_forward_cpu(const at::Tensor& depth, const at::Tensor& feat,
                                const at::Tensor& ranks_depth, const at::Tensor& ranks_feat,
                                const at::Tensor& ranks_bev, const at::Tensor& interval_starts,
                                const at::Tensor& interval_lengths, int64_t num_cells) {
  TORCH_CHECK(depth.is_contiguous() && feat.is_contiguous(), "bev_pool: depth and feat must be contiguous");
  const int64_t channels = feat.size(-1);
  at::Tensor out = at::zeros({num_cells, channels}, feat.options());
  AT_DISPATCH_FLOATING_TYPES(feat.scalar_type(), "bev_pool_forward_cpu", [&] {
    pool_intervals<scalar_t>(depth.data_ptr<scalar_t>(), feat.data_ptr<scalar_t>(),
                             ranks_depth.data_ptr<int>(), ranks_feat.data_ptr<int>(),
                             ranks_bev.data_ptr<int>(), interval_starts.data_ptr<int>(),
                             interval_lengths.data_ptr<int>(), interval_starts.numel(), channels,
                             out.data_ptr<scalar_t>());
  });
  return out;
}

std::vector<at::Tensor> bev_pool_backward_cpu(const at::Tensor& out_grad, const at::Tensor& depth,
                                              const at::Tensor& feat, const at::Tensor& ranks_depth,
                                              const at::Tensor& ranks_feat, const at::Tensor& ranks_bev,
                                              const at::Tensor& interval_starts,
                                              const at::Tensor& interval_lengths) {
  TORCH_CHECK(out_grad.is_contiguous(), "bev_pool: out_grad must be contiguous");
  const int64_t channels = feat.size(-1);
  at::Tensor depth_grad = at::zeros_like(depth);
  at::Tensor feat_grad = at::zeros_like(feat);
  AT_DISPATCH_FLOATING_TYPES(feat.scalar_type(), "bev_pool_backward_cpu", [&] {
    depth_grad_by_interval<scalar_t>(out_grad.data_ptr<scalar_t>(), feat.data_ptr<scalar_t>(),
                                     ranks_depth.data_ptr<int>(), ranks_feat.data_ptr<int>(),
                                     ranks_bev.data_ptr<int>(), interval_starts.data_ptr<int>(),
                                     interval_lengths.data_ptr<int>(), interval_starts.numel(),
                                     channels, depth_grad.data_ptr<scalar_t>());
    feat_grad_by_row<scalar_t>(out_grad.data_ptr<scalar_t>(), depth.data_ptr<scalar_t>(),
                               ranks_depth.data_ptr<int>(), ranks_feat.data_ptr<int>(),
                               ranks_bev.data_ptr<int>(), ranks_feat.numel(),
                               feat.numel() / channels, channels, feat_grad.data_ptr<scalar_t>());
  });
  return {depth_grad, feat_grad};
}
