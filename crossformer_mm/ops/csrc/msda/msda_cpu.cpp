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
// fill) and walks the queries in order, locating each (query, head)'s points in the same
// vectorised loop and asking for its per-query rows (which lie NH rows apart) a few queries
// ahead, so no atomics are needed and the result is bit-identical from run to run (and for any
// thread count).
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

// Sampling footprints of a run of points, in structure-of-arrays form: for point k, the key
// (row of the value's slice: level start + y0 * W + x0) of the top-left corner (x0, y0) of its
// 2x2 bilinear footprint, the fractional position
// (fx[k], fy[k]), which corners lie on the map (mask[k], bit j for corner j = 00, 01, 10, 11 in
// (row, column) order; 0 when the point lies wholly outside or is NaN), and the four corner
// weights times the attention weight (aw[4 * k + j]).
template <typename acc_t>
struct Taps {
  std::vector<int64_t> key;
  std::vector<int32_t> mask;
  std::vector<acc_t> fx, fy, aw;

  void resize(int64_t n) {
    key.resize(n);
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
  const int32_t* __restrict Wi = lt.Wi.data();
  const int64_t* __restrict start = lt.start.data();
  int64_t* __restrict keyp = t.key.data();
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
    keyp[k] = start[k] + static_cast<int64_t>(static_cast<int32_t>(yf)) * Wi[k] +
              static_cast<int32_t>(xf);
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

// Offsets (in elements, from the slice's first key) of the four corner rows of a footprint whose
// top-left corner is key, in a level W keys wide, keys row elements apart.
MSDA_INLINE void corner_offsets(int64_t key, int64_t W, int64_t row, int64_t* off) {
  off[0] = key * row;
  off[1] = off[0] + row;
  off[2] = off[0] + W * row;
  off[3] = off[2] + row;
}

// Asks the cache for bytes bytes from p, to read (RW = 0) or write (RW = 1).
template <int RW = 0>
MSDA_INLINE void prefetch_bytes(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(c + b, RW);
}

// Asks the cache for the rows the valid corners of the n points in t will read: bytes bytes at
// base + corner offset (base: the (batch, head) slice of value).
template <typename T, typename acc_t>
MSDA_INLINE void prefetch_taps(const T* base, const Taps<acc_t>& t, const LevelTable<acc_t>& lt,
                          int64_t k0, int64_t n, int64_t row, int64_t bytes) {
  for (int64_t k = k0; k < k0 + n; ++k) {
    const int32_t m = t.mask[k];
    if (!m) continue;
    int64_t off[4];
    corner_offsets(t.key[k], lt.Wi[k], row, off);
    for (int j = 0; j < 4; ++j) {
      if (m >> j & 1) prefetch_bytes(base + off[j], bytes);
    }
  }
}

// How many queries ahead the backward asks for its per-query rows.
constexpr int64_t kStreamAhead = 4;

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
                               int64_t begin, int64_t end, Taps<acc_t>* taps, acc_t* acc_buf) {
  const Dims& d = a.d;
  const int64_t row = d.NH * d.D;  // stride between consecutive keys in value
  const int64_t LP = d.L * d.P;
  forward_prepare(a, lt, begin, taps[0]);
  for (int64_t bq = begin; bq < end; ++bq) {
    const Taps<acc_t>& t = taps[(bq - begin) & 1];
    if (bq + 1 < end) forward_prepare(a, lt, bq + 1, taps[(bq + 1 - begin) & 1]);
    const int64_t b = bq / d.Q;
    for (int64_t h = 0; h < d.NH; ++h) {
      // A local accumulator for the unrolled widths, which the compiler keeps in registers.
      acc_t local[DC > 0 ? DC : 1];
      acc_t* __restrict acc = DC > 0 ? local : acc_buf;
      for (int64_t ch = 0; ch < d.D; ++ch) acc[ch] = 0;
      const scalar_t* vh = a.value + b * d.S * row + h * d.D;
      for (int64_t k = h * LP; k < (h + 1) * LP; ++k) {
        const int32_t m = t.mask[k];
        if (!m) continue;
        int64_t off[4];
        corner_offsets(t.key[k], lt.Wi[k], row, off);
        const acc_t* w = &t.aw[4 * k];
        if (m == 15) {
          axpy4<DC>(acc, vh + off[0], vh + off[1], vh + off[2], vh + off[3], w[0], w[1], w[2],
                    w[3], d.D);
        } else {
          for (int j = 0; j < 4; ++j) {
            if (m >> j & 1) axpy1<DC>(acc, vh + off[j], w[j], d.D);
          }
        }
      }
      scalar_t* o = a.out + bq * row + h * d.D;
      for (int64_t ch = 0; ch < d.D; ++ch) o[ch] = static_cast<scalar_t>(acc[ch]);
    }
  }
}

// (batch, head) slices bh in [begin, end): all queries of each, in order, accumulating into
// grad_value (zeroed by the caller). t: footprints of one (query, head)'s L * P points; ones:
// L * P ones, so that t.aw holds the bare corner weights.
template <int DC, typename scalar_t, typename acc_t>
MSDA_CLONES void backward_range(const Args<scalar_t, acc_t>& a, const LevelTable<acc_t>& lt,
                                int64_t begin, int64_t end, Taps<acc_t>& t,
                                const acc_t* ones, acc_t* g) {
  const Dims& d = a.d;
  const int64_t row = d.NH * d.D;
  const int64_t LP = d.L * d.P;
  for (int64_t bh = begin; bh < end; ++bh) {
    const int64_t b = bh / d.NH, h = bh % d.NH;
    const scalar_t* vh = a.value + b * d.S * row + h * d.D;
    acc_t* gvh = a.grad_value + b * d.S * row + h * d.D;
    for (int64_t q = 0; q < d.Q; ++q) {
      const int64_t bqh = (b * d.Q + q) * d.NH + h;
      // The per-query rows of this head lie NH rows apart in loc, attn, grad_out, grad_loc and
      // grad_attn: asked for a few queries ahead.
      if (q + kStreamAhead < d.Q) {
        const int64_t ahead = bqh + kStreamAhead * d.NH;
        prefetch_bytes(a.loc + ahead * LP * 2, LP * 2 * sizeof(acc_t));
        prefetch_bytes(a.attn + ahead * LP, LP * sizeof(acc_t));
        prefetch_bytes(a.grad_out + ahead * d.D, d.D * sizeof(scalar_t));
        prefetch_bytes<1>(a.grad_loc + ahead * LP * 2, LP * 2 * sizeof(acc_t));
        prefetch_bytes<1>(a.grad_attn + ahead * LP, LP * sizeof(acc_t));
      }
      const scalar_t* go = a.grad_out + bqh * d.D;
      for (int64_t ch = 0; ch < d.D; ++ch) g[ch] = static_cast<acc_t>(go[ch]);
      const acc_t* ap = a.attn + bqh * LP;
      acc_t* glp = a.grad_loc + bqh * LP * 2;
      acc_t* gap = a.grad_attn + bqh * LP;
      locate(a.loc + bqh * LP * 2, ones, lt, LP, t);
      for (int64_t k = 0; k < LP; ++k) {
        const int32_t m = t.mask[k];
        if (!m) {
          gap[k] = 0;
          glp[2 * k] = 0;
          glp[2 * k + 1] = 0;
          continue;
        }
        int64_t off[4];
        corner_offsets(t.key[k], lt.Wi[k], row, off);
        const acc_t* cw = &t.aw[4 * k];  // corner weights (ones as the attention weights)
        const acc_t w = ap[k];
        acc_t dots[4] = {0, 0, 0, 0};
        if (m == 15) {
          backward4<DC>(g, vh + off[0], vh + off[1], vh + off[2], vh + off[3], gvh + off[0],
                        gvh + off[1], gvh + off[2], gvh + off[3], w * cw[0], w * cw[1],
                        w * cw[2], w * cw[3], d.D, dots);
        } else {
          for (int j = 0; j < 4; ++j) {
            if (m >> j & 1) dots[j] = backward1<DC>(g, vh + off[j], gvh + off[j], w * cw[j], d.D);
          }
        }
        const acc_t fx = t.fx[k], fy = t.fy[k];
        gap[k] = cw[0] * dots[0] + cw[1] * dots[1] + cw[2] * dots[2] + cw[3] * dots[3];
        const acc_t gx = (1 - fy) * (dots[1] - dots[0]) + fy * (dots[3] - dots[2]);
        const acc_t gy = (1 - fx) * (dots[2] - dots[0]) + fx * (dots[3] - dots[1]);
        glp[2 * k] = w * gx * lt.Wf[k];
        glp[2 * k + 1] = w * gy * lt.Hf[k];
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
  const Dims& d = a.d;
  const LevelTable<acc_t> lt(a.shapes, a.starts, 1, d.L, d.P);
  parallel_chunks(d.B * d.NH, 1, [&](int64_t begin, int64_t end) {
    thread_local Taps<acc_t> t;
    thread_local std::vector<acc_t> g, ones;
    t.resize(d.L * d.P);
    ones.assign(d.L * d.P, acc_t(1));
    g.resize(d.D);
    switch (d.D) {
      case 32: backward_range<32>(a, lt, begin, end, t, ones.data(), g.data()); break;
      case 64: backward_range<64>(a, lt, begin, end, t, ones.data(), g.data()); break;
      default: backward_range<0>(a, lt, begin, end, t, ones.data(), g.data());
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
