// One decode step of an attnlab decoder LLM with quantized weights, in one call: the Llama
// family (RMSNorm, RoPE, grouped-query attention, SwiGLU) and Gemma 3 (the same with norms
// around each sublayer, QK-norm, GELU-tanh, local layers with a sliding window): the embedding,
// every layer's norms, projections, RoPE, cache write, attention over the cache and MLP, then the
// final norm and the unembedding. Built and loaded by attnlab/models/native_build.py (ctypes, no
// torch headers); driven by attnlab/models/fast_decode.py, which packs the weights and keeps
// the caches.
//
// Why: a decode step in PyTorch is ~190 small operator calls per layer plus the Python issuing
// them (benchmarks/llm/decode_profile.py); here it is one call per token.
//
// Weights are matrix-vector products over tiles of 16 output rows and blocks of 32 inputs. The
// activation vector is quantized per block of 32 to 16 bits, xq = 256·hi + lo with int8 halves,
// so that AVX-512 VNNI's vpdpbusd sums 4 int8 products per lane (twice: hi, then lo).
//   fmt 4 (GGUF Q4_1 / attnlab Int4Linear): w = d·q + m, q in [0, 15], per row and block.
//     w: uint8 [N/16][K/32][4][64]: byte 4r + e of vector j holds row 16t + r's inputs
//        32b + 8j + e (low nibble) and 32b + 8j + 4 + e (high nibble).
//     a: d float [N/16][K/32][16]; b: m float [N/16][K/32][16].
//     y_r = Σ_b d_rb · sx_b · Σ_j q_j xq_j + m_rb · Σ_j x_j      (x ≈ sx_b · xq per block)
//   fmt 8 (attnlab Int8Linear): w = s_r · q, q int8, one scale per row.
//     w: int8 [N/16][K/32][8][64]: byte 4r + e of vector c is row 16t + r, input 32b + 4c + e.
//     a: s float [N]; b: int32 [N/16][K/32][16], Σ_j q_j per row and block.
//     vpdpbusd takes its unsigned operand from x: hi + 128 and lo + 128, corrected by 128 · Σ q.
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__) && defined(__AVX512VNNI__) && defined(__AVX512BW__)
#include <immintrin.h>
#define ATTNLAB_VNNI 1
#else
#define ATTNLAB_VNNI 0
#endif

extern "C" {

typedef struct {
  int32_t fmt, N, K;  // 4 or 8; rows, inputs (N % 16 == 0, K % 32 == 0)
  const void* w;
  const float* a;
  const void* b;
  const float* bias;  // [N] or NULL
} QWeight;

// Projections in the order q, k, v, o, gate, up, down. Consecutive ones of one format may be
// stacked by rows into the first of them (q/k/v, gate/up: one pass over x); the others are then
// left with N == 0. Outputs of q, k, v (and of gate, up) land side by side either way.
enum { P_Q, P_K, P_V, P_O, P_GATE, P_UP, P_DOWN, N_PROJ };

typedef struct {
  const float* attn_norm;       // [E]
  const float* mlp_norm;        // [E]
  const float* post_attn_norm;  // [E] Gemma 3: norm of the attention's output; NULL: none
  const float* post_mlp_norm;   // [E] Gemma 3: norm of the MLP's output; NULL: none
  const float* q_norm;          // [Dh] Gemma 3: RMSNorm of each query head before RoPE; NULL: none
  const float* k_norm;          // [Dh] the same for each key head
  float scale;                  // attention scale (1/sqrt(Dh); Gemma 3: query_pre_attn_scalar^-1/2)
  int32_t window;               // keys a query sees, itself included; 0: the whole past
  QWeight proj[N_PROJ];
} Layer;

typedef struct {
  int32_t E, H, Hkv, Dh, I, n_layers, V;
  float eps;                // RMSNorm epsilon
  float norm_offset;        // RMSNorm multiplies by (w + offset): 0 Llama, 1 Gemma (weights around 0)
  int32_t act;              // the gated MLP's activation: 0 SiLU (SwiGLU), 1 GELU, tanh form (GeGLU)
  float embed_scale;        // embeddings times this (Gemma: sqrt(E) rounded to float32; Llama: 1)
  float softcap;            // logits = softcap·tanh(logits / softcap); 0: none
  const Layer* layers;
  const float* embedding;   // [V][E]
  const float* final_norm;  // [E]
  QWeight unembed;          // (V, E)
} Model;

int attnlab_vnni(void) { return ATTNLAB_VNNI; }

}  // extern "C"

