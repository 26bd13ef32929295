// Decode-row matrix-vector products for lm.quant on AVX2 + FMA CPUs, and on AVX-512 VNNI ones (see
// lm/kernels/__init__.py).
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
//
// VNNI: the library is compiled for AVX2 (it must load on any CPU with AVX2), and int4_row_vnni / int8_row_vnni
// alone are compiled for AVX-512 VNNI (VNNI_TARGET), taken when the CPU has it (use_vnni() forces the AVX2 ones,
// for tests and benchmarks). _mm512_dpbusd_epi32 does maddubs + madd in one instruction, into 32-bit sums that
// cannot saturate, and a 512-bit register covers two blocks of 32: per pair of blocks, lanes 0-7 hold the first
// block's sums and lanes 8-15 the second's, so each row's block scales dx are laid out once per call as 16
// floats per pair (QuantRows::d16). The integer sums are the same as the AVX2 kernels' (neither saturates);
// only the order of the float additions differs.

#include <immintrin.h>

#include <ATen/Functions.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t BLOCK = 32;  // activation block = weight group
constexpr int RB = 4;          // activation rows per pass over a weight row (accumulators stay in registers)

#define VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

bool cpu_has_vnni() {
  __builtin_cpu_init();  // vnni_on is set by a static initializer, which may run before libgcc's own
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}

std::atomic<bool> vnni_on{cpu_has_vnni()};  // which kernels int4_rows and int8_rows take (use_vnni)

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
  int64_t rows, k, blocks, pairs;
  std::vector<int8_t> q;
  std::vector<float> d, s, c;  // per block: scale dx, exact sum(x), dx * sum(xq)
  std::vector<float> d16;      // VNNI kernels only: per row and pair of blocks, 8 x its first dx, 8 x its second
  QuantRows(const at::Tensor& x, bool vnni) : rows(x.size(0)), k(x.size(1)), blocks(k / BLOCK), pairs(blocks / 2),
      q(rows * k), d(rows * blocks), s(rows * blocks), c(rows * blocks), d16(vnni ? rows * pairs * 16 : 0) {
    const float* p = x.data_ptr<float>();
    for (int64_t r = 0; r < rows; ++r)
      quantize_rows(p + r * k, k, q.data() + r * k, d.data() + r * blocks, s.data() + r * blocks);
    for (int64_t b = 0; b < rows * blocks; ++b) {
      int sum = 0;
      for (int64_t i = 0; i < BLOCK; ++i) sum += q[b * BLOCK + i];
      c[b] = d[b] * static_cast<float>(sum);
    }
    for (int64_t r = 0; r < rows && vnni; ++r)
      for (int64_t p = 0; p < pairs; ++p)
        for (int i = 0; i < 16; ++i) d16[(r * pairs + p) * 16 + i] = d[r * blocks + 2 * p + i / 8];
  }
};

// The part of an int4 row's dot product with activation row `row` that needs no weights' values: the zero term and
// the 8 of q - 8, sum over groups of zero * sum(x) - 8 * scale * dx * sum(xq).
inline float int4_zero_term(const uint16_t* sz, const QuantRows& a, int64_t row) {
  const int64_t G = a.blocks;
  const float* sx = a.s.data() + row * G;
  const float* cx = a.c.data() + row * G;
  const __m256 minus8 = _mm256_set1_ps(-8.0f);
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
  return zero_term;
}

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
  for (int r = 0; r < R; ++r) out[r] = hsum(acc[r]) + int4_zero_term(sz, a, r0 + r);
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

// int4_row with VNNI: two groups per step (see the header).
template <int R>
VNNI_TARGET inline void int4_row_vnni(const uint8_t* wq, const uint16_t* sz, const QuantRows& a, int64_t r0,
                                      float* out) {
  const int64_t G = a.blocks;
  const __m512i low4 = _mm512_set1_epi8(0x0F), high16 = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  int64_t g = 0;
  for (; g + 2 <= G; g += 2) {
    // 32 bytes, groups g and g + 1; the low nibbles are a group's first 16 values, the high ones its last 16.
    // 128-bit lanes [g low, g+1 low, g high, g+1 high], reordered to the activations' [g low, g high, g+1 ...]
    const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wq + g * 16));
    const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(bytes), _mm256_srli_epi16(bytes, 4), 1);
    const __m512i w = _mm512_and_si512(_mm512_shuffle_i64x2(both, both, _MM_SHUFFLE(3, 1, 2, 0)), low4);
    // the two groups' bf16 scales as floats (bf16 is a float's high half): g's in lanes 0-7, g + 1's in 8-15
    uint32_t two;
    std::memcpy(&two, sz + g, sizeof two);
    const __m512i s2 = _mm512_set1_epi32(static_cast<int>(two));
    const __m512 scale = _mm512_castsi512_ps(_mm512_mask_slli_epi32(_mm512_and_si512(s2, high16), 0x00FF, s2, 16));
    for (int r = 0; r < R; ++r) {
      const int64_t row = r0 + r;
      const __m512i xv = _mm512_loadu_si512(a.q.data() + row * a.k + g * BLOCK);
      const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, xv);
      const __m512 part = _mm512_mul_ps(_mm512_cvtepi32_ps(dot), _mm512_loadu_ps(&a.d16[(row * a.pairs + g / 2) * 16]));
      acc[r] = _mm512_fmadd_ps(part, scale, acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    const int64_t row = r0 + r;
    float sum = _mm512_reduce_add_ps(acc[r]);
    if (g < G) {  // an odd number of groups: the last one alone, in 256 bits
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wq + g * 16));
      const __m256i w = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(bytes, 4), bytes), _mm256_set1_epi8(0x0F));
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q.data() + row * a.k + g * BLOCK));
      const __m256i dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, xv);
      sum += hsum(_mm256_cvtepi32_ps(dot)) * a.d[row * G + g] * bf16_to_float(sz[g]);
    }
    out[r] = sum + int4_zero_term(sz, a, row);
  }
}

