// Softmax attention within small token groups (windows), inference, float32, CPU.
//
//   out[g, i, h, :] = sum_j softmax_j(scale * q[g,i,h]·k[g,j,h] + bias[g % nb, h, i, j]
//                                     + mask[g % nm, h % hm, i, j]) * v[g, j, h, :]
//
// Layouts:
//   qkv   (G, N, 3, H, D) contiguous: the output of the qkv projection viewed per group, read in
//         place (no permute copies)
//   bias  (nb, H, N, N), optional; mask (nm, hm, N or 1, N), optional: any strides, last dim
//         contiguous (stride 0 along the query dim broadcasts a key-padding row)
//   out   (G, N, H, D) contiguous = (G, N, H*D), ready for the output projection.
//
// One task per (group, head), on torch's thread pool: k is transposed into a (D, N) tile and v
// copied into an (N, D) tile in thread-local buffers, then every query row is one pass: the
// logits as D vector FMAs over the keys, bias and mask added, max, exp, sum, and the output as N
// vector FMAs over the channels. Nothing of size N×N is ever stored. The loops are plain C++ for
// the compiler's vectoriser, compiled for x86-64-v4 (AVX-512) and x86-64-v3 (AVX2+FMA) as well as
// the baseline ISA and picked at load time; exp is a Cephes-style polynomial (about 1 ulp) that
// vectorises, instead of the libm call that does not.
#include "group_attn_cpu.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace crossformer_mm {
namespace {

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(MSDA_NO_CLONES)
#define GA_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define GA_CLONES
#endif

// 16 floats; GCC's vector extension: one AVX-512 register in the x86-64-v4 clone, two AVX2
// registers or four SSE registers in the others.
typedef float vec16 __attribute__((vector_size(64)));

inline vec16 load16(const float* ptr) {
  vec16 v;
  std::memcpy(&v, ptr, sizeof(v));
  return v;
}

inline void store16(float* ptr, vec16 v) { std::memcpy(ptr, &v, sizeof(v)); }

// exp(x) for x <= 0 (the max is subtracted first); about 1 ulp on [-87, 0], 0 below.
inline float exp_nonpositive(float x) {
  const float kLog2e = 1.44269504088896341f;
  const float kLn2Hi = 0.693359375f;
  const float kLn2Lo = -2.12194440e-4f;
  x = x < -87.0f ? -87.0f : x;  // also maps -inf (padding lanes) to a finite input
  // round to nearest by adding and removing 1.5 * 2^23 (exact for |x * log2e| < 2^22): plain
  // arithmetic that vectorises, where nearbyintf may stay a libm call
  const float kRound = 12582912.0f;
  const float n = (x * kLog2e + kRound) - kRound;
  float r = x - n * kLn2Hi;
  r = r - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  return p * two_n;
}

struct Strides4 {
  const float* data = nullptr;
  int64_t s0 = 0, s1 = 0, s2 = 0, n0 = 1, n1 = 1;
};

Strides4 view4(const c10::optional<at::Tensor>& t) {
  Strides4 v;
  if (!t.has_value() || !t->defined()) return v;
  v.data = t->data_ptr<float>();
  v.s0 = t->stride(0);
  v.s1 = t->stride(1);
  v.s2 = t->size(2) == 1 ? 0 : t->stride(2);
  v.n0 = t->size(0);
  v.n1 = t->size(1);
  return v;
}

struct Problem {
  const float* qkv;
  float* out;
  int64_t N, H, D, Np, Dp;
  float scale;
  Strides4 bias, mask;
};

constexpr int64_t kKeyBlock = 64;  // keys per register block of the logits (4 AVX-512 vectors)
constexpr int64_t kChanBlock = 32;  // channels per register block of the output
constexpr int64_t kRows = 4;       // query rows per output block (independent FMA chains)
constexpr int64_t kLanes = 16;     // lane partials of the softmax's max and sum

// probs (N, Np): logits of every query, then their softmax in place.
inline void scores(const Problem& p, const float* base, const float* __restrict__ ktp,
                   const float* brow, const float* mrow, float* __restrict__ probs) {
  const int64_t N = p.N, D = p.D, Np = p.Np, tok_stride = 3 * p.H * p.D;
  for (int64_t i = 0; i < N; ++i) {
    const float* qi = base + i * tok_stride;
    float* __restrict__ s = probs + i * Np;
    for (int64_t jb = 0; jb < Np; jb += kKeyBlock) {
      // four 16-lane accumulators held in registers across the channel loop
      vec16 a0 = {}, a1 = {}, a2 = {}, a3 = {};
      for (int64_t d = 0; d < D; ++d) {
        const float qd = qi[d] * p.scale;
        const float* kd = ktp + d * Np + jb;
        a0 += qd * load16(kd);
        a1 += qd * load16(kd + 16);
        a2 += qd * load16(kd + 32);
        a3 += qd * load16(kd + 48);
      }
      store16(s + jb, a0);
      store16(s + jb + 16, a1);
      store16(s + jb + 32, a2);
      store16(s + jb + 48, a3);
    }
    if (brow) {
      const float* __restrict__ b = brow + i * p.bias.s2;
      for (int64_t j = 0; j < N; ++j) s[j] += b[j];
    }
    if (mrow) {
      const float* __restrict__ m = mrow + i * p.mask.s2;
      for (int64_t j = 0; j < N; ++j) s[j] += m[j];
    }
    // softmax over the Np lanes (padding lanes -inf, then 0): element-wise lane partials
    // instead of scalar reductions, which the compiler may not vectorise (float order)
    for (int64_t j = N; j < Np; ++j) s[j] = -std::numeric_limits<float>::infinity();
    float lane[kLanes];
    for (int64_t t = 0; t < kLanes; ++t) lane[t] = s[t];
    for (int64_t jb = kLanes; jb < Np; jb += kLanes) {
      for (int64_t t = 0; t < kLanes; ++t) lane[t] = lane[t] > s[jb + t] ? lane[t] : s[jb + t];
    }
    float mx = lane[0];
    for (int64_t t = 1; t < kLanes; ++t) mx = mx > lane[t] ? mx : lane[t];
    for (int64_t j = 0; j < Np; ++j) s[j] = exp_nonpositive(s[j] - mx);
    for (int64_t j = N; j < Np; ++j) s[j] = 0.0f;
    for (int64_t t = 0; t < kLanes; ++t) lane[t] = 0.0f;
    for (int64_t jb = 0; jb < Np; jb += kLanes) {
      for (int64_t t = 0; t < kLanes; ++t) lane[t] += s[jb + t];
    }
    float sum = 0.0f;
    for (int64_t t = 0; t < kLanes; ++t) sum += lane[t];
    const float inv = 1.0f / sum;
    for (int64_t j = 0; j < N; ++j) s[j] *= inv;
  }
}

// out rows i0 .. i0+R-1 of one (group, head) = probs · v; R rows at once give 2R independent
// register accumulators per 32-channel block.
template <int64_t R>
inline void weighted_sum(const Problem& p, const float* __restrict__ probs,
                         const float* __restrict__ vtp, int64_t i0, float* out_base) {
  const int64_t N = p.N, Np = p.Np, Dp = p.Dp, row_stride = p.H * p.D;
  for (int64_t db = 0; db < Dp; db += kChanBlock) {
    vec16 lo[R] = {}, hi[R] = {};
    for (int64_t j = 0; j < N; ++j) {
      const vec16 v_lo = load16(vtp + j * Dp + db), v_hi = load16(vtp + j * Dp + db + 16);
      for (int64_t r = 0; r < R; ++r) {
        const float pr = probs[(i0 + r) * Np + j];
        lo[r] += pr * v_lo;
        hi[r] += pr * v_hi;
      }
    }
    const int64_t width = std::min(kChanBlock, p.D - db);
    for (int64_t r = 0; r < R; ++r) {
      float tmp[kChanBlock];
      store16(tmp, lo[r]);
      store16(tmp + 16, hi[r]);
      std::memcpy(out_base + (i0 + r) * row_stride + db, tmp, sizeof(float) * width);
    }
  }
}

GA_CLONES void attend_range(const Problem& p, int64_t begin, int64_t end) {
  const int64_t N = p.N, H = p.H, D = p.D, Np = p.Np, Dp = p.Dp;
  const int64_t tok_stride = 3 * H * D;
  // zero padding: keys N..Np of kt and channels D..Dp of vt stay 0
  std::vector<float> kt(static_cast<size_t>(D * Np), 0.0f), vt(static_cast<size_t>(N * Dp), 0.0f);
  std::vector<float> probs(static_cast<size_t>(N * Np));
  float* __restrict__ ktp = kt.data();
  float* __restrict__ vtp = vt.data();
  for (int64_t task = begin; task < end; ++task) {
    const int64_t g = task / H, h = task % H;
    const float* base = p.qkv + g * N * tok_stride + h * D;
    for (int64_t j = 0; j < N; ++j) {
      const float* kj = base + j * tok_stride + H * D;
      const float* vj = kj + H * D;
      for (int64_t d = 0; d < D; ++d) ktp[d * Np + j] = kj[d];
      std::memcpy(vtp + j * Dp, vj, sizeof(float) * D);
    }
    const float* brow = p.bias.data ? p.bias.data + (g % p.bias.n0) * p.bias.s0 +
                                          (h % p.bias.n1) * p.bias.s1 : nullptr;
    const float* mrow = p.mask.data ? p.mask.data + (g % p.mask.n0) * p.mask.s0 +
                                          (h % p.mask.n1) * p.mask.s1 : nullptr;
    scores(p, base, ktp, brow, mrow, probs.data());
    float* out_base = p.out + g * N * H * D + h * D;
    int64_t i = 0;
    for (; i + kRows <= N; i += kRows) weighted_sum<kRows>(p, probs.data(), vtp, i, out_base);
    for (; i < N; ++i) weighted_sum<1>(p, probs.data(), vtp, i, out_base);
  }
}

void check_extra(const c10::optional<at::Tensor>& t, const char* name, int64_t N, int64_t H) {
  if (!t.has_value() || !t->defined()) return;
  TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat, name,
              " must be a float32 CPU tensor, got ", t->toString());
  TORCH_CHECK(t->dim() == 4 && t->size(3) == N && (t->size(2) == N || t->size(2) == 1) &&
                  (t->size(1) == H || t->size(1) == 1) && (N == 1 || t->stride(3) == 1),
              name, " must be (n, heads|1, N|1, N) with a contiguous last dim, got ",
              t->sizes(), " with strides ", t->strides());
}

}  // namespace

