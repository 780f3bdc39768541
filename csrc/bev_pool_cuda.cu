// BEV pooling on the GPU (docs/architecture.md#bev-pooling). One thread per (interval, channel) in the forward and per
// (feature row, channel) in the feature backward, so every output element has a single writer and
// no atomics are used; threads of a warp read consecutive channels of one feature row.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <tuple>

#include <ATen/Dispatch.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/unique_consecutive.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include "ops.h"

namespace {

constexpr int kThreads = 256;

int64_t blocks_for(int64_t num_threads) { return (num_threads + kThreads - 1) / kThreads; }

// out[ranks_bev[start], c] = sum over the interval of depth[ranks_depth[i]] * feat[ranks_feat[i], c]
template <typename scalar_t>
__global__ void pool_intervals_kernel(const scalar_t* __restrict__ depth, const scalar_t* __restrict__ feat,
                                      const int* __restrict__ ranks_depth, const int* __restrict__ ranks_feat,
                                      const int* __restrict__ ranks_bev, const int* __restrict__ interval_starts,
                                      const int* __restrict__ interval_lengths, int64_t num_intervals,
                                      int64_t channels, scalar_t* __restrict__ out) {
  const int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (index >= num_intervals * channels) return;
  const int64_t k = index / channels;
  const int64_t c = index % channels;
  const int64_t start = interval_starts[k];
  const int64_t end = start + interval_lengths[k];
  scalar_t sum = 0;
  for (int64_t i = start; i < end; ++i)
    sum += depth[ranks_depth[i]] * feat[static_cast<int64_t>(ranks_feat[i]) * channels + c];
  out[static_cast<int64_t>(ranks_bev[start]) * channels + c] = sum;
}

// depth_grad[ranks_depth[i]] = <out_grad[ranks_bev[i], :], feat[ranks_feat[i], :]>, one thread per point
template <typename scalar_t>
__global__ void depth_grad_kernel(const scalar_t* __restrict__ out_grad, const scalar_t* __restrict__ feat,
                                  const int* __restrict__ ranks_depth, const int* __restrict__ ranks_feat,
                                  const int* __restrict__ ranks_bev, int64_t num_points, int64_t channels,
                                  scalar_t* __restrict__ depth_grad) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= num_points) return;
  const scalar_t* cell_grad = out_grad + static_cast<int64_t>(ranks_bev[i]) * channels;
  const scalar_t* row = feat + static_cast<int64_t>(ranks_feat[i]) * channels;
  scalar_t dot = 0;
  for (int64_t c = 0; c < channels; ++c) dot += cell_grad[c] * row[c];
  depth_grad[ranks_depth[i]] = dot;
}

// feat_grad[row, c] = sum over the row's points of depth[ranks_depth[i]] * out_grad[ranks_bev[i], c].
// The points of group g are by_row[group_begin[g] : group_begin[g] + group_size[g]], all with
// ranks_feat == group_row[g].
template <typename scalar_t>
__global__ void feat_grad_kernel(const scalar_t* __restrict__ out_grad, const scalar_t* __restrict__ depth,
                                 const int* __restrict__ ranks_depth, const int* __restrict__ ranks_bev,
                                 const int64_t* __restrict__ by_row, const int* __restrict__ group_row,
                                 const int64_t* __restrict__ group_begin, const int64_t* __restrict__ group_size,
                                 int64_t num_groups, int64_t channels, scalar_t* __restrict__ feat_grad) {
  const int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (index >= num_groups * channels) return;
  const int64_t g = index / channels;
  const int64_t c = index % channels;
  const int64_t begin = group_begin[g];
  const int64_t end = begin + group_size[g];
  scalar_t sum = 0;
  for (int64_t j = begin; j < end; ++j) {
    const int64_t i = by_row[j];
    sum += depth[ranks_depth[i]] * out_grad[static_cast<int64_t>(ranks_bev[i]) * channels + c];
  }
  feat_grad[static_cast<int64_t>(group_row[g]) * channels + c] = sum;
}

}  // namespace

