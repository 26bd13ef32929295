// Decode-row matrix-vector products for lm.quant on AVX2 + FMA CPUs (see lm/kernels/__init__.py).
//
// A decode step multiplies a few activation rows (one token per sequence) by every weight once, so its speed
// is the speed of reading the weights. Both kernels quantize the activation rows to int8 in blocks of 32
// (one float scale per block, as llama.cpp's q8_0) and multiply bytes with _mm256_maddubs_epi16, 32 products
// per instruction, so that unpacking the weights costs less than reading them.
//
// int4_rows: y = x @ w.T (+ b), w = scale * (q - 8) + zero per group of 32 inputs (lm.quant.Int4Linear).
//   q: (N, K / 2) uint8, per output row and group 16 bytes; byte j holds q[j] (low nibble) and q[j + 16].
//   sz: (N, 2, K / 32) bf16 bits: each row's group scales, then its group zeros.
//   Per group: sum(w * x) = scale * dx * sum((q - 8) * xq) + zero * sum(x), with xq = round(x / dx) and sum(x)
//   the block's exact float sum. The integer sum is computed as sum(q * xq) - 8 * sum(xq): q (0..15) as unsigned
//   bytes x xq through maddubs (pairs at most 2 * 15 * 127 = 3810, no saturation), and the -8 * sum(xq) part
//   per block once, with the zero term, for eight groups at a time. Centred on q - 8 rather than on q (with the
//   exact sum(x) for the 8), xq's rounding errors mostly cancel: against the float product the error halved.
// int8_rows: y = (x @ w.T) * scale (+ b) (lm.quant.Int8Linear): w (N, K) int8 in -127..127, scale (N,) bf16.
//   s8 x s8 through maddubs with the sign trick (|w| as unsigned, x with w's sign), as llama.cpp's q8_0 dot;
//   pairs are at most 2 * 127 * 127 = 32258 < 32767.
// Output rows are split between torch's threads with at::parallel_for.

#include <immintrin.h>

#include <ATen/Functions.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

namespace {

constexpr int64_t BLOCK = 32;  // activation block = weight group
constexpr int RB = 4;          // activation rows per pass over a weight row (accumulators stay in registers)

inline float bf16_to_float(uint16_t bits) {
  uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// x (R, K) float -> xq (R, K) int8, dx (R, K / 32) block scales, sx (R, K / 32) exact block sums.
void quantize_rows(const float* x, int64_t n, int8_t* xq, float* dx, float* sx) {
  const __m256 sign_bit = _mm256_set1_ps(-0.0f);
  const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t b = 0; b < n / BLOCK; ++b) {
    const float* p = x + b * BLOCK;
    __m256 v0 = _mm256_loadu_ps(p), v1 = _mm256_loadu_ps(p + 8);
    __m256 v2 = _mm256_loadu_ps(p + 16), v3 = _mm256_loadu_ps(p + 24);
    __m256 amax = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign_bit, v0), _mm256_andnot_ps(sign_bit, v1)),
                                _mm256_max_ps(_mm256_andnot_ps(sign_bit, v2), _mm256_andnot_ps(sign_bit, v3)));
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    const float max_abs = _mm_cvtss_f32(m);
    dx[b] = max_abs / 127.0f;
    sx[b] = hsum(_mm256_add_ps(_mm256_add_ps(v0, v1), _mm256_add_ps(v2, v3)));
    const __m256 inv = _mm256_set1_ps(max_abs > 0.0f ? 127.0f / max_abs : 0.0f);
    // cvtps rounds to nearest even; packs keep the order of 4-int lanes, which the permute restores
    __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, inv)), i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, inv));
    __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, inv)), i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, inv));
    __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(xq + b * BLOCK), _mm256_permutevar8x32_epi32(packed, perm));
  }
}

