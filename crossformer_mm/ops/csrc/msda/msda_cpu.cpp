// Multi-scale deformable attention (Deformable DETR, Zhu et al., ICLR 2021): CPU kernels.
//
// Semantics follow mmcv's ms_deform_attn (bilinear sampling, zero padding, align_corners=False:
// pixel = loc * size - 0.5). Layouts (all contiguous, checked by the caller and again here):
//   value              (B, S, NH, D)            S = sum_l H_l * W_l
//   spatial_shapes     (L, 2) int64             (H, W) per level
//   level_start_index  (L,)   int64
//   sampling_locations (B, Q, NH, L, P, 2)      (x, y) normalised, opmath dtype
//   attention_weights  (B, Q, NH, L, P)         opmath dtype
//   output             (B, Q, NH * D)
// opmath is float for float/half/bfloat16 value and double for double value.
//
// Forward: parallel over chunks of the B*Q output rows. For each row the footprints of all its
// points are located in one vectorised loop, a row ahead, and their value rows prefetched, so
// the gathers of the channel loops find them in cache. Backward: parallel over B*NH; each task
// owns the disjoint slice grad_value[b, :, h, :] (zeroed beforehand by one contiguous parallel
// fill) and walks the queries in order, so no atomics are needed and the result is
// bit-identical from run to run (and for any thread count).
// Both hand their chunks out dynamically on torch's thread pool (see parallel_chunks).
// Channel loops are contiguous and written for the compiler's vectoriser; the hot loops are
// compiled for x86-64-v3 (AVX2+FMA) as well as the baseline ISA and picked at load time
// (target_clones on the per-range workers, into which the channel loops inline).
#include "msda_cpu.h"

#include <ATen/Parallel.h>
#include <ATen/OpMathType.h>
#include <ATen/Dispatch.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

namespace crossformer_mm {
namespace {

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(MSDA_NO_CLONES)
#define MSDA_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define MSDA_CLONES
#endif

// The helpers of the per-range workers are inlined into them, and so compiled for each clone's
// ISA (left to itself the compiler may call one out-of-line copy built for the baseline ISA).
#if defined(__GNUC__)
#define MSDA_INLINE inline __attribute__((always_inline))
#else
#define MSDA_INLINE inline
#endif

// Bilinear footprint of one sampling point: up to four corners with their bilinear weights.
template <typename acc_t>
struct Corners {
  int64_t idx[4];    // row index of each corner inside the level (y * W + x)
  acc_t w[4];        // bilinear weight of each corner (0 for a corner outside the map)
  bool valid[4];
  acc_t fx, fy;      // fractional parts
};

// Returns false when the point lies wholly outside the map (no corner contributes).
template <typename acc_t>
MSDA_INLINE bool locate_point(acc_t lx, acc_t ly, int64_t H, int64_t W, Corners<acc_t>& c) {
  const acc_t x = lx * static_cast<acc_t>(W) - acc_t(0.5);
  const acc_t y = ly * static_cast<acc_t>(H) - acc_t(0.5);
  // NaN fails every comparison and is treated as outside.
  if (!(x > acc_t(-1) && y > acc_t(-1) && x < static_cast<acc_t>(W) &&
        y < static_cast<acc_t>(H))) {
    return false;
  }
  const acc_t xf = std::floor(x), yf = std::floor(y);
  const int64_t x0 = static_cast<int64_t>(xf), y0 = static_cast<int64_t>(yf);
  const acc_t fx = x - xf, fy = y - yf;
  c.fx = fx;
  c.fy = fy;
  const bool vx0 = x0 >= 0, vx1 = x0 + 1 < W, vy0 = y0 >= 0, vy1 = y0 + 1 < H;
  c.valid[0] = vy0 && vx0;
  c.valid[1] = vy0 && vx1;
  c.valid[2] = vy1 && vx0;
  c.valid[3] = vy1 && vx1;
  c.idx[0] = y0 * W + x0;
  c.idx[1] = y0 * W + x0 + 1;
  c.idx[2] = (y0 + 1) * W + x0;
  c.idx[3] = (y0 + 1) * W + x0 + 1;
  c.w[0] = (1 - fy) * (1 - fx);
  c.w[1] = (1 - fy) * fx;
  c.w[2] = fy * (1 - fx);
  c.w[3] = fy * fx;
  return true;
}

// Sampling footprints of a run of points, in structure-of-arrays form: for point k, the
// top-left corner (x0[k], y0[k]) of its 2x2 bilinear footprint, the fractional position
// (fx[k], fy[k]), which corners lie on the map (mask[k], bit j for corner j = 00, 01, 10, 11 in
// (row, column) order; 0 when the point lies wholly outside or is NaN), and the four corner
// weights times the attention weight (aw[4 * k + j]).
template <typename acc_t>
struct Taps {
  std::vector<int32_t> x0, y0, mask;
  std::vector<acc_t> fx, fy, aw;