at::Tensor bev_pool_forward_cuda(const at::Tensor& depth, const at::Tensor& feat,
                                 const at::Tensor& ranks_depth, const at::Tensor& ranks_feat,
                                 const at::Tensor& ranks_bev, const at::Tensor& interval_starts,
                                 const at::Tensor& interval_lengths, int64_t num_cells) {
  TORCH_CHECK(depth.is_contiguous() && feat.is_contiguous(), "bev_pool: depth and feat must be contiguous");
  const c10::cuda::CUDAGuard device_guard(feat.device());
  const int64_t channels = feat.size(-1);
  const int64_t num_intervals = interval_starts.numel();
  at::Tensor out = at::zeros({num_cells, channels}, feat.options());
  if (num_intervals == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(feat.scalar_type(), "bev_pool_forward_cuda", [&] {
    pool_intervals_kernel<scalar_t><<<blocks_for(num_intervals * channels), kThreads, 0,
                                      c10::cuda::getCurrentCUDAStream()>>>(
        depth.data_ptr<scalar_t>(), feat.data_ptr<scalar_t>(), ranks_depth.data_ptr<int>(),
        ranks_feat.data_ptr<int>(), ranks_bev.data_ptr<int>(), interval_starts.data_ptr<int>(),
        interval_lengths.data_ptr<int>(), num_intervals, channels, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::vector<at::Tensor> bev_pool_backward_cuda(const at::Tensor& out_grad, const at::Tensor& depth,
                                               const at::Tensor& feat, const at::Tensor& ranks_depth,
                                               const at::Tensor& ranks_feat, const at::Tensor& ranks_bev,
                                               const at::Tensor& interval_starts,
                                               const at::Tensor& interval_lengths) {
  TORCH_CHECK(out_grad.is_contiguous(), "bev_pool: out_grad must be contiguous");
  const c10::cuda::CUDAGuard device_guard(feat.device());
  const int64_t channels = feat.size(-1);
  const int64_t num_points = ranks_depth.numel();
  at::Tensor depth_grad = at::zeros_like(depth);
  at::Tensor feat_grad = at::zeros_like(feat);
  if (num_points == 0) return {depth_grad, feat_grad};

  // Regroup the points by feature row: a stable sort by ranks_feat, then runs of equal rows.
  at::Tensor sorted_rows, by_row;
  std::tie(sorted_rows, by_row) = at::sort(ranks_feat, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  at::Tensor group_row, group_size;
  std::tie(group_row, std::ignore, group_size) =
      at::unique_consecutive(sorted_rows, /*return_inverse=*/false, /*return_counts=*/true);
  const at::Tensor group_begin = at::cumsum(group_size, 0).sub(group_size);
  const int64_t num_groups = group_row.numel();

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(feat.scalar_type(), "bev_pool_backward_cuda", [&] {
    depth_grad_kernel<scalar_t><<<blocks_for(num_points), kThreads, 0, stream>>>(
        out_grad.data_ptr<scalar_t>(), feat.data_ptr<scalar_t>(), ranks_depth.data_ptr<int>(),
        ranks_feat.data_ptr<int>(), ranks_bev.data_ptr<int>(), num_points, channels,
        depth_grad.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    feat_grad_kernel<scalar_t><<<blocks_for(num_groups * channels), kThreads, 0, stream>>>(
        out_grad.data_ptr<scalar_t>(), depth.data_ptr<scalar_t>(), ranks_depth.data_ptr<int>(),
        ranks_bev.data_ptr<int>(), by_row.data_ptr<int64_t>(), group_row.data_ptr<int>(),
        group_begin.data_ptr<int64_t>(), group_size.data_ptr<int64_t>(), num_groups, channels,
        feat_grad.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {depth_grad, feat_grad};
}