// An activation vector quantized per block of 32 to 16 bits, x ≈ sx_b · (256 · hi + lo), held
// as two int8 halves for two vpdpbusd passes. 8 bits alone (llama.cpp's q8 activations) moved
// SmolLM2's logits up to 1.4 against 0.3 with 16 (max over decode steps, against torch's int4
// path), at the same speed: the step is bound by reading the weights, not by these sums.
typedef struct {
  int8_t* hi;
  int8_t* lo;
  float* sx;  // [K/32] the block's scale
  float* xs;  // [K/32] Σ x over the block (Q4's m term)
} Act;

static void quantize_blocks(const float* x, int K, const Act* A) {
  for (int b = 0; b < K / 32; b++) {
    const float* p = x + 32 * b;
    float amax = 0.f, s = 0.f;
    for (int j = 0; j < 32; j++) {
      amax = fmaxf(amax, fabsf(p[j]));
      s += p[j];
    }
    if (!isfinite(amax) || !isfinite(s)) {  // a NaN/inf in the block: the products are NaN, as in float
      memset(A->hi + 32 * b, 0, 32);
      memset(A->lo + 32 * b, 0, 32);
      A->sx[b] = A->xs[b] = NAN;
      continue;
    }
    const float d = amax / 32639.f, id = d > 0.f ? 1.f / d : 0.f;
    for (int j = 0; j < 32; j++) {
      const int v = (int)nearbyintf(p[j] * id);
      const int h = (v + 128) >> 8;  // floor((v + 128) / 256): v - 256 h in [-128, 127]
      A->hi[32 * b + j] = (int8_t)h;
      A->lo[32 * b + j] = (int8_t)(v - 256 * h);
    }
    A->sx[b] = d;
    A->xs[b] = s;
  }
}

#if ATTNLAB_VNNI
// 4 consecutive int8 activations as one 32-bit lane value (memcpy: no aliasing through int32_t*)
static inline __m512i bcast4(const int8_t* p) {
  int32_t v;
  memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// Σ over one block of 16 rows' int products with the block's activations, int32 per row.
static inline __m512i block_q4(const uint8_t* wb, const int8_t* hb, const int8_t* lb) {
  const __m512i mask = _mm512_set1_epi8(0x0F);
  __m512i sh = _mm512_setzero_si512(), sl = _mm512_setzero_si512();
  for (int j = 0; j < 4; j++) {
    const __m512i v = _mm512_loadu_si512(wb + 64 * j);
    const __m512i a = _mm512_and_si512(v, mask), c = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask);
    sh = _mm512_dpbusd_epi32(sh, a, bcast4(hb + 8 * j));
    sh = _mm512_dpbusd_epi32(sh, c, bcast4(hb + 8 * j + 4));
    sl = _mm512_dpbusd_epi32(sl, a, bcast4(lb + 8 * j));
    sl = _mm512_dpbusd_epi32(sl, c, bcast4(lb + 8 * j + 4));
  }
  return _mm512_add_epi32(_mm512_slli_epi32(sh, 8), sl);
}

static inline __m512i block_q8(const int8_t* wb, const int32_t* sums, const int8_t* hb, const int8_t* lb) {
  const __m512i flip = _mm512_set1_epi8((char)0x80);  // x + 128: vpdpbusd's unsigned operand
  __m512i sh = _mm512_setzero_si512(), sl = _mm512_setzero_si512();
  for (int c = 0; c < 8; c++) {
    const __m512i w = _mm512_loadu_si512(wb + 64 * c);
    sh = _mm512_dpbusd_epi32(sh, _mm512_xor_si512(bcast4(hb + 4 * c), flip), w);
    sl = _mm512_dpbusd_epi32(sl, _mm512_xor_si512(bcast4(lb + 4 * c), flip), w);
  }
  const __m512i corr = _mm512_slli_epi32(_mm512_loadu_si512(sums), 7);  // 128 · Σ w
  return _mm512_add_epi32(_mm512_slli_epi32(_mm512_sub_epi32(sh, corr), 8), _mm512_sub_epi32(sl, corr));
}