  void resize(int64_t n) {
    x0.resize(n);
    y0.resize(n);
    mask.resize(n);
    fx.resize(n);
    fy.resize(n);
    aw.resize(4 * n);
  }
};

// Level sizes per point of one (query): entry k describes the level of point k, for the
// NH * L * P points of a query in (head, level, point) order, so that locate() is one flat loop.
template <typename acc_t>
struct LevelTable {
  std::vector<acc_t> Hf, Wf;
  std::vector<int32_t> Hi, Wi;
  std::vector<int64_t> start;  // the level's first key

  LevelTable(const int64_t* shapes, const int64_t* starts, int64_t heads, int64_t L, int64_t P) {
    const int64_t n = heads * L * P;
    Hf.resize(n);
    Wf.resize(n);
    Hi.resize(n);
    Wi.resize(n);
    start.resize(n);
    for (int64_t k = 0; k < n; ++k) {
      const int64_t l = (k / P) % L;
      Hi[k] = static_cast<int32_t>(shapes[2 * l]);
      Wi[k] = static_cast<int32_t>(shapes[2 * l + 1]);
      Hf[k] = static_cast<acc_t>(shapes[2 * l]);
      Wf[k] = static_cast<acc_t>(shapes[2 * l + 1]);
      start[k] = starts[l];
    }
  }
};

// Footprints of the n points at loc (x, y pairs) with attention weights attn, into t. One
// branch-free loop over the points, which the compiler vectorises.
template <typename acc_t>
MSDA_INLINE void locate(const acc_t* __restrict loc, const acc_t* __restrict attn,
                   const LevelTable<acc_t>& lt, int64_t n, Taps<acc_t>& t) {
  const acc_t* __restrict Hf = lt.Hf.data();
  const acc_t* __restrict Wf = lt.Wf.data();
  int32_t* __restrict x0p = t.x0.data();
  int32_t* __restrict y0p = t.y0.data();
  int32_t* __restrict mp = t.mask.data();
  acc_t* __restrict fxp = t.fx.data();
  acc_t* __restrict fyp = t.fy.data();
  acc_t* __restrict awp = t.aw.data();
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) {
    const acc_t x = loc[2 * k] * Wf[k] - acc_t(0.5);
    const acc_t y = loc[2 * k + 1] * Hf[k] - acc_t(0.5);
    // NaN fails every comparison and is treated as outside. Bitwise operators and min/max
    // selects rather than branches: the clamped position (finite, in [-1, W] x [-1, H], NaN
    // included) only keeps floor and the int conversion defined for points outside (mask 0).
    // 0/1 flags in acc_t rather than bool: the same width as the positions, so the compiler
    // vectorises the selects.
    const acc_t inside = (x > acc_t(-1)) & (y > acc_t(-1)) & (x < Wf[k]) & (y < Hf[k]) ? 1 : 0;
    const acc_t xm = x < Wf[k] ? x : Wf[k], ym = y < Hf[k] ? y : Hf[k];
    const acc_t xs = xm > acc_t(-1) ? xm : acc_t(-1), ys = ym > acc_t(-1) ? ym : acc_t(-1);
    const acc_t xf = std::floor(xs), yf = std::floor(ys);
    const acc_t fx = xs - xf, fy = ys - yf;
    const acc_t vx0 = xf >= acc_t(0) ? 1 : 0, vx1 = xf + 1 < Wf[k] ? 1 : 0;
    const acc_t vy0 = yf >= acc_t(0) ? 1 : 0, vy1 = yf + 1 < Hf[k] ? 1 : 0;
    x0p[k] = static_cast<int32_t>(xf);
    y0p[k] = static_cast<int32_t>(yf);
    mp[k] = static_cast<int32_t>(
        inside * (vy0 * (vx0 + 2 * vx1) + vy1 * (4 * vx0 + 8 * vx1)));
    fxp[k] = fx;
    fyp[k] = fy;
    const acc_t a = attn[k];
    awp[4 * k] = a * ((1 - fy) * (1 - fx));
    awp[4 * k + 1] = a * ((1 - fy) * fx);
    awp[4 * k + 2] = a * (fy * (1 - fx));
    awp[4 * k + 3] = a * (fy * fx);
  }
}

// Offsets (in elements, from the level's first key) of the four corner rows of point k.
MSDA_INLINE void corner_offsets(int32_t x0, int32_t y0, int64_t W, int64_t row, int64_t* off) {
  off[0] = (static_cast<int64_t>(y0) * W + x0) * row;
  off[1] = off[0] + row;
  off[2] = off[0] + W * row;
  off[3] = off[2] + row;
}

// Asks the cache for the rows the valid corners of the n points in t will read: bytes bytes at
// base + start + corner offset (base: the (batch, head) slice of value or grad_value).
template <typename T, typename acc_t>
MSDA_INLINE void prefetch_taps(const T* base, const Taps<acc_t>& t, const LevelTable<acc_t>& lt,
                          int64_t k0, int64_t n, int64_t row, int64_t bytes) {
  for (int64_t k = k0; k < k0 + n; ++k) {
    const int32_t m = t.mask[k];
    if (!m) continue;
    int64_t off[4];
    corner_offsets(t.x0[k], t.y0[k], lt.Wi[k], row, off);
    const char* p = reinterpret_cast<const char*>(base + lt.start[k] * row);
    for (int j = 0; j < 4; ++j) {
      if (!(m >> j & 1)) continue;
      const char* c = p + off[j] * static_cast<int64_t>(sizeof(T));
      for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(c + b);
    }
  }
}

// acc[c] += a0*v0[c] + a1*v1[c] + a2*v2[c] + a3*v3[c]
template <int DC, typename scalar_t, typename acc_t>
MSDA_INLINE void axpy4(acc_t* __restrict acc, const scalar_t* __restrict v0,
                  const scalar_t* __restrict v1, const scalar_t* __restrict v2,
                  const scalar_t* __restrict v3, acc_t a0, acc_t a1, acc_t a2, acc_t a3,
                  int64_t D) {
#pragma omp simd
  for (int64_t c = 0; c < (DC > 0 ? DC : D); ++c) {
    acc[c] += a0 * static_cast<acc_t>(v0[c]) + a1 * static_cast<acc_t>(v1[c]) +
              a2 * static_cast<acc_t>(v2[c]) + a3 * static_cast<acc_t>(v3[c]);
  }
}

template <int DC, typename scalar_t, typename acc_t>
MSDA_INLINE void axpy1(acc_t* __restrict acc, const scalar_t* __restrict v, acc_t a, int64_t D) {
#pragma omp simd
  for (int64_t c = 0; c < (DC > 0 ? DC : D); ++c) acc[c] += a * static_cast<acc_t>(v[c]);
}

// Backward of one interior sample: dots d_k = <g, v_k>, grad_value rows gv_k += a_k * g.
template <int DC, typename scalar_t, typename acc_t>
MSDA_INLINE void backward4(const acc_t* __restrict g, const scalar_t* __restrict v0,
                      const scalar_t* __restrict v1, const scalar_t* __restrict v2,
                      const scalar_t* __restrict v3, acc_t* __restrict gv0,
                      acc_t* __restrict gv1, acc_t* __restrict gv2, acc_t* __restrict gv3,
                      acc_t a0, acc_t a1, acc_t a2, acc_t a3, int64_t D, acc_t* dots) {
  acc_t d0 = 0, d1 = 0, d2 = 0, d3 = 0;
#pragma omp simd reduction(+ : d0, d1, d2, d3)
  for (int64_t c = 0; c < (DC > 0 ? DC : D); ++c) {
    const acc_t gc = g[c];
    d0 += gc * static_cast<acc_t>(v0[c]);
    d1 += gc * static_cast<acc_t>(v1[c]);
    d2 += gc * static_cast<acc_t>(v2[c]);
    d3 += gc * static_cast<acc_t>(v3[c]);
  }
  // Corners are distinct rows, so the four updates never alias.
#pragma omp simd
  for (int64_t c = 0; c < (DC > 0 ? DC : D); ++c) {
    const acc_t gc = g[c];
    gv0[c] += a0 * gc;
    gv1[c] += a1 * gc;
    gv2[c] += a2 * gc;
    gv3[c] += a3 * gc;
  }
  dots[0] = d0;
  dots[1] = d1;
  dots[2] = d2;
  dots[3] = d3;
}

template <int DC, typename scalar_t, typename acc_t>
MSDA_INLINE acc_t backward1(const acc_t* __restrict g, const scalar_t* __restrict v,
                       acc_t* __restrict gv, acc_t a, int64_t D) {
  acc_t d = 0;
#pragma omp simd reduction(+ : d)
  for (int64_t c = 0; c < (DC > 0 ? DC : D); ++c) {
    d += g[c] * static_cast<acc_t>(v[c]);
    gv[c] += a * g[c];
  }
  return d;
}

// Runs f(begin, end) over [0, n) in chunks of `chunk`, on torch's intra-op thread pool
// (at::parallel_for, one task per thread) with the chunks handed out dynamically: a thread that
// is slowed down (a busy machine) does not hold the others up. Which thread runs a chunk never
// changes the result: each chunk writes its own outputs in a fixed order.
template <typename F>
void parallel_chunks(int64_t n, int64_t chunk, const F& f) {
  if (n <= 0) return;
  const int64_t num_chunks = (n + chunk - 1) / chunk;
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), num_chunks);
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (int64_t c = next.fetch_add(1); c < num_chunks; c = next.fetch_add(1)) {
      f(c * chunk, std::min(n, (c + 1) * chunk));
    }
  });
}

