// Fused selective state-space scan for the CPU, forward and backward.
//
//   h_t = exp(delta_t * A) h_{t-1} + delta_t * B_t * u_t
//   y_t = C_t . h_t + D * u_t
//
// One pass over the inputs, and neither the decays exp(delta_t * A) nor the
// states (T x N x D_in) are ever written to memory: the work is cut into
// jobs (utterance, block of 16 channels), ATen's thread pool gives each
// thread a range of jobs, and the thread walks the frames once, updating the
// N-states of all its jobs (kept in a small local array) frame by frame.
// The backward recomputes the states instead of storing them (as mamba-ssm
// does on GPU): one forward pass keeps the state at every chunk boundary,
// then, chunk by chunk from the end, the chunk's states are recomputed and
// the gradients run backwards through it. The fused pieces of a Mamba block
// follow (conv_silu_*, scan_fused_*: the convolution with its SiLU, the scan
// with the step's softplus and the gate, in either direction of time), used
// by lobes.nnet.mixers.cpu_scan.mamba_direction. Compiled on first use by
// lobes.nnet.mixers.cpu_scan (torch.utils.cpp_extension); the PyTorch scan
// of lobes.nnet.mixers.mamba is the fallback and the reference it is tested
// against.
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

// One frame of the recurrence for a block of W channels, the states of all
// N state dimensions: h[n] <- exp(delta * A[n]) * h[n] + delta * u * B[n]
// (du = delta * u). h, a: N x W, row n for state dimension n; b: N.
__attribute__((always_inline)) inline void advance_states(
    float* __restrict h, const float* __restrict a, const float* dl,
    const float* du, const float* b, int64_t n_state) {
  for (int64_t n = 0; n < n_state; ++n) {
    const float bn = b[n];
    float* hn = h + n * W;
    const float* an = a + n * W;
#pragma omp simd
    for (int64_t k = 0; k < W; ++k)
      hn[k] = exp_nonpositive(dl[k] * an[k]) * hn[k] + du[k] * bn;
  }
}

// advance_states, and the frame's output read from the new states:
// acc += sum_n C[n] * h[n] (c: N).
__attribute__((always_inline)) inline void advance_states_and_read(
    float* __restrict h, const float* __restrict a, const float* dl,
    const float* du, const float* b, const float* c, float* __restrict acc,
    int64_t n_state) {
  for (int64_t n = 0; n < n_state; ++n) {
    const float bn = b[n], cn = c[n];
    float* hn = h + n * W;
    const float* an = a + n * W;
#pragma omp simd
    for (int64_t k = 0; k < W; ++k) {
      hn[k] = exp_nonpositive(dl[k] * an[k]) * hn[k] + du[k] * bn;
      acc[k] += cn * hn[k];
    }
  }
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
        advance_states_and_read(&h[j * n_state * W], &a_blk[j * n_state * W], dt, du,
                                bt, ct, acc, n_state);
        std::memcpy(yp + row * d_in + d0, acc, w * sizeof(float));
      }
    }
  });
  return y;
}