static void tiles_vnni(const QWeight* W, int t0, int t1, const Act* A, float* y) {
  const int B = W->K / 32;
  for (int t = t0; t < t1; t++) {
    __m512 acc = _mm512_setzero_ps();
    for (int b = 0; b < B; b++) {
      const int8_t* hb = A->hi + 32 * b;  // 4 int8 inputs per 32-bit lane
      const int8_t* lb = A->lo + 32 * b;
      const size_t tb = (size_t)t * B + b;
      if (W->fmt == 4) {
        const __m512i isum = block_q4((const uint8_t*)W->w + 256 * tb, hb, lb);
        const __m512 d = _mm512_mul_ps(_mm512_loadu_ps(W->a + 16 * tb), _mm512_set1_ps(A->sx[b]));
        acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(isum), acc);
        acc = _mm512_fmadd_ps(_mm512_loadu_ps((const float*)W->b + 16 * tb), _mm512_set1_ps(A->xs[b]), acc);
      } else {
        const __m512i isum = block_q8((const int8_t*)W->w + 512 * tb, (const int32_t*)W->b + 16 * tb, hb, lb);
        acc = _mm512_fmadd_ps(_mm512_set1_ps(A->sx[b]), _mm512_cvtepi32_ps(isum), acc);
      }
    }
    if (W->fmt == 8) acc = _mm512_mul_ps(acc, _mm512_loadu_ps(W->a + 16 * t));
    if (W->bias) acc = _mm512_add_ps(acc, _mm512_loadu_ps(W->bias + 16 * t));
    _mm512_storeu_ps(y + 16 * t, acc);
  }
}
#endif

// The same sums in plain loops (machines without AVX-512 VNNI; the compiler vectorizes).
[[maybe_unused]] static void tiles_plain(const QWeight* W, int t0, int t1, const Act* A, float* y) {
  const int B = W->K / 32;
  for (int t = t0; t < t1; t++) {
    float acc[16] = {0};
    for (int b = 0; b < B; b++) {
      int32_t isum[16] = {0};
      const size_t tb = (size_t)t * B + b;
      for (int part = 0; part < 2; part++) {  // hi (·256), then lo
        const int8_t* x = (part ? A->lo : A->hi) + 32 * b;
        const int shift = part == 0 ? 8 : 0;
        int32_t s[16] = {0};
        if (W->fmt == 4) {
          const uint8_t* wb = (const uint8_t*)W->w + 256 * tb;
          for (int j = 0; j < 4; j++)
            for (int r = 0; r < 16; r++)
              for (int e = 0; e < 4; e++) {
                const uint8_t v = wb[64 * j + 4 * r + e];
                s[r] += (v & 15) * x[8 * j + e] + (v >> 4) * x[8 * j + 4 + e];
              }
        } else {
          const int8_t* wb = (const int8_t*)W->w + 512 * tb;
          for (int c = 0; c < 8; c++)
            for (int r = 0; r < 16; r++)
              for (int e = 0; e < 4; e++) s[r] += wb[64 * c + 4 * r + e] * x[4 * c + e];
        }
        for (int r = 0; r < 16; r++) isum[r] += s[r] * (1 << shift);
      }
      if (W->fmt == 4) {
        const float* d = W->a + 16 * tb;
        const float* m = (const float*)W->b + 16 * tb;
        for (int r = 0; r < 16; r++) acc[r] += d[r] * A->sx[b] * (float)isum[r] + m[r] * A->xs[b];
      } else {
        for (int r = 0; r < 16; r++) acc[r] += A->sx[b] * (float)isum[r];
      }
    }
    for (int r = 0; r < 16; r++) {
      const float v = W->fmt == 8 ? acc[r] * W->a[16 * t + r] : acc[r];
      y[16 * t + r] = W->bias ? v + W->bias[16 * t + r] : v;
    }
  }
}