struct QuantRows {  // the activation rows in int8 blocks, shared by every thread
  int64_t rows, k, blocks;
  std::vector<int8_t> q;
  std::vector<float> d, s, c;  // per block: scale dx, exact sum(x), dx * sum(xq)
  explicit QuantRows(const at::Tensor& x) : rows(x.size(0)), k(x.size(1)), blocks(k / BLOCK),
      q(rows * k), d(rows * blocks), s(rows * blocks), c(rows * blocks) {
    const float* p = x.data_ptr<float>();
    for (int64_t r = 0; r < rows; ++r)
      quantize_rows(p + r * k, k, q.data() + r * k, d.data() + r * blocks, s.data() + r * blocks);
    for (int64_t b = 0; b < rows * blocks; ++b) {
      int sum = 0;
      for (int64_t i = 0; i < BLOCK; ++i) sum += q[b * BLOCK + i];
      c[b] = d[b] * static_cast<float>(sum);
    }
  }
};

// One weight row of int4 groups against R (1..RB) activation rows starting at r0; returns the dot products.
template <int R>
inline void int4_row(const uint8_t* wq, const uint16_t* sz, const QuantRows& a, int64_t r0, float* out) {
  const int64_t G = a.blocks;
  const __m256i low4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wq + g * 16));
    const __m256i w = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(bytes, 4), bytes), low4);
    const __m256 scale = _mm256_set1_ps(bf16_to_float(sz[g]));
    for (int r = 0; r < R; ++r) {
      const int64_t row = r0 + r;
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q.data() + row * a.k + g * BLOCK));
      const __m256i dot = _mm256_madd_epi16(_mm256_maddubs_epi16(w, xv), ones);
      const __m256 part = _mm256_mul_ps(_mm256_cvtepi32_ps(dot), _mm256_broadcast_ss(&a.d[row * G + g]));
      acc[r] = _mm256_fmadd_ps(part, scale, acc[r]);
    }
  }
  // the zero term and the 8 of q - 8: sum over groups of zero * sum(x) - 8 * scale * dx * sum(xq)
  const __m256 minus8 = _mm256_set1_ps(-8.0f);
  for (int r = 0; r < R; ++r) {
    const float* sx = a.s.data() + (r0 + r) * G;
    const float* cx = a.c.data() + (r0 + r) * G;
    __m256 zacc = _mm256_setzero_ps();
    int64_t g = 0;
    for (; g + 8 <= G; g += 8) {
      const __m256i s16 = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sz + g)));
      const __m256i z16 = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sz + G + g)));
      const __m256 scale = _mm256_castsi256_ps(_mm256_slli_epi32(s16, 16));
      zacc = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(z16, 16)), _mm256_loadu_ps(sx + g), zacc);
      zacc = _mm256_fmadd_ps(_mm256_mul_ps(minus8, scale), _mm256_loadu_ps(cx + g), zacc);
    }
    float zero_term = hsum(zacc);
    for (; g < G; ++g) zero_term += bf16_to_float(sz[G + g]) * sx[g] - 8.0f * bf16_to_float(sz[g]) * cx[g];
    out[r] = hsum(acc[r]) + zero_term;
  }
}

// One int8 weight row against R activation rows starting at r0; returns the dot products before the scale.
template <int R>
inline void int8_row(const int8_t* w, const QuantRows& a, int64_t r0, float* out) {
  const int64_t G = a.blocks;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + g * BLOCK));
    const __m256i wabs = _mm256_sign_epi8(wv, wv);
    for (int r = 0; r < R; ++r) {
      const int64_t row = r0 + r;
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q.data() + row * a.k + g * BLOCK));
      const __m256i dot = _mm256_madd_epi16(_mm256_maddubs_epi16(wabs, _mm256_sign_epi8(xv, wv)), ones);
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_broadcast_ss(&a.d[row * G + g]), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r] = hsum(acc[r]);
}