// Gradients of scan_forward. gy: (batch, T, D_in). Returns gu, gdelta
// (batch, T, D_in), gA (N, D_in), gB, gC (batch, T, N), gD (D_in).
//
// With a_t = exp(delta_t A), b_t = delta_t u_t B_t, h_t = a_t h_{t-1} + b_t
// and y_t = C_t . h_t + D u_t, the gradient g_t of the loss w.r.t. h_t is
// gy_t C_t + a_{t+1} g_{t+1}; then dL/da_t = g_t h_{t-1} and dL/db_t = g_t.
// Each job (utterance, block of W channels) writes its own partial sums of
// gB, gC (over its channels), gA and gD (over its frames) into buffers that
// are summed afterwards: no two threads write the same element.
std::vector<torch::Tensor> scan_backward(torch::Tensor u, torch::Tensor delta,
                                         torch::Tensor A, torch::Tensor B,
                                         torch::Tensor C, torch::Tensor D,
                                         torch::Tensor gy, int64_t chunk) {
  for (const auto& t : {u, delta, A, B, C, D, gy}) {
    TORCH_CHECK(t.scalar_type() == torch::kFloat32 && t.is_contiguous() &&
                    t.device().is_cpu(),
                "the CPU scan takes contiguous float32 CPU tensors");
  }
  TORCH_CHECK(gy.sizes() == u.sizes(), "gy must be (batch, T, D_in)");
  TORCH_CHECK(chunk > 0, "chunk must be positive");
  const int64_t batch = u.size(0), T = u.size(1), d_in = u.size(2),
                n_state = A.size(0);
  const int64_t blocks = (d_in + W - 1) / W;
  const int64_t n_chunks = (T + chunk - 1) / chunk;
  auto gu = torch::empty_like(u);
  auto gdelta = torch::empty_like(delta);
  auto gB_part = torch::zeros({blocks, batch, T, n_state}, u.options());
  auto gC_part = torch::zeros({blocks, batch, T, n_state}, u.options());
  auto gA_part = torch::zeros({batch, n_state, d_in}, u.options());
  auto gD_part = torch::zeros({batch, d_in}, u.options());
  const float* up = u.data_ptr<float>();
  const float* dp = delta.data_ptr<float>();
  const float* ap = A.data_ptr<float>();
  const float* bp = B.data_ptr<float>();
  const float* cp = C.data_ptr<float>();
  const float* skip = D.data_ptr<float>();
  const float* gyp = gy.data_ptr<float>();
  float* gup = gu.data_ptr<float>();
  float* gdp = gdelta.data_ptr<float>();
  float* gbp = gB_part.data_ptr<float>();
  float* gcp = gC_part.data_ptr<float>();
  float* gap = gA_part.data_ptr<float>();
  float* gdd = gD_part.data_ptr<float>();
  const int64_t NW = n_state * W;

  at::parallel_for(0, batch * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> ckpt(n_chunks * NW), hs((chunk + 1) * NW), g(NW),
        a_blk(NW), ga_acc(NW);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t b = job / blocks, blk = job % blocks, d0 = blk * W;
      const int64_t w = std::min(W, d_in - d0);
      std::fill(a_blk.begin(), a_blk.end(), 0.f);
      for (int64_t n = 0; n < n_state; ++n)
        std::memcpy(&a_blk[n * W], ap + n * d_in + d0, w * sizeof(float));
      float dskip[W] = {0.f};
      std::memcpy(dskip, skip + d0, w * sizeof(float));
      auto load = [&](const float* src, int64_t row, float* dst) {
        std::fill(dst, dst + W, 0.f);
        std::memcpy(dst, src + row * d_in + d0, w * sizeof(float));
      };
      // 1. forward pass: the state before each chunk
      std::vector<float> h(NW, 0.f);
      for (int64_t t = 0; t < T; ++t) {
        if (t % chunk == 0)
          std::memcpy(&ckpt[(t / chunk) * NW], h.data(), NW * sizeof(float));
        const int64_t row = b * T + t;
        float dt[W], uu[W], du[W];
        load(dp, row, dt);
        load(up, row, uu);
        for (int64_t k = 0; k < W; ++k) du[k] = dt[k] * uu[k];
        advance_states(h.data(), a_blk.data(), dt, du, bp + row * n_state, n_state);
      }
      // 2. backward, chunk by chunk from the end
      std::fill(g.begin(), g.end(), 0.f);  // a_{t+1} g_{t+1}, carried back
      std::fill(ga_acc.begin(), ga_acc.end(), 0.f);
      float gd_acc[W] = {0.f};
      for (int64_t c = n_chunks - 1; c >= 0; --c) {
        const int64_t t0 = c * chunk, t1 = std::min(T, t0 + chunk);
        std::memcpy(&hs[0], &ckpt[c * NW], NW * sizeof(float));
        for (int64_t t = t0; t < t1; ++t) {  // recompute the chunk's states
          const int64_t row = b * T + t;
          float dt[W], uu[W], du[W];
          load(dp, row, dt);
          load(up, row, uu);
          for (int64_t k = 0; k < W; ++k) du[k] = dt[k] * uu[k];
          const float* bt = bp + row * n_state;
          const float* prev = &hs[(t - t0) * NW];
          float* cur = &hs[(t - t0 + 1) * NW];
          for (int64_t n = 0; n < n_state; ++n) {
            const float bn = bt[n];
            const float* an = &a_blk[n * W];
#pragma omp simd
            for (int64_t k = 0; k < W; ++k)
              cur[n * W + k] =
                  exp_nonpositive(dt[k] * an[k]) * prev[n * W + k] + du[k] * bn;
          }
        }
        for (int64_t t = t1 - 1; t >= t0; --t) {
          const int64_t row = b * T + t;
          float dt[W], uu[W], gyt[W], gdt[W] = {0.f}, gut[W] = {0.f};
          load(dp, row, dt);
          load(up, row, uu);
          load(gyp, row, gyt);
          const float* bt = bp + row * n_state;
          const float* ct = cp + row * n_state;
          const float* prev = &hs[(t - t0) * NW];
          const float* cur = &hs[(t - t0 + 1) * NW];
          float* gbt = gbp + ((blk * batch + b) * T + t) * n_state;
          float* gct = gcp + ((blk * batch + b) * T + t) * n_state;
          for (int64_t n = 0; n < n_state; ++n) {
            const float bn = bt[n], cn = ct[n];
            const float* an = &a_blk[n * W];
            float* gn = &g[n * W];
            float* gan = &ga_acc[n * W];
            float gc = 0.f, gb = 0.f;
#pragma omp simd reduction(+ : gc, gb)
            for (int64_t k = 0; k < W; ++k) {
              gc += gyt[k] * cur[n * W + k];
              const float gh = gn[k] + gyt[k] * cn;  // dL/dh_t
              const float a = exp_nonpositive(dt[k] * an[k]);
              const float gda = gh * prev[n * W + k] * a;  // dL/d(dt A)
              gdt[k] += gda * an[k] + gh * uu[k] * bn;
              gan[k] += gda * dt[k];
              gut[k] += gh * dt[k] * bn;
              gb += gh * dt[k] * uu[k];
              gn[k] = a * gh;  // carried to t - 1
            }
            gct[n] = gc;
            gbt[n] = gb;
          }
          for (int64_t k = 0; k < W; ++k) {
            gut[k] += gyt[k] * dskip[k];
            gd_acc[k] += gyt[k] * uu[k];
          }
          std::memcpy(gup + row * d_in + d0, gut, w * sizeof(float));
          std::memcpy(gdp + row * d_in + d0, gdt, w * sizeof(float));
        }
      }
      for (int64_t n = 0; n < n_state; ++n)
        std::memcpy(gap + (b * n_state + n) * d_in + d0, &ga_acc[n * W],
                    w * sizeof(float));
      std::memcpy(gdd + b * d_in + d0, gd_acc, w * sizeof(float));
    }
  });
  return {gu, gdelta, gA_part.sum(0), gB_part.sum(0), gC_part.sum(0),
          gD_part.sum(0)};
}