static void gemv_tiles(const QWeight* W, int t0, int t1, const Act* A, float* y) {
#if ATTNLAB_VNNI
  tiles_vnni(W, t0, t1, A, y);
#else
  tiles_plain(W, t0, t1, A, y);
#endif
}

// y [N] = W x, x already quantized; rows split over nt threads. N == 0: nothing (stacked away).
static void gemv(const QWeight* W, const Act* A, float* y, int nt) {
  const int T = W->N / 16;
  if (T == 0) return;
  if (nt <= 1) {
    gemv_tiles(W, 0, T, A, y);
    return;
  }
#pragma omp parallel num_threads(nt)
  {
#ifdef _OPENMP
    const int i = omp_get_thread_num(), n = omp_get_num_threads();
#else
    const int i = 0, n = 1;
#endif
    gemv_tiles(W, (int)((long)T * i / n), (int)((long)T * (i + 1) / n), A, y);
  }
}

static void rmsnorm(const float* x, const float* w, int E, float eps, float offset, float* out) {
  float ss = 0.f;
  for (int i = 0; i < E; i++) ss += x[i] * x[i];
  const float r = 1.f / sqrtf(ss / (float)E + eps);
  for (int i = 0; i < E; i++) out[i] = x[i] * r * (w[i] + offset);
}

// RoPE, "rotate half" layout (GPT-NeoX, HF): pairs (i, i + Dh/2); cos/sin [Dh] of this position.
static void rope(float* v, int Dh, const float* cos, const float* sin) {
  const int h = Dh / 2;
  for (int i = 0; i < h; i++) {
    const float a = v[i], b = v[i + h];
    v[i] = a * cos[i] - b * sin[i];
    v[i + h] = b * cos[i + h] + a * sin[i + h];
  }
}

// One query head over keys [t0, n) of its K/V head (Hkv's rows are (cap, Dh)): z [Dh].
static void attend(const float* q, const float* K, const float* V, int t0, int n, int Dh, float scale,
                   float* s, float* z) {
  float mx = -INFINITY;
  for (int t = t0; t < n; t++) {
    float d = 0.f;
    for (int j = 0; j < Dh; j++) d += q[j] * K[(size_t)t * Dh + j];
    s[t] = d * scale;
    mx = fmaxf(mx, s[t]);
  }
  float sum = 0.f;
  for (int t = t0; t < n; t++) {
    s[t] = expf(s[t] - mx);
    sum += s[t];
  }
  for (int j = 0; j < Dh; j++) z[j] = 0.f;
  for (int t = t0; t < n; t++) {
    const float p = s[t] / sum;
    for (int j = 0; j < Dh; j++) z[j] += p * V[(size_t)t * Dh + j];
  }
}