struct Dims {
  int64_t B, S, NH, D, Q, L, P;
};

Dims read_dims(const at::Tensor& value, const at::Tensor& loc) {
  return Dims{value.size(0), value.size(1), value.size(2), value.size(3),
              loc.size(1),   loc.size(3),   loc.size(4)};
}

// Raw pointers of one call. grad_* are null in the forward.
template <typename scalar_t, typename acc_t>
struct Args {
  Dims d;
  const scalar_t* value;
  const int64_t* shapes;
  const int64_t* starts;
  const acc_t* loc;
  const acc_t* attn;
  scalar_t* out;
  const scalar_t* grad_out;
  acc_t* grad_value;  // opmath accumulation buffer, zeroed by the caller
  acc_t* grad_loc;
  acc_t* grad_attn;
};

// The inputs of both passes; the caller sets the outputs it writes.
template <typename scalar_t, typename acc_t>
Args<scalar_t, acc_t> input_args(const at::Tensor& value, const at::Tensor& shapes,
                                 const at::Tensor& starts, const at::Tensor& loc,
                                 const at::Tensor& attn) {
  return {read_dims(value, loc),          value.data_ptr<scalar_t>(),
          shapes.data_ptr<int64_t>(),     starts.data_ptr<int64_t>(),
          loc.data_ptr<acc_t>(),          attn.data_ptr<acc_t>(),
          nullptr,                        nullptr,
          nullptr,                        nullptr,
          nullptr};
}