// ---------------------------------------------------------------------------
// The fused Mamba block pieces (forward and backward), used by MambaBlock and
// BiMamba on CPU: the causal depthwise convolution with its SiLU, and the
// scan with the softplus of its step (delta = softplus(dt + dt_bias)) and the
// gate (out = y * silu(z)) folded in, as mamba-ssm's fused kernels do on GPU.
// Both run in the order of a direction: forward (t = 0, 1, ..., T-1) or,
// with `reverse`, each utterance reversed within its own length L
// (t = L-1, ..., 0, then its padding L, ..., T-1 in order): the order in
// which BiMamba's backward block sees reverse_within_lengths(x), so that
// nothing is ever reversed in memory. Outputs are stored at the original
// frame indices. Element-wise functions are inlined so that the loops over
// channels vectorise; they equal PyTorch's to float32 rounding.

// The frame at position s of a direction (its own inverse).
inline int64_t frame_at(int64_t s, int64_t len, bool reverse) {
  return (reverse && s < len) ? len - 1 - s : s;
}

// log(1 + w) for 0 <= w <= 1: 2 atanh(s) with s = w / (2 + w) <= 1/3, as
// its odd series (truncation below 2e-9 relative).
inline float log1p_unit(float w) {
  const float s = w / (2.f + w);
  const float s2 = s * s;
  float p = 1.f / 15.f;
  p = p * s2 + 1.f / 13.f;
  p = p * s2 + 1.f / 11.f;
  p = p * s2 + 1.f / 9.f;
  p = p * s2 + 1.f / 7.f;
  p = p * s2 + 1.f / 5.f;
  p = p * s2 + 1.f / 3.f;
  p = p * s2 + 1.f;
  return 2.f * s * p;
}

// PyTorch's softplus (beta 1, threshold 20) and its derivative (sigmoid).
inline float softplus(float v) {
  const float sp = std::max(v, 0.f) + log1p_unit(exp_nonpositive(-std::fabs(v)));
  return v > 20.f ? v : sp;
}
inline float sigmoid(float v) {
  const float w = exp_nonpositive(-std::fabs(v));
  const float num = v >= 0.f ? 1.f : w;  // a select of values: vectorises
  return num / (1.f + w);
}
inline float dsoftplus(float v) {
  const float sg = sigmoid(v);  // computed unconditionally: the loops vectorise
  return v > 20.f ? 1.f : sg;
}

int64_t length_of(const torch::Tensor& lengths, int64_t b, int64_t T) {
  if (lengths.numel() == 0) return T;
  return std::min<int64_t>(std::max<int64_t>(lengths.data_ptr<int64_t>()[b], 0), T);
}

void check_rows(const torch::Tensor& t, int64_t batch, int64_t T, int64_t width,
                const char* name) {
  TORCH_CHECK(t.dim() == 3 && t.size(0) == batch && t.size(1) == T &&
                  t.size(2) == width && t.stride(2) == 1,
              name, " must be (batch, T, ", width, ") with unit inner stride");
  TORCH_CHECK(t.scalar_type() == torch::kFloat32 && t.device().is_cpu(), name,
              " must be a float32 CPU tensor");
}

void check_lengths(const torch::Tensor& lengths, int64_t batch) {
  TORCH_CHECK(lengths.numel() == 0 ||
                  (lengths.dim() == 1 && lengths.size(0) == batch &&
                   lengths.scalar_type() == torch::kInt64 && lengths.is_contiguous()),
              "lengths must be empty or (batch,) int64");
}

// Causal depthwise convolution then SiLU, in the order of a direction:
// uc[t] = silu(bias + sum_j w[:, j] * u[frame(s - (k-1) + j)]), s the
// position of t, taps before the start left out. u: (batch, T, D_in), any
// row stride; w: (D_in, k); bias: (D_in). Returns uc (batch, T, D_in).
torch::Tensor conv_silu_forward(torch::Tensor u, torch::Tensor w, torch::Tensor bias,
                                torch::Tensor lengths, bool reverse) {
  const int64_t batch = u.size(0), T = u.size(1), d_in = u.size(2), k = w.size(1);
  check_rows(u, batch, T, d_in, "u");
  check_lengths(lengths, batch);
  TORCH_CHECK(w.dim() == 2 && w.size(0) == d_in && w.is_contiguous() &&
                  bias.numel() == d_in && bias.is_contiguous(),
              "w must be (D_in, k) and bias (D_in), contiguous");
  auto out = torch::empty({batch, T, d_in}, u.options());
  // taps transposed to (k, D_in) so that the loop over channels is contiguous
  auto wt = w.t().contiguous();
  const float* up = u.data_ptr<float>();
  const float* wp = wt.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t sb = u.stride(0), st = u.stride(1);
  at::parallel_for(0, batch * T, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / T, t = r % T;
      const int64_t len = length_of(lengths, b, T);
      const int64_t s = frame_at(t, len, reverse);
      float* o = op + r * d_in;
      const float* u0 = up + b * sb + t * st;  // tap k-1: the frame itself
      const float* wl = wp + (k - 1) * d_in;
#pragma omp simd
      for (int64_t c = 0; c < d_in; ++c) o[c] = bp[c] + u0[c] * wl[c];
      for (int64_t j = 0; j < k - 1; ++j) {
        const int64_t sj = s - (k - 1) + j;
        if (sj < 0) continue;
        const float* uj = up + b * sb + frame_at(sj, len, reverse) * st;
        const float* wj = wp + j * d_in;
#pragma omp simd
        for (int64_t c = 0; c < d_in; ++c) o[c] += uj[c] * wj[c];
      }
#pragma omp simd
      for (int64_t c = 0; c < d_in; ++c) o[c] = o[c] * sigmoid(o[c]);
    }
  });
  return out;
}

