// matmul.cu: Y = X·Wᵀ for prefill, X (n_tokens, cols) in f32, W (rows, cols)
// in any stored type. Reference: f64 sums over kernels::quant::dequantize(W).
//
// Prefill reuses each weight for every token, so unlike decode's GEMV it can
// be compute-bound: the point of tiling is to load each weight and activation
// from global memory once per tile instead of once per output.
//   v1  one thread per output element: every thread re-reads a row of W and
//       of X from global memory (through L1/L2). The naive baseline.
//   v2  64×64 output tiles, k in steps of one block (32): 256 threads load a
//       tile of X and dequantize a tile of W into shared memory, then each
//       thread accumulates a 4×4 patch from registers. Per step: 2·64·32
//       loads feed 64·64·32 FMAs (32 per load, vs 0.5 in v1). Shared tiles
//       are stored k-major so the inner loop reads a row of each: W's
//       columns go to neighbouring threads (no bank conflicts), X's are
//       broadcast to the 16 threads that share them.
// cuBLAS would be the peer for f32/f16 weights; quantized weights need the
// dequantizing tile loader either way.

// x: (n, cols)   w: (rows, cols) of type ty   y: (n, rows)
extern "C" __global__ void matmul_v1(const float* x, const u8* w, int ty, float* y, int n, int rows,
                                     int cols) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    const int t = blockIdx.y;
    if (r >= rows || t >= n) return;
    const u8* row = w + (long long)r * row_bytes(ty, cols);
    const float* xr = x + (long long)t * cols;
    float acc = 0.0f;
    for (int k = 0; k < cols; k++) acc += dequant_at(row, ty, k) * xr[k];
    y[(long long)t * rows + r] = acc;
}

#define MM_BM 64  // tokens per tile
#define MM_BN 64  // weight rows per tile
#define MM_BK 32  // one quantized block

// blockDim 256; grid (ceil(rows / 64), ceil(n / 64)); cols % 32 == 0.
extern "C" __global__ void matmul_v2(const float* x, const u8* w, int ty, float* y, int n, int rows,
                                     int cols) {
    __shared__ float xs[MM_BK][MM_BM + 1];
    __shared__ float ws[MM_BK][MM_BN + 1];
    const int tid = threadIdx.x;
    const int tx = tid & 15, ty_ = tid >> 4;  // outputs: rows tx + 16j, tokens 4·ty_ + i
    const int n0 = blockIdx.x * MM_BN, m0 = blockIdx.y * MM_BM;
    const long long rb = row_bytes(ty, cols);
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;

    for (int k0 = 0; k0 < cols; k0 += MM_BK) {
        // 2,048 elements of each tile, 8 per thread; k fastest so a warp's
        // global reads of X are 128 consecutive bytes.
#pragma unroll
        for (int e = 0; e < 8; e++) {
            const int idx = tid + 256 * e;
            const int a = idx >> 5, k = idx & 31;
            const int m = m0 + a, r = n0 + a;
            xs[k][a] = m < n ? x[(long long)m * cols + k0 + k] : 0.0f;
            ws[k][a] = r < rows ? dequant_at(w + (long long)r * rb, ty, k0 + k) : 0.0f;
        }
        __syncthreads();
#pragma unroll 8
        for (int k = 0; k < MM_BK; k++) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; i++) a[i] = xs[k][4 * ty_ + i];
#pragma unroll
            for (int j = 0; j < 4; j++) b[j] = ws[k][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int m = m0 + 4 * ty_ + i;
        if (m >= n) continue;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int r = n0 + tx + 16 * j;
            if (r < rows) y[(long long)m * rows + r] = acc[i][j];
        }
    }
}