// Footprints of the points of output row bq (all heads), and a prefetch of their value rows.
template <typename scalar_t, typename acc_t>
MSDA_INLINE void forward_prepare(const Args<scalar_t, acc_t>& a, const LevelTable<acc_t>& lt,
                                 int64_t bq, Taps<acc_t>& t) {
  const Dims& d = a.d;
  const int64_t row = d.NH * d.D, LP = d.L * d.P, n = d.NH * LP;
  locate(a.loc + bq * n * 2, a.attn + bq * n, lt, n, t);
  const scalar_t* vb = a.value + bq / d.Q * d.S * row;
  for (int64_t h = 0; h < d.NH; ++h) {
    prefetch_taps(vb + h * d.D, t, lt, h * LP, LP, row, d.D * static_cast<int64_t>(sizeof(scalar_t)));
  }
}

// Output rows bq in [begin, end) (bq = b * Q + q), all heads. The footprints of the next
// query's points are located and their value rows prefetched before the current query's are
// summed, so the gathers find their rows in cache.
template <int DC, typename scalar_t, typename acc_t>
MSDA_CLONES void forward_range(const Args<scalar_t, acc_t>& a, const LevelTable<acc_t>& lt,
                               int64_t begin, int64_t end, Taps<acc_t>* taps, acc_t* acc) {
  const Dims& d = a.d;
  const int64_t row = d.NH * d.D;  // stride between consecutive keys in value
  const int64_t LP = d.L * d.P;
  forward_prepare(a, lt, begin, taps[0]);
  for (int64_t bq = begin; bq < end; ++bq) {
    const Taps<acc_t>& t = taps[(bq - begin) & 1];
    if (bq + 1 < end) forward_prepare(a, lt, bq + 1, taps[(bq + 1 - begin) & 1]);
    const int64_t b = bq / d.Q;
    for (int64_t h = 0; h < d.NH; ++h) {
      for (int64_t ch = 0; ch < d.D; ++ch) acc[ch] = 0;
      const scalar_t* vh = a.value + b * d.S * row + h * d.D;
      for (int64_t k = h * LP; k < (h + 1) * LP; ++k) {
        const int32_t m = t.mask[k];
        if (!m) continue;
        int64_t off[4];
        corner_offsets(t.x0[k], t.y0[k], lt.Wi[k], row, off);
        const scalar_t* v = vh + lt.start[k] * row;
        const acc_t* w = &t.aw[4 * k];
        if (m == 15) {
          axpy4<DC>(acc, v + off[0], v + off[1], v + off[2], v + off[3], w[0], w[1], w[2], w[3],
                    d.D);
        } else {
          for (int j = 0; j < 4; ++j) {
            if (m >> j & 1) axpy1<DC>(acc, v + off[j], w[j], d.D);
          }
        }
      }
      scalar_t* o = a.out + bq * row + h * d.D;
      for (int64_t ch = 0; ch < d.D; ++ch) o[ch] = static_cast<scalar_t>(acc[ch]);
    }
  }
}