// Gradients of conv_silu_forward: writes gu into `gu` (batch, T, D_in, any
// row stride: a slice of the in-projection's gradient), returns gw (D_in, k)
// and gbias (D_in).
std::vector<torch::Tensor> conv_silu_backward(torch::Tensor u, torch::Tensor w,
                                              torch::Tensor bias, torch::Tensor guc,
                                              torch::Tensor lengths, bool reverse,
                                              torch::Tensor gu) {
  const int64_t batch = u.size(0), T = u.size(1), d_in = u.size(2), k = w.size(1);
  check_rows(u, batch, T, d_in, "u");
  check_rows(gu, batch, T, d_in, "gu");
  check_lengths(lengths, batch);
  TORCH_CHECK(guc.is_contiguous() && guc.sizes() == u.sizes(), "guc must be contiguous");
  auto wt = w.t().contiguous();
  // 1. gpre = guc * silu'(pre), pre recomputed
  auto gpre = torch::empty({batch, T, d_in}, u.options());
  const float* up = u.data_ptr<float>();
  const float* wp = wt.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  const float* gp = guc.data_ptr<float>();
  float* gpp = gpre.data_ptr<float>();
  float* gup = gu.data_ptr<float>();
  const int64_t sb = u.stride(0), st = u.stride(1);
  const int64_t gsb = gu.stride(0), gst = gu.stride(1);
  at::parallel_for(0, batch * T, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> pre(d_in);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / T, t = r % T;
      const int64_t len = length_of(lengths, b, T);
      const int64_t s = frame_at(t, len, reverse);
      const float* u0 = up + b * sb + t * st;
      const float* wl = wp + (k - 1) * d_in;
#pragma omp simd
      for (int64_t c = 0; c < d_in; ++c) pre[c] = bp[c] + u0[c] * wl[c];
      for (int64_t j = 0; j < k - 1; ++j) {
        const int64_t sj = s - (k - 1) + j;
        if (sj < 0) continue;
        const float* uj = up + b * sb + frame_at(sj, len, reverse) * st;
        const float* wj = wp + j * d_in;
#pragma omp simd
        for (int64_t c = 0; c < d_in; ++c) pre[c] += uj[c] * wj[c];
      }
      const float* g = gp + r * d_in;
      float* o = gpp + r * d_in;
#pragma omp simd
      for (int64_t c = 0; c < d_in; ++c) {
        const float sg = sigmoid(pre[c]);
        o[c] = g[c] * sg * (1.f + pre[c] * (1.f - sg));
      }
    }
  });
  // 2. gu[frame(s')] = sum_j w_j gpre[frame(s' + k-1 - j)]; gw, gbias summed
  //    per thread, then over threads
  const int64_t threads = at::get_num_threads();
  auto gw_part = torch::zeros({threads, k + 1, d_in}, u.options());
  float* gwp = gw_part.data_ptr<float>();
  at::parallel_for(0, batch * T, 16, [&](int64_t begin, int64_t end) {
    float* acc = gwp + at::get_thread_num() * (k + 1) * d_in;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / T, t = r % T;
      const int64_t len = length_of(lengths, b, T);
      const int64_t s = frame_at(t, len, reverse);
      float* o = gup + b * gsb + t * gst;
      const float* g0 = gpp + r * d_in;  // its own output: tap k-1
      const float* wl = wp + (k - 1) * d_in;
      const float* u0 = up + b * sb + t * st;
      float* gb = acc + k * d_in;
      float* gwl = acc + (k - 1) * d_in;
#pragma omp simd
      for (int64_t c = 0; c < d_in; ++c) {
        o[c] = g0[c] * wl[c];
        gb[c] += g0[c];
        gwl[c] += g0[c] * u0[c];
      }
      for (int64_t j = 0; j < k - 1; ++j) {
        // the output at position s + (k-1) - j reads this frame through tap j
        const int64_t so = s + (k - 1) - j;
        if (so >= T) continue;
        const int64_t to = frame_at(so, len, reverse);
        const float* go = gpp + (b * T + to) * d_in;
        const float* wj = wp + j * d_in;
        float* gwj = acc + j * d_in;
#pragma omp simd
        for (int64_t c = 0; c < d_in; ++c) {
          o[c] += go[c] * wj[c];
          gwj[c] += go[c] * u0[c];
        }
      }
    }
  });
  auto sums = gw_part.sum(0);  // (k + 1, D_in)
  return {sums.narrow(0, 0, k).t().contiguous(), sums[k].contiguous()};
}

// Loads w <= W floats of row `src` into dst (zeros after them).
inline void load_block(const float* src, int64_t w, float* dst) {
  if (w == W) {
    std::memcpy(dst, src, W * sizeof(float));
  } else {
    std::fill(dst, dst + W, 0.f);
    std::memcpy(dst, src, w * sizeof(float));
  }
}