at::Tensor group_attention_forward_cpu(const at::Tensor& qkv,
                                       const c10::optional<at::Tensor>& bias,
                                       const c10::optional<at::Tensor>& mask, double scale) {
  TORCH_CHECK(qkv.device().is_cpu() && qkv.scalar_type() == at::kFloat,
              "qkv must be a float32 CPU tensor, got ", qkv.toString());
  TORCH_CHECK(qkv.dim() == 5 && qkv.size(2) == 3 && qkv.is_contiguous(),
              "qkv must be a contiguous (groups, N, 3, heads, head_dim) tensor, got ",
              qkv.sizes());
  const int64_t G = qkv.size(0), N = qkv.size(1), H = qkv.size(3), D = qkv.size(4);
  check_extra(bias, "bias", N, H);
  check_extra(mask, "mask", N, H);
  at::Tensor out = at::empty({G, N, H, D}, qkv.options());
  if (G == 0 || N == 0 || D == 0) return out;
  Problem p{qkv.data_ptr<float>(), out.data_ptr<float>(), N, H, D,
            (N + kKeyBlock - 1) / kKeyBlock * kKeyBlock,
            (D + kChanBlock - 1) / kChanBlock * kChanBlock, static_cast<float>(scale),
            view4(bias), view4(mask)};
  // a few tasks per thread-pool slot; each task is one (group, head)
  const int64_t tasks = G * H;
  const int64_t grain =
      std::max<int64_t>(1, std::min<int64_t>(64, tasks / (8 * at::get_num_threads())));
  at::parallel_for(0, tasks, grain, [&](int64_t b, int64_t e) { attend_range(p, b, e); });
  return out;
}

}  // namespace crossformer_mm