// (batch, head) slices bh in [begin, end): all queries of each, in order.
template <int DC, typename scalar_t, typename acc_t>
MSDA_CLONES void backward_range(const Args<scalar_t, acc_t>& a, int64_t begin, int64_t end,
                                acc_t* g) {
  const Dims& d = a.d;
  const int64_t row = d.NH * d.D;
  const int64_t LP = d.L * d.P;
  for (int64_t bh = begin; bh < end; ++bh) {
    const int64_t b = bh / d.NH, h = bh % d.NH;
    for (int64_t q = 0; q < d.Q; ++q) {
      const int64_t bqh = (b * d.Q + q) * d.NH + h;
      const scalar_t* go = a.grad_out + bqh * d.D;
      for (int64_t ch = 0; ch < d.D; ++ch) g[ch] = static_cast<acc_t>(go[ch]);
      const acc_t* lp = a.loc + bqh * LP * 2;
      const acc_t* ap = a.attn + bqh * LP;
      acc_t* glp = a.grad_loc + bqh * LP * 2;
      acc_t* gap = a.grad_attn + bqh * LP;
      for (int64_t l = 0; l < d.L; ++l) {
        const int64_t H = a.shapes[2 * l], W = a.shapes[2 * l + 1];
        const int64_t off = (b * d.S + a.starts[l]) * row + h * d.D;
        const scalar_t* vbase = a.value + off;
        acc_t* gvbase = a.grad_value + off;
        for (int64_t p = 0; p < d.P; ++p) {
          const int64_t k = l * d.P + p;
          Corners<acc_t> c;
          if (!locate_point(lp[2 * k], lp[2 * k + 1], H, W, c)) {
            gap[k] = 0;
            glp[2 * k] = 0;
            glp[2 * k + 1] = 0;
            continue;
          }
          const acc_t w = ap[k];
          acc_t dots[4] = {0, 0, 0, 0};
          if (c.valid[0] && c.valid[1] && c.valid[2] && c.valid[3]) {
            backward4<DC>(g, vbase + c.idx[0] * row, vbase + c.idx[1] * row, vbase + c.idx[2] * row,
                      vbase + c.idx[3] * row, gvbase + c.idx[0] * row, gvbase + c.idx[1] * row,
                      gvbase + c.idx[2] * row, gvbase + c.idx[3] * row, w * c.w[0], w * c.w[1],
                      w * c.w[2], w * c.w[3], d.D, dots);
          } else {
            for (int j = 0; j < 4; ++j) {
              if (c.valid[j]) {
                dots[j] = backward1<DC>(g, vbase + c.idx[j] * row, gvbase + c.idx[j] * row,
                                    w * c.w[j], d.D);
              }
            }
          }
          gap[k] = c.w[0] * dots[0] + c.w[1] * dots[1] + c.w[2] * dots[2] + c.w[3] * dots[3];
          const acc_t gx = (1 - c.fy) * (dots[1] - dots[0]) + c.fy * (dots[3] - dots[2]);
          const acc_t gy = (1 - c.fx) * (dots[2] - dots[0]) + c.fx * (dots[3] - dots[1]);
          glp[2 * k] = w * gx * static_cast<acc_t>(W);
          glp[2 * k + 1] = w * gy * static_cast<acc_t>(H);
        }
      }
    }
  }
}