// Runs row_fn<R>(n, r0, out) for every weight row n and every group of up to RB activation rows.
template <template <int> class Fn, typename... Args>
void each_row(int64_t N, int64_t rows, float* y, Args&&... args) {
  at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
    float out[RB];
    for (int64_t n = begin; n < end; ++n) {
      for (int64_t r0 = 0; r0 < rows; r0 += RB) {
        const int64_t R = std::min<int64_t>(RB, rows - r0);
        switch (R) {
          case 1: Fn<1>::run(n, r0, out, args...); break;
          case 2: Fn<2>::run(n, r0, out, args...); break;
          case 3: Fn<3>::run(n, r0, out, args...); break;
          default: Fn<4>::run(n, r0, out, args...); break;
        }
        for (int64_t r = 0; r < R; ++r) y[(r0 + r) * N + n] = out[r];
      }
    }
  });
}

template <int R>
struct Int4Row {
  static void run(int64_t n, int64_t r0, float* out, const uint8_t* q, const uint16_t* sz, const QuantRows& a) {
    int4_row<R>(q + n * (a.k / 2), sz + n * 2 * a.blocks, a, r0, out);
  }
};

template <int R>
struct Int8Row {
  static void run(int64_t n, int64_t r0, float* out, const int8_t* w, const uint16_t* scales, const QuantRows& a) {
    int8_row<R>(w + n * a.k, a, r0, out);
    const float s = bf16_to_float(scales[n]);
    for (int r = 0; r < R; ++r) out[r] *= s;
  }
};

void check_rows(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x: contiguous (R, K) float32");
  TORCH_CHECK(x.size(1) % BLOCK == 0, "K must be a multiple of 32");
}

at::Tensor add_bias(at::Tensor y, const std::optional<at::Tensor>& bias) {
  return bias.has_value() ? y.add_(bias->to(at::kFloat)) : y;
}

at::Tensor int4_rows(const at::Tensor& x, const at::Tensor& q, const at::Tensor& sz,
                     const std::optional<at::Tensor>& bias) {
  check_rows(x);
  const int64_t N = q.size(0), K = x.size(1);
  TORCH_CHECK(q.scalar_type() == at::kByte && q.is_contiguous() && q.size(1) == K / 2, "q: (N, K / 2) uint8");
  TORCH_CHECK(sz.scalar_type() == at::kBFloat16 && sz.is_contiguous() && sz.numel() == N * 2 * (K / BLOCK),
              "sz: (N, 2, K / 32) bfloat16");
  const QuantRows a(x);
  at::Tensor y = at::empty({x.size(0), N}, x.options());
  each_row<Int4Row>(N, a.rows, y.data_ptr<float>(), q.data_ptr<uint8_t>(),
                    reinterpret_cast<const uint16_t*>(sz.data_ptr<at::BFloat16>()), a);
  return add_bias(y, bias);
}

at::Tensor int8_rows(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scales,
                     const std::optional<at::Tensor>& bias) {
  check_rows(x);
  const int64_t N = w.size(0), K = x.size(1);
  TORCH_CHECK(w.scalar_type() == at::kChar && w.is_contiguous() && w.size(1) == K, "w: (N, K) int8");
  TORCH_CHECK(scales.scalar_type() == at::kBFloat16 && scales.is_contiguous() && scales.numel() == N,
              "scales: (N,) bfloat16");
  const QuantRows a(x);
  at::Tensor y = at::empty({x.size(0), N}, x.options());
  each_row<Int8Row>(N, a.rows, y.data_ptr<float>(), w.data_ptr<int8_t>(),
                    reinterpret_cast<const uint16_t*>(scales.data_ptr<at::BFloat16>()), a);
  return add_bias(y, bias);
}

}  // namespace

TORCH_LIBRARY(docent_kernels, m) {
  m.def("int4_rows(Tensor x, Tensor q, Tensor sz, Tensor? bias) -> Tensor", &int4_rows);
  m.def("int8_rows(Tensor x, Tensor w, Tensor scales, Tensor? bias) -> Tensor", &int8_rows);
}