// int8_row with VNNI. dpbusd multiplies unsigned bytes by signed ones: |w| by x with w's sign, as int8_row does,
// the sign applied with a mask (AVX-512 has no sign_epi8).
template <int R>
VNNI_TARGET inline void int8_row_vnni(const int8_t* w, const QuantRows& a, int64_t r0, float* out) {
  const int64_t G = a.blocks;
  const __m512i zero = _mm512_setzero_si512();
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  int64_t g = 0;
  for (; g + 2 <= G; g += 2) {
    const __m512i wv = _mm512_loadu_si512(w + g * BLOCK);
    const __m512i wabs = _mm512_abs_epi8(wv);
    const __mmask64 negative = _mm512_movepi8_mask(wv);
    for (int r = 0; r < R; ++r) {
      const int64_t row = r0 + r;
      const __m512i xv = _mm512_loadu_si512(a.q.data() + row * a.k + g * BLOCK);
      const __m512i dot = _mm512_dpbusd_epi32(zero, wabs, _mm512_mask_sub_epi8(xv, negative, zero, xv));
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_loadu_ps(&a.d16[(row * a.pairs + g / 2) * 16]), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    const int64_t row = r0 + r;
    float sum = _mm512_reduce_add_ps(acc[r]);
    if (g < G) {  // an odd number of blocks: the last one alone, in 256 bits
      const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + g * BLOCK));
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q.data() + row * a.k + g * BLOCK));
      const __m256i dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(wv, wv),
                                              _mm256_sign_epi8(xv, wv));
      sum += hsum(_mm256_cvtepi32_ps(dot)) * a.d[row * G + g];
    }
    out[r] = sum;
  }
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
struct Int4RowVnni {
  VNNI_TARGET static void run(int64_t n, int64_t r0, float* out, const uint8_t* q, const uint16_t* sz,
                              const QuantRows& a) {
    int4_row_vnni<R>(q + n * (a.k / 2), sz + n * 2 * a.blocks, a, r0, out);
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

template <int R>
struct Int8RowVnni {
  VNNI_TARGET static void run(int64_t n, int64_t r0, float* out, const int8_t* w, const uint16_t* scales,
                              const QuantRows& a) {
    int8_row_vnni<R>(w + n * a.k, a, r0, out);
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

// Both ops after their checks: quantize x's rows once (for the kernel taken), then every output row through the
// VNNI kernel Vnni or the AVX2 kernel Avx2, then the bias.
template <template <int> class Avx2, template <int> class Vnni, typename W>
at::Tensor rows_through(const at::Tensor& x, int64_t N, const W* w, const at::Tensor& scales,
                        const std::optional<at::Tensor>& bias) {
  const bool vnni = vnni_on.load();
  const QuantRows a(x, vnni);
  at::Tensor y = at::empty({x.size(0), N}, x.options());
  const auto* sp = reinterpret_cast<const uint16_t*>(scales.data_ptr<at::BFloat16>());
  if (vnni)
    each_row<Vnni>(N, a.rows, y.data_ptr<float>(), w, sp, a);
  else
    each_row<Avx2>(N, a.rows, y.data_ptr<float>(), w, sp, a);
  return add_bias(y, bias);
}

at::Tensor int4_rows(const at::Tensor& x, const at::Tensor& q, const at::Tensor& sz,
                     const std::optional<at::Tensor>& bias) {
  check_rows(x);
  const int64_t N = q.size(0), K = x.size(1);
  TORCH_CHECK(q.scalar_type() == at::kByte && q.is_contiguous() && q.size(1) == K / 2, "q: (N, K / 2) uint8");
  TORCH_CHECK(sz.scalar_type() == at::kBFloat16 && sz.is_contiguous() && sz.numel() == N * 2 * (K / BLOCK),
              "sz: (N, 2, K / 32) bfloat16");
  return rows_through<Int4Row, Int4RowVnni>(x, N, q.data_ptr<uint8_t>(), sz, bias);
}

at::Tensor int8_rows(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scales,
                     const std::optional<at::Tensor>& bias) {
  check_rows(x);
  const int64_t N = w.size(0), K = x.size(1);
  TORCH_CHECK(w.scalar_type() == at::kChar && w.is_contiguous() && w.size(1) == K, "w: (N, K) int8");
  TORCH_CHECK(scales.scalar_type() == at::kBFloat16 && scales.is_contiguous() && scales.numel() == N,
              "scales: (N,) bfloat16");
  return rows_through<Int8Row, Int8RowVnni>(x, N, w.data_ptr<int8_t>(), scales, bias);
}

// Whether int4_rows and int8_rows take the VNNI kernels: asked for and the CPU has them; returns the answer.
bool use_vnni(bool enabled) {
  vnni_on = enabled && cpu_has_vnni();
  return vnni_on;
}

bool vnni_supported() { return cpu_has_vnni(); }

bool vnni_taken() { return vnni_on; }

}  // namespace

TORCH_LIBRARY(docent_kernels, m) {
  m.def("int4_rows(Tensor x, Tensor q, Tensor sz, Tensor? bias) -> Tensor", &int4_rows);
  m.def("int8_rows(Tensor x, Tensor w, Tensor scales, Tensor? bias) -> Tensor", &int8_rows);
  m.def("use_vnni(bool enabled) -> bool", &use_vnni);
  m.def("vnni_supported() -> bool", &vnni_supported);
  m.def("vnni_taken() -> bool", &vnni_taken);
}