template <typename scalar_t>
void forward_impl(const at::Tensor& value, const at::Tensor& shapes, const at::Tensor& starts,
                  const at::Tensor& loc, const at::Tensor& attn, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  auto a = input_args<scalar_t, acc_t>(value, shapes, starts, loc, attn);
  a.out = out.data_ptr<scalar_t>();
  const Dims& d = a.d;
  const LevelTable<acc_t> lt(a.shapes, a.starts, d.NH, d.L, d.P);
  // About 10 * L * P * NH * D flops per query: chunks of ~256k flops at least.
  const int64_t chunk =
      std::max<int64_t>(1, 262144 / std::max<int64_t>(1, 10 * d.L * d.P * d.NH * d.D));
  parallel_chunks(d.B * d.Q, chunk, [&](int64_t begin, int64_t end) {
    thread_local Taps<acc_t> taps[2];
    thread_local std::vector<acc_t> acc;
    taps[0].resize(d.NH * d.L * d.P);
    taps[1].resize(d.NH * d.L * d.P);
    acc.resize(d.D);
    // Common head widths get fully unrolled channel loops.
    switch (d.D) {
      case 32: forward_range<32>(a, lt, begin, end, taps, acc.data()); break;
      case 64: forward_range<64>(a, lt, begin, end, taps, acc.data()); break;
      default: forward_range<0>(a, lt, begin, end, taps, acc.data());
    }
  });
}

template <typename scalar_t>
void backward_impl(const at::Tensor& value, const at::Tensor& shapes, const at::Tensor& starts,
                   const at::Tensor& loc, const at::Tensor& attn, const at::Tensor& grad_out,
                   at::Tensor& grad_value, at::Tensor& grad_loc, at::Tensor& grad_attn) {
  using acc_t = at::opmath_type<scalar_t>;
  auto a = input_args<scalar_t, acc_t>(value, shapes, starts, loc, attn);
  a.grad_out = grad_out.data_ptr<scalar_t>();
  a.grad_value = grad_value.data_ptr<acc_t>();
  a.grad_loc = grad_loc.data_ptr<acc_t>();
  a.grad_attn = grad_attn.data_ptr<acc_t>();
  // One task per (batch, head): tasks write disjoint slices of grad_value, grad_loc, grad_attn.
  parallel_chunks(a.d.B * a.d.NH, 1, [&](int64_t begin, int64_t end) {
    thread_local std::vector<acc_t> g;
    g.resize(a.d.D);
    switch (a.d.D) {
      case 32: backward_range<32>(a, begin, end, g.data()); break;
      case 64: backward_range<64>(a, begin, end, g.data()); break;
      default: backward_range<0>(a, begin, end, g.data());
    }
  });
}