// The scan with the step's softplus and the gate folded in, in the order of
// a direction:
//   delta_t = softplus(dt_t + dt_bias), h_t = exp(delta_t A) h_prev +
//   delta_t u_t B_t, out_t = (C_t . h_t + D u_t) * silu(z_t),
// h_prev the state of the previous position of the direction.
// u, dt: (batch, T, D_in) contiguous; dt_bias, D: (D_in); A: (N, D_in);
// B, C: (batch, T, N) and z: (batch, T, D_in), any row stride. Returns out
// (batch, T, D_in).
torch::Tensor scan_fused_forward(torch::Tensor u, torch::Tensor dt, torch::Tensor dt_bias,
                                 torch::Tensor A, torch::Tensor B, torch::Tensor C,
                                 torch::Tensor D, torch::Tensor z, torch::Tensor lengths,
                                 bool reverse) {
  const int64_t batch = u.size(0), T = u.size(1), d_in = u.size(2), n_state = A.size(0);
  TORCH_CHECK(u.is_contiguous() && dt.is_contiguous() && dt.sizes() == u.sizes(),
              "u and dt must be contiguous (batch, T, D_in)");
  TORCH_CHECK(A.dim() == 2 && A.size(1) == d_in && A.is_contiguous(), "A must be (N, D_in)");
  TORCH_CHECK(dt_bias.numel() == d_in && D.numel() == d_in && dt_bias.is_contiguous() &&
                  D.is_contiguous(),
              "dt_bias and D must be (D_in)");
  check_rows(B, batch, T, n_state, "B");
  check_rows(C, batch, T, n_state, "C");
  check_rows(z, batch, T, d_in, "z");
  check_lengths(lengths, batch);
  auto out = torch::empty_like(u);
  const float *up = u.data_ptr<float>(), *dp = dt.data_ptr<float>(),
              *biasp = dt_bias.data_ptr<float>(), *ap = A.data_ptr<float>(),
              *bp = B.data_ptr<float>(), *cp = C.data_ptr<float>(),
              *skip = D.data_ptr<float>(), *zp = z.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t bsb = B.stride(0), bst = B.stride(1), csb = C.stride(0), cst = C.stride(1),
                zsb = z.stride(0), zst = z.stride(1);
  const int64_t blocks = (d_in + W - 1) / W;
  at::parallel_for(0, batch * blocks, 1, [&](int64_t begin, int64_t end) {
    const int64_t jobs = end - begin;
    std::vector<float> h(jobs * n_state * W, 0.f), a_blk(jobs * n_state * W, 0.f),
        skip_blk(jobs * W, 0.f), bias_blk(jobs * W, 0.f);
    for (int64_t j = 0; j < jobs; ++j) {
      const int64_t d0 = ((begin + j) % blocks) * W;
      const int64_t w = std::min(W, d_in - d0);
      for (int64_t n = 0; n < n_state; ++n)
        std::memcpy(&a_blk[(j * n_state + n) * W], ap + n * d_in + d0, w * sizeof(float));
      std::memcpy(&skip_blk[j * W], skip + d0, w * sizeof(float));
      std::memcpy(&bias_blk[j * W], biasp + d0, w * sizeof(float));
    }
    for (int64_t s = 0; s < T; ++s) {
      for (int64_t j = 0; j < jobs; ++j) {
        const int64_t job = begin + j;
        const int64_t b = job / blocks, d0 = (job % blocks) * W;
        const int64_t w = std::min(W, d_in - d0);
        const int64_t t = frame_at(s, length_of(lengths, b, T), reverse);
        const int64_t row = b * T + t;
        float dl[W], du[W], acc[W], uu[W], zz[W];
        load_block(dp + row * d_in + d0, w, dl);
        load_block(up + row * d_in + d0, w, uu);
        load_block(zp + b * zsb + t * zst + d0, w, zz);
        const float* bt = bp + b * bsb + t * bst;
        const float* ct = cp + b * csb + t * cst;
        const float* dd = &skip_blk[j * W];
        const float* bb = &bias_blk[j * W];
#pragma omp simd
        for (int64_t k = 0; k < W; ++k) {
          dl[k] = softplus(dl[k] + bb[k]);
          du[k] = dl[k] * uu[k];
          acc[k] = dd[k] * uu[k];
        }
        advance_states_and_read(&h[j * n_state * W], &a_blk[j * n_state * W], dl, du,
                                bt, ct, acc, n_state);
#pragma omp simd
        for (int64_t k = 0; k < W; ++k) acc[k] *= zz[k] * sigmoid(zz[k]);
        std::memcpy(op + row * d_in + d0, acc, w * sizeof(float));
      }
    }
  });
  return out;
}

// The last gradients of a frame of a block: dL/du gets the skip's, dL/dD and
// dL/d(dt_bias) their sums, dL/ddt (before the softplus) the softplus's
// derivative. Apart (not inlined) so that the compiler vectorises it.
__attribute__((noinline)) void step_gradients(
    const float* __restrict gy, const float* __restrict dd, const float* __restrict uu,
    const float* __restrict gdl, const float* __restrict raw, const float* __restrict bias,
    float* __restrict gu, float* __restrict gd_acc, float* __restrict gdt,
    float* __restrict gbias_acc) {
#pragma omp simd
  for (int64_t k = 0; k < W; ++k) {
    gu[k] += gy[k] * dd[k];
    gd_acc[k] += gy[k] * uu[k];
    gdt[k] = gdl[k] * dsoftplus(raw[k] + bias[k]);
    gbias_acc[k] += gdt[k];
  }
}

