// Fused selective state-space scan for the CPU (forward only, no autograd).
//
//   h_t = exp(delta_t * A) h_{t-1} + delta_t * B_t * u_t
//   y_t = C_t . h_t + D * u_t
//
// One pass over the inputs, and neither the decays exp(delta_t * A) nor the
// states (T x N x D_in) are ever written to memory: the work is cut into
// jobs (utterance, block of 16 channels), ATen's thread pool gives each
// thread a range of jobs, and the thread walks the frames once, updating the
// N-states of all its jobs (kept in a small local array) frame by frame. Compiled on first use by lobes.nnet.mixers.mamba
// (torch.utils.cpp_extension); the PyTorch scan there is the fallback and
// the reference it is tested against.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t W = 16;  // channels per job (one AVX-512 register)

// exp(x) for x <= 0 (the decays: delta > 0 after softplus, A = -exp(A_log)
// < 0), inlined so that the loop over channels vectorises: x * log2(e) =
// n + f with n an integer and |f| <= 1/2, 2^f by Cephes' exp2f polynomial
// (relative error ~2e-7, float32 rounding), 2^n written into the exponent
// bits. Below 2^-126 it gives 0 (n = -127 makes the exponent bits 0) where
// expf gives a subnormal: the state it scales then keeps ~1e-38 of its value.
inline float exp_nonpositive(float x) {
  const float z = std::max(x * 1.44269504088896341f, -127.f);
  const float n = std::nearbyint(z);
  const float f = z - n;
  float p = 1.535336188319500e-4f;
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(float));
  return p * scale;
}

// u, delta: (batch, T, D_in); A: (N, D_in); B, C: (batch, T, N); D: (D_in).
// All float32 and contiguous. Returns y (batch, T, D_in).
torch::Tensor scan_forward(torch::Tensor u, torch::Tensor delta,
                           torch::Tensor A, torch::Tensor B, torch::Tensor C,
                           torch::Tensor D) {
  TORCH_CHECK(u.dim() == 3 && delta.sizes() == u.sizes(),
              "u and delta must be (batch, T, D_in)");
  TORCH_CHECK(A.dim() == 2 && A.size(1) == u.size(2), "A must be (N, D_in)");
  TORCH_CHECK(B.dim() == 3 && B.size(0) == u.size(0) &&
                  B.size(1) == u.size(1) && B.size(2) == A.size(0) &&
                  C.sizes() == B.sizes(),
              "B and C must be (batch, T, N)");
  TORCH_CHECK(D.dim() == 1 && D.size(0) == u.size(2), "D must be (D_in)");
  for (const auto& t : {u, delta, A, B, C, D}) {
    TORCH_CHECK(t.scalar_type() == torch::kFloat32 && t.is_contiguous() &&
                    t.device().is_cpu(),
                "the CPU scan takes contiguous float32 CPU tensors");
  }
  const int64_t batch = u.size(0), T = u.size(1), d_in = u.size(2),
                n_state = A.size(0);
  auto y = torch::empty_like(u);
  const float* up = u.data_ptr<float>();
  const float* dp = delta.data_ptr<float>();
  const float* ap = A.data_ptr<float>();
  const float* bp = B.data_ptr<float>();
  const float* cp = C.data_ptr<float>();
  const float* skip = D.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t blocks = (d_in + W - 1) / W;

  // Each thread takes a range of jobs (utterance, block of W channels) and
  // walks the frames once for all of them: frame by frame it reads a
  // contiguous stretch of each row (the hardware prefetcher follows), and
  // the states of its jobs (jobs x N x W floats) stay in the L1/L2 cache.
  at::parallel_for(0, batch * blocks, 1, [&](int64_t begin, int64_t end) {
    const int64_t jobs = end - begin;
    std::vector<float> h(jobs * n_state * W, 0.f), a_blk(jobs * n_state * W, 0.f),
        skip_blk(jobs * W, 0.f);
    for (int64_t j = 0; j < jobs; ++j) {
      const int64_t d0 = ((begin + j) % blocks) * W;
      const int64_t w = std::min(W, d_in - d0);
      for (int64_t n = 0; n < n_state; ++n)
        std::memcpy(&a_blk[(j * n_state + n) * W], ap + n * d_in + d0,
                    w * sizeof(float));
      std::memcpy(&skip_blk[j * W], skip + d0, w * sizeof(float));
    }
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t j = 0; j < jobs; ++j) {
        const int64_t job = begin + j;
        const int64_t b = job / blocks, d0 = (job % blocks) * W;
        const int64_t w = std::min(W, d_in - d0);
        const int64_t row = b * T + t;
        float dt[W], du[W], acc[W], uu[W];
        if (w == W) {
          std::memcpy(dt, dp + row * d_in + d0, W * sizeof(float));
          std::memcpy(uu, up + row * d_in + d0, W * sizeof(float));
        } else {
          std::fill(dt, dt + W, 0.f);
          std::fill(uu, uu + W, 0.f);
          std::memcpy(dt, dp + row * d_in + d0, w * sizeof(float));
          std::memcpy(uu, up + row * d_in + d0, w * sizeof(float));
        }
        const float* bt = bp + row * n_state;
        const float* ct = cp + row * n_state;
        const float* dd = &skip_blk[j * W];
#pragma omp simd
        for (int64_t k = 0; k < W; ++k) {
          du[k] = dt[k] * uu[k];
          acc[k] = dd[k] * uu[k];
        }
        float* hj = &h[j * n_state * W];
        const float* aj = &a_blk[j * n_state * W];
        for (int64_t n = 0; n < n_state; ++n) {
          const float bn = bt[n], cn = ct[n];
          float* hn = hj + n * W;
          const float* an = aj + n * W;
#pragma omp simd
          for (int64_t k = 0; k < W; ++k) {
            hn[k] = exp_nonpositive(dt[k] * an[k]) * hn[k] + du[k] * bn;
            acc[k] += cn * hn[k];
          }
        }
        std::memcpy(yp + row * d_in + d0, acc, w * sizeof(float));
      }
    }
  });
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("scan_forward", &scan_forward,
        "selective scan forward (u, delta, A, B, C, D) -> y, time-major");
}