static float gelu_tanh(float x) {  // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
  return 0.5f * x * (1.f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}

// The widest vector quantized for a projection: max(E, H·Dh, I) (the int8 halves' size).
static int widest(const Model* M) {
  const int Q = M->H * M->Dh, w = M->I > M->E ? M->I : M->E;
  return Q > w ? Q : w;
}

extern "C" {

// Scratch sizes the caller allocates (floats; the int8 parts are carved from it too).
int64_t decode_scratch(const Model* M, int64_t max_positions) {
  const int64_t Q = (int64_t)M->H * M->Dh, KV = (int64_t)M->Hkv * M->Dh;
  const int64_t K = widest(M);
  return 2 * M->E + Q + 2 * KV + Q + 2 * (int64_t)M->I + (int64_t)M->H * max_positions + K / 2 + K / 16 + 64;
}

// One token through every layer. pos = positions already cached (the new token's position);
// kc/vc[l]: layer l's cache (Hkv, caps[l], Dh), row pos written here; cos/sin[l]: [Dh] of pos
// in layer l's RoPE table; logits [V]. Returns 1 if every value written to the caches is finite.
int decode_step(const Model* M, int32_t token, int32_t pos, float* const* kc, float* const* vc,
                const int64_t* caps, const float* const* cos, const float* const* sin, float* logits,
                float* scratch, int32_t nt) {
  const int E = M->E, H = M->H, Hkv = M->Hkv, Dh = M->Dh, I = M->I;
  const int Q = H * Dh, KV = Hkv * Dh, group = H / Hkv, n = pos + 1;
  const float eps = M->eps, off = M->norm_offset;
  float* x = scratch;                 // [E] the residual stream
  float* h = x + E;                   // [E] normed
  float* qkv = h + E;                 // [Q + 2 KV]
  float* z = qkv + Q + 2 * KV;        // [Q] attention output per head
  float* gu = z + Q;                  // [2 I]
  float* scores = gu + 2 * I;         // [H][n]
  const int K = widest(M);
  int8_t* hi = (int8_t*)(scores + (size_t)H * n);  // [K]
  Act A = {hi, hi + K, (float*)(hi + 2 * K), (float*)(hi + 2 * K) + K / 32};
  int finite = 1;
  for (int i = 0; i < E; i++) x[i] = M->embedding[(size_t)token * E + i] * M->embed_scale;
  for (int l = 0; l < M->n_layers; l++) {
    const Layer* L = M->layers + l;
    const int64_t cap = caps[l];
    rmsnorm(x, L->attn_norm, E, eps, off, h);
    quantize_blocks(h, E, &A);
    for (int p = P_Q, row = 0; p <= P_V; row += L->proj[p].N, p++) gemv(&L->proj[p], &A, qkv + row, nt);
    float *q = qkv, *k = qkv + Q, *v = qkv + Q + KV;
    for (int i = 0; i < H; i++) {
      if (L->q_norm) rmsnorm(q + i * Dh, L->q_norm, Dh, eps, off, q + i * Dh);
      rope(q + i * Dh, Dh, cos[l], sin[l]);
    }
    for (int g = 0; g < Hkv; g++) {
      if (L->k_norm) rmsnorm(k + g * Dh, L->k_norm, Dh, eps, off, k + g * Dh);
      rope(k + g * Dh, Dh, cos[l], sin[l]);
      memcpy(kc[l] + ((size_t)g * cap + pos) * Dh, k + g * Dh, sizeof(float) * Dh);
      memcpy(vc[l] + ((size_t)g * cap + pos) * Dh, v + g * Dh, sizeof(float) * Dh);
    }
    float vsum = 0.f;
    for (int i = 0; i < KV; i++) vsum += v[i];
    finite &= isfinite(vsum) ? 1 : 0;
    const int t0 = L->window > 0 && n > L->window ? n - L->window : 0;  // a local layer's first key
#pragma omp parallel for num_threads(nt) if (nt > 1 && n - t0 >= 256)
    for (int i = 0; i < H; i++) {
      const size_t g = (size_t)(i / group) * cap * Dh;
      attend(q + i * Dh, kc[l] + g, vc[l] + g, t0, n, Dh, L->scale, scores + (size_t)i * n, z + i * Dh);
    }
    quantize_blocks(z, Q, &A);
    gemv(&L->proj[P_O], &A, h, nt);
    if (L->post_attn_norm) rmsnorm(h, L->post_attn_norm, E, eps, off, h);
    for (int i = 0; i < E; i++) x[i] += h[i];
    rmsnorm(x, L->mlp_norm, E, eps, off, h);
    quantize_blocks(h, E, &A);
    for (int p = P_GATE, row = 0; p <= P_UP; row += L->proj[p].N, p++) gemv(&L->proj[p], &A, gu + row, nt);
    for (int i = 0; i < I; i++)  // act(gate) · up
      gu[i] = (M->act ? gelu_tanh(gu[i]) : gu[i] / (1.f + expf(-gu[i]))) * gu[I + i];
    quantize_blocks(gu, I, &A);
    gemv(&L->proj[P_DOWN], &A, h, nt);
    if (L->post_mlp_norm) rmsnorm(h, L->post_mlp_norm, E, eps, off, h);
    for (int i = 0; i < E; i++) x[i] += h[i];
  }
  rmsnorm(x, M->final_norm, E, eps, off, h);
  quantize_blocks(h, E, &A);
  gemv(&M->unembed, &A, logits, nt);
  if (M->softcap > 0.f)
    for (int i = 0; i < M->V; i++) logits[i] = M->softcap * tanhf(logits[i] / M->softcap);
  return finite;
}

}  // extern "C"