// Gradients of scan_fused_forward. gout: (batch, T, D_in) contiguous. Writes
// gz into `gz` (any row stride: a slice of the in-projection's gradient).
// Returns gu, gdt (of the pre-softplus step), gdt_bias, gA (N, D_in), gB,
// gC (batch, T, N), gD, and out (the forward's output, recomputed: the
// out-projection's weight gradient needs it).
//
// The work is cut into groups of G channel blocks (G x W = 64 channels) of
// one utterance; a thread walks the frames of a group once forwards, keeping
// the states at chunk boundaries, then chunk by chunk from the end:
// recomputes the chunk's states, decays and steps (kept for the chunk, in
// the L2 cache), then runs the gradients backwards through it. Each frame's
// rows are read as 64-channel stretches, and the sums over channels (gB,
// gC) are reduced once per group and frame.
constexpr int64_t G = 4;
constexpr int64_t AHEAD = 2;  // frames ahead whose rows are prefetched

// Prefetches n floats from p (a group's stretch of a row): the frames of a
// direction are rows D_in floats apart, which the hardware prefetcher,
// confined to a page, does not follow.
inline void prefetch(const float* p, int64_t n, bool write = false) {
  for (int64_t i = 0; i < n; i += 16) {
    if (write)
      __builtin_prefetch(p + i, 1, 3);
    else
      __builtin_prefetch(p + i, 0, 3);
  }
}