void check_common(const at::Tensor& value, const at::Tensor& shapes, const at::Tensor& starts,
                  const at::Tensor& loc, const at::Tensor& attn) {
  TORCH_CHECK(value.device().is_cpu(), "ms_deform_attn CPU kernel: value must be on the CPU");
  TORCH_CHECK(value.dim() == 4 && value.is_contiguous(), "value must be a contiguous 4-d tensor");
  TORCH_CHECK(shapes.dim() == 2 && shapes.size(1) == 2 && shapes.scalar_type() == at::kLong &&
                  shapes.is_contiguous(),
              "spatial_shapes must be a contiguous (L, 2) int64 tensor");
  const int64_t L = shapes.size(0);
  TORCH_CHECK(starts.dim() == 1 && starts.size(0) == L && starts.scalar_type() == at::kLong &&
                  starts.is_contiguous(),
              "level_start_index must be a contiguous (L,) int64 tensor");
  const auto opmath = at::toOpMathType(value.scalar_type());
  TORCH_CHECK(loc.dim() == 6 && loc.is_contiguous() && loc.scalar_type() == opmath &&
                  loc.size(0) == value.size(0) && loc.size(2) == value.size(2) &&
                  loc.size(3) == L && loc.size(5) == 2,
              "sampling_locations must be a contiguous (B, Q, NH, L, P, 2) tensor of the "
              "value's opmath dtype");
  TORCH_CHECK(attn.dim() == 5 && attn.is_contiguous() && attn.scalar_type() == opmath &&
                  attn.size(0) == loc.size(0) && attn.size(1) == loc.size(1) &&
                  attn.size(2) == loc.size(2) && attn.size(3) == L && attn.size(4) == loc.size(4),
              "attention_weights must be a contiguous (B, Q, NH, L, P) tensor matching "
              "sampling_locations");
  // Every level must lie inside value: guards the kernels against out-of-bounds reads.
  // st + H * W <= S is tested as W <= (S - st) / H, which cannot overflow.
  const int64_t* shp = shapes.data_ptr<int64_t>();
  const int64_t* st = starts.data_ptr<int64_t>();
  const int64_t S = value.size(1);
  for (int64_t l = 0; l < L; ++l) {
    TORCH_CHECK(shp[2 * l] > 0 && shp[2 * l + 1] > 0 && st[l] >= 0 && st[l] <= S &&
                    shp[2 * l + 1] <= (S - st[l]) / shp[2 * l],
                "level ", l, " of spatial_shapes/level_start_index lies outside value");
  }
}

}  // namespace

at::Tensor ms_deform_attn_forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index,
                                      const at::Tensor& sampling_locations,
                                      const at::Tensor& attention_weights) {
  check_common(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  auto out = at::empty({value.size(0), sampling_locations.size(1), value.size(2) * value.size(3)},
                       value.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, value.scalar_type(),
                                  "ms_deform_attn_forward_cpu", [&] {
                                    forward_impl<scalar_t>(value, spatial_shapes,
                                                           level_start_index, sampling_locations,
                                                           attention_weights, out);
                                  });
  return out;
}

std::vector<at::Tensor> ms_deform_attn_backward_cpu(const at::Tensor& value,
                                                    const at::Tensor& spatial_shapes,
                                                    const at::Tensor& level_start_index,
                                                    const at::Tensor& sampling_locations,
                                                    const at::Tensor& attention_weights,
                                                    const at::Tensor& grad_output) {
  check_common(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  TORCH_CHECK(grad_output.is_contiguous() && grad_output.scalar_type() == value.scalar_type() &&
                  grad_output.dim() == 3 && grad_output.size(0) == value.size(0) &&
                  grad_output.size(1) == sampling_locations.size(1) &&
                  grad_output.size(2) == value.size(2) * value.size(3),
              "grad_output must be a contiguous (B, Q, NH * D) tensor of the value's dtype");
  // grad_value is accumulated into, so it starts from zero (one contiguous parallel fill); the
  // kernel writes every element of grad_loc and grad_attn (0 for points outside).
  auto grad_value = at::zeros(value.sizes(), sampling_locations.options());
  auto grad_loc = at::empty_like(sampling_locations);
  auto grad_attn = at::empty_like(attention_weights);
  if (grad_output.numel() == 0) {
    grad_loc.zero_();
    grad_attn.zero_();
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, value.scalar_type(),
                                    "ms_deform_attn_backward_cpu", [&] {
                                      backward_impl<scalar_t>(
                                          value, spatial_shapes, level_start_index,
                                          sampling_locations, attention_weights, grad_output,
                                          grad_value, grad_loc, grad_attn);
                                    });
  }
  if (grad_value.scalar_type() != value.scalar_type()) {
    grad_value = grad_value.to(value.scalar_type());
  }
  return {grad_value, grad_loc, grad_attn};
}

}  // namespace crossformer_mm
