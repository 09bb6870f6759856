// The machine's fp32 FMA peak: each thread runs 12 independent chains of 8-wide fused multiply-adds (AVX2),
// enough to keep both FMA pipes of a Zen 3 / Skylake core busy; no memory traffic. The upper bound for any
// fp32 matmul here, against which bench/ceiling.py's library matmul ceiling and a step's GFLOP/s can be read.
//
//   g++ -O3 -mavx2 -mfma -pthread bench/native/fma_peak.cc -o /tmp/fma_peak && /tmp/fma_peak 2
#include <immintrin.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

static float chains(long iters) {
  __m256 a[12];
  for (int i = 0; i < 12; i++) a[i] = _mm256_set1_ps(1.0f + i * 1e-3f);
  const __m256 m = _mm256_set1_ps(0.9999999f), c = _mm256_set1_ps(1e-7f);
  for (long k = 0; k < iters; k++) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++) a[i] = _mm256_fmadd_ps(a[i], m, c);
  }
  __m256 s = a[0];
  for (int i = 1; i < 12; i++) s = _mm256_add_ps(s, a[i]);
  float o[8];
  _mm256_storeu_ps(o, s);
  return o[0];  // used, so the chains are not optimised away
}

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  const long iters = 200000000;
  for (int rep = 0; rep < 3; rep++) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> pool;
    std::vector<float> out(threads);
    for (int i = 0; i < threads; i++) pool.emplace_back([&, i] { out[i] = chains(iters); });
    for (auto& t : pool) t.join();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("threads %d: %.1f GFLOP/s (check %g)\n", threads, threads * iters * 12.0 * 16 / s / 1e9, out[0]);
  }
}