std::vector<torch::Tensor> scan_fused_backward(
    torch::Tensor u, torch::Tensor dt, torch::Tensor dt_bias, torch::Tensor A,
    torch::Tensor B, torch::Tensor C, torch::Tensor D, torch::Tensor z,
    torch::Tensor gout, torch::Tensor lengths, bool reverse, int64_t chunk,
    torch::Tensor gz) {
  const int64_t batch = u.size(0), T = u.size(1), d_in = u.size(2), n_state = A.size(0);
  TORCH_CHECK(u.is_contiguous() && dt.is_contiguous() && gout.is_contiguous() &&
                  dt.sizes() == u.sizes() && gout.sizes() == u.sizes(),
              "u, dt and gout must be contiguous (batch, T, D_in)");
  TORCH_CHECK(A.dim() == 2 && A.size(1) == d_in && A.is_contiguous(), "A must be (N, D_in)");
  TORCH_CHECK(dt_bias.numel() == d_in && D.numel() == d_in && dt_bias.is_contiguous() &&
                  D.is_contiguous(),
              "dt_bias and D must be (D_in)");
  check_rows(B, batch, T, n_state, "B");
  check_rows(C, batch, T, n_state, "C");
  check_rows(z, batch, T, d_in, "z");
  check_rows(gz, batch, T, d_in, "gz");
  check_lengths(lengths, batch);
  TORCH_CHECK(chunk > 0, "chunk must be positive");
  const int64_t blocks = (d_in + W - 1) / W;
  const int64_t groups = (blocks + G - 1) / G;  // per utterance
  const int64_t n_chunks = (T + chunk - 1) / chunk;
  const int64_t threads = at::get_num_threads();
  auto gu = torch::empty_like(u);
  auto gdt = torch::empty_like(u);
  auto out = torch::empty_like(u);
  auto gB_part = torch::zeros({threads, batch, T, n_state}, u.options());
  auto gC_part = torch::zeros({threads, batch, T, n_state}, u.options());
  auto gA_part = torch::zeros({batch, n_state, d_in}, u.options());
  auto gD_part = torch::zeros({batch, d_in}, u.options());
  auto gbias_part = torch::zeros({batch, d_in}, u.options());
  const float *up = u.data_ptr<float>(), *dp = dt.data_ptr<float>(),
              *biasp = dt_bias.data_ptr<float>(), *ap = A.data_ptr<float>(),
              *bp = B.data_ptr<float>(), *cp = C.data_ptr<float>(),
              *skip = D.data_ptr<float>(), *zp = z.data_ptr<float>(),
              *gop = gout.data_ptr<float>();
  float *gup = gu.data_ptr<float>(), *gdp = gdt.data_ptr<float>(), *op = out.data_ptr<float>(),
        *gzp = gz.data_ptr<float>(), *gbp_all = gB_part.data_ptr<float>(),
        *gcp_all = gC_part.data_ptr<float>(), *gap = gA_part.data_ptr<float>(),
        *gdd = gD_part.data_ptr<float>(), *gbias = gbias_part.data_ptr<float>();
  const int64_t bsb = B.stride(0), bst = B.stride(1), csb = C.stride(0), cst = C.stride(1),
                zsb = z.stride(0), zst = z.stride(1), gzsb = gz.stride(0), gzst = gz.stride(1);
  const int64_t NW = n_state * W;
  const int64_t GNW = G * NW;

  at::parallel_for(0, batch * groups, 1, [&](int64_t begin, int64_t end) {
    const int64_t tid = at::get_thread_num();
    float* gbp = gbp_all + tid * batch * T * n_state;
    float* gcp = gcp_all + tid * batch * T * n_state;
    // per group: checkpoints, a chunk's states (chunk + 1), decays and steps
    std::vector<float> ckpt(n_chunks * GNW), hs((chunk + 1) * GNW), dec(chunk * GNW),
        steps(chunk * G * W), h(GNW), g(GNW), a_blk(GNW), ga_acc(GNW), skip_blk(G * W),
        bias_blk(G * W), gd_acc(G * W), gbias_acc(G * W), gcv(NW), gbv(NW);
    for (int64_t grp = begin; grp < end; ++grp) {
      const int64_t b = grp / groups, first = (grp % groups) * G;
      const int64_t nj = std::min(G, blocks - first);
      const int64_t len = length_of(lengths, b, T);
      const int64_t span = std::min(nj * W, d_in - first * W);  // the group's channels
      std::fill(a_blk.begin(), a_blk.end(), 0.f);
      std::fill(skip_blk.begin(), skip_blk.end(), 0.f);
      std::fill(bias_blk.begin(), bias_blk.end(), 0.f);
      int64_t d0s[G], ws[G];
      for (int64_t j = 0; j < nj; ++j) {
        d0s[j] = (first + j) * W;
        ws[j] = std::min(W, d_in - d0s[j]);
        for (int64_t n = 0; n < n_state; ++n)
          std::memcpy(&a_blk[j * NW + n * W], ap + n * d_in + d0s[j], ws[j] * sizeof(float));
        std::memcpy(&skip_blk[j * W], skip + d0s[j], ws[j] * sizeof(float));
        std::memcpy(&bias_blk[j * W], biasp + d0s[j], ws[j] * sizeof(float));
      }
      // the step (after softplus) and delta * u of block j at frame row
      auto step = [&](int64_t row, int64_t j, float* dl, float* uu, float* du) {
        load_block(dp + row * d_in + d0s[j], ws[j], dl);
        load_block(up + row * d_in + d0s[j], ws[j], uu);
        const float* bb = &bias_blk[j * W];
#pragma omp simd
        for (int64_t k = 0; k < W; ++k) {
          dl[k] = softplus(dl[k] + bb[k]);
          du[k] = dl[k] * uu[k];
        }
      };
      // 1. forward pass: the states before each chunk
      std::fill(h.begin(), h.end(), 0.f);
      for (int64_t s = 0; s < T; ++s) {
        if (s % chunk == 0) std::memcpy(&ckpt[(s / chunk) * GNW], h.data(), GNW * sizeof(float));
        const int64_t t = frame_at(s, len, reverse);
        const float* bt = bp + b * bsb + t * bst;
        if (s + AHEAD < T) {
          const int64_t ahead = (b * T + frame_at(s + AHEAD, len, reverse)) * d_in + d0s[0];
          prefetch(dp + ahead, span);
          prefetch(up + ahead, span);
        }
        for (int64_t j = 0; j < nj; ++j) {
          float dl[W], uu[W], du[W];
          step(b * T + t, j, dl, uu, du);
          advance_states(&h[j * NW], &a_blk[j * NW], dl, du, bt, n_state);
        }
      }
      // 2. backward, chunk by chunk from the end
      std::fill(g.begin(), g.end(), 0.f);  // a_{s+1} g_{s+1}, carried back
      std::fill(ga_acc.begin(), ga_acc.end(), 0.f);
      std::fill(gd_acc.begin(), gd_acc.end(), 0.f);
      std::fill(gbias_acc.begin(), gbias_acc.end(), 0.f);
      for (int64_t c = n_chunks - 1; c >= 0; --c) {
        const int64_t s0 = c * chunk, s1 = std::min(T, s0 + chunk);
        std::memcpy(&hs[0], &ckpt[c * GNW], GNW * sizeof(float));
        for (int64_t s = s0; s < s1; ++s) {  // the chunk's states, decays, steps
          const int64_t t = frame_at(s, len, reverse);
          const float* bt = bp + b * bsb + t * bst;
          if (s + AHEAD < s1) {
            const int64_t ahead = (b * T + frame_at(s + AHEAD, len, reverse)) * d_in + d0s[0];
            prefetch(dp + ahead, span);
            prefetch(up + ahead, span);
          }
          for (int64_t j = 0; j < nj; ++j) {
            float* dl = &steps[((s - s0) * G + j) * W];
            float uu[W], du[W];
            step(b * T + t, j, dl, uu, du);
            const float* prev = &hs[(s - s0) * GNW + j * NW];
            float* cur = &hs[(s - s0 + 1) * GNW + j * NW];
            float* a = &dec[(s - s0) * GNW + j * NW];
            for (int64_t n = 0; n < n_state; ++n) {
              const float bn = bt[n];
              const float* an = &a_blk[j * NW + n * W];
#pragma omp simd
              for (int64_t k = 0; k < W; ++k) {
                a[n * W + k] = exp_nonpositive(dl[k] * an[k]);
                cur[n * W + k] = a[n * W + k] * prev[n * W + k] + du[k] * bn;
              }
            }
          }
        }
        for (int64_t s = s1 - 1; s >= s0; --s) {
          const int64_t t = frame_at(s, len, reverse);
          const int64_t row = b * T + t;
          const float* bt = bp + b * bsb + t * bst;
          const float* ct = cp + b * csb + t * cst;
          if (s - AHEAD >= s0) {
            const int64_t ta = frame_at(s - AHEAD, len, reverse);
            const int64_t ahead = (b * T + ta) * d_in + d0s[0];
            prefetch(up + ahead, span);
            prefetch(dp + ahead, span);
            prefetch(gop + ahead, span);
            prefetch(zp + b * zsb + ta * zst + d0s[0], span);
            prefetch(gup + ahead, span, true);
            prefetch(gdp + ahead, span, true);
            prefetch(op + ahead, span, true);
            prefetch(gzp + b * gzsb + ta * gzst + d0s[0], span, true);
          }
          std::fill(gcv.begin(), gcv.end(), 0.f);
          std::fill(gbv.begin(), gbv.end(), 0.f);
          for (int64_t j = 0; j < nj; ++j) {
            const int64_t d0 = d0s[j], w = ws[j];
            const float* dl = &steps[((s - s0) * G + j) * W];
            const float* dd = &skip_blk[j * W];
            float uu[W], zz[W], go[W], raw[W], y[W], gy[W], o[W], gzt[W], gdl[W] = {0.f},
                gut[W] = {0.f};
            load_block(up + row * d_in + d0, w, uu);
            load_block(dp + row * d_in + d0, w, raw);
            load_block(zp + b * zsb + t * zst + d0, w, zz);
            load_block(gop + row * d_in + d0, w, go);
            const float* prev = &hs[(s - s0) * GNW + j * NW];
            const float* cur = &hs[(s - s0 + 1) * GNW + j * NW];
            const float* a = &dec[(s - s0) * GNW + j * NW];
            // the output y = C.h + D u, the gate, and their gradients
#pragma omp simd
            for (int64_t k = 0; k < W; ++k) y[k] = dd[k] * uu[k];
            for (int64_t n = 0; n < n_state; ++n) {
              const float cn = ct[n];
#pragma omp simd
              for (int64_t k = 0; k < W; ++k) y[k] += cn * cur[n * W + k];
            }
#pragma omp simd
            for (int64_t k = 0; k < W; ++k) {
              const float sg = sigmoid(zz[k]);
              const float sz = zz[k] * sg;
              o[k] = y[k] * sz;
              gy[k] = go[k] * sz;
              gzt[k] = go[k] * y[k] * sg * (1.f + zz[k] * (1.f - sg));
            }
            std::memcpy(op + row * d_in + d0, o, w * sizeof(float));
            std::memcpy(gzp + b * gzsb + t * gzst + d0, gzt, w * sizeof(float));
            for (int64_t n = 0; n < n_state; ++n) {
              const float bn = bt[n], cn = ct[n];
              const float* an = &a_blk[j * NW + n * W];
              float* gn = &g[j * NW + n * W];
              float* gan = &ga_acc[j * NW + n * W];
              float* gcn = &gcv[n * W];
              float* gbn = &gbv[n * W];
#pragma omp simd
              for (int64_t k = 0; k < W; ++k) {
                gcn[k] += gy[k] * cur[n * W + k];
                const float gh = gn[k] + gy[k] * cn;  // dL/dh_s
                const float gda = gh * prev[n * W + k] * a[n * W + k];  // dL/d(delta A)
                gdl[k] += gda * an[k] + gh * uu[k] * bn;
                gan[k] += gda * dl[k];
                gut[k] += gh * dl[k] * bn;
                gbn[k] += gh * dl[k] * uu[k];
                gn[k] = a[n * W + k] * gh;  // carried to s - 1
              }
            }
            float gdt_raw[W];
            step_gradients(gy, dd, uu, gdl, raw, &bias_blk[j * W], gut, &gd_acc[j * W],
                           gdt_raw, &gbias_acc[j * W]);
            std::memcpy(gup + row * d_in + d0, gut, w * sizeof(float));
            std::memcpy(gdp + row * d_in + d0, gdt_raw, w * sizeof(float));
          }
          // the sums over this group's channels of dL/dC and dL/dB
          float* gct = gcp + row * n_state;
          float* gbt = gbp + row * n_state;
          for (int64_t n = 0; n < n_state; ++n) {
            float gc = 0.f, gb = 0.f;
#pragma omp simd reduction(+ : gc, gb)
            for (int64_t k = 0; k < W; ++k) {
              gc += gcv[n * W + k];
              gb += gbv[n * W + k];
            }
            gct[n] += gc;
            gbt[n] += gb;
          }
        }
      }
      for (int64_t j = 0; j < nj; ++j) {
        for (int64_t n = 0; n < n_state; ++n)
          std::memcpy(gap + (b * n_state + n) * d_in + d0s[j], &ga_acc[j * NW + n * W],
                      ws[j] * sizeof(float));
        std::memcpy(gdd + b * d_in + d0s[j], &gd_acc[j * W], ws[j] * sizeof(float));
        std::memcpy(gbias + b * d_in + d0s[j], &gbias_acc[j * W], ws[j] * sizeof(float));
      }
    }
  });
  return {gu, gdt, gbias_part.sum(0), gA_part.sum(0), gB_part.sum(0), gC_part.sum(0),
          gD_part.sum(0), out};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("scan_forward", &scan_forward,
        "selective scan forward (u, delta, A, B, C, D) -> y, time-major");
  m.def("scan_backward", &scan_backward,
        "selective scan backward (u, delta, A, B, C, D, gy, chunk) -> "
        "(gu, gdelta, gA, gB, gC, gD), recomputing the states");
  m.def("conv_silu_forward", &conv_silu_forward,
        "causal depthwise conv + SiLU in a direction's order (u, w, bias, lengths, "
        "reverse) -> uc");
  m.def("conv_silu_backward", &conv_silu_backward,
        "gradients of conv_silu_forward (u, w, bias, guc, lengths, reverse, gu out) "
        "-> (gw, gbias)");
  m.def("scan_fused_forward", &scan_fused_forward,
        "scan with softplus step and silu gate in a direction's order (u, dt, dt_bias, "
        "A, B, C, D, z, lengths, reverse) -> out");
  m.def("scan_fused_backward", &scan_fused_backward,
        "gradients of scan_fused_forward (..., gout, lengths, reverse, chunk, gz out) -> "
        "(gu, gdt, gdt_bias, gA, gB, gC, gD, out)");
}
