// gemv.cu: y = W·x for decode, W quantized (ggml blocks of 32), x in f32.
// Reference: the f64 dot of kernels::quant::dequantize(W) with x (the CPU's
// kernels::qdot quantizes x to 8 bits first, as llama.cpp does; these keep x
// in f32, so they are closer to the exact product, not bit-equal to the CPU).
//
// Decode at batch 1 reads every weight once per token and does 2 flops per
// weight: 0.9 flop per byte of Q8_0, far below any GPU's ridge point, so the
// roofline is memory bandwidth. The variants differ in how a warp's loads
// line up with 32-byte sectors:
//   v1  one thread per row: neighbouring threads read addresses a whole row
//       apart, each sector brings one thread 32 useful bytes at best and the
//       warp issues 32 separate streams. The naive baseline.
//   v2  one warp per row, one lane per block: a warp reads 32 consecutive
//       blocks (1,088 bytes of Q8_0) per step, coalesced; but a row of 576
//       weights has only 18 blocks, so 14 lanes idle on SmolLM2's d_model.
//   v3  one warp per row, 8 lanes per block, 4 weights per lane: a step
//       covers 4 blocks with every lane busy and 4-byte loads; and up to
//       8 activation vectors share each weight load (batched decode reads
//       the weights once for the batch).
// x is read through the read-only cache: every row reads all of it.

// w: (rows, cols) of type ty   x: (cols,)   y: (rows,)
extern "C" __global__ void gemv_v1(const u8* w, int ty, const float* __restrict__ x,
                                   float* y, int rows, int cols) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    const u8* row = w + (long long)r * row_bytes(ty, cols);
    float acc = 0.0f;
    for (int k = 0; k < cols; k++) acc += dequant_at(row, ty, k) * x[k];
    y[r] = acc;
}

// Block scale times the 32-weight dot with x[0..32] (x already offset).
__device__ __forceinline__ float block_dot(const u8* blk, int ty, const float* __restrict__ x) {
    float s = 0.0f;
    switch (ty) {
    case TY_Q8_0:
#pragma unroll 8
        for (int j = 0; j < QK; j++) s += (float)(i8)blk[2 + j] * x[j];
        return load_f16(blk) * s;
    case TY_Q4_0:
#pragma unroll 8
        for (int j = 0; j < 16; j++)
            s += (float)((blk[2 + j] & 0xF) - 8) * x[j] + (float)((blk[2 + j] >> 4) - 8) * x[j + 16];
        return load_f16(blk) * s;
    case TY_Q4_1: {
        float sx = 0.0f;
#pragma unroll 8
        for (int j = 0; j < 16; j++) {
            s += (float)(blk[4 + j] & 0xF) * x[j] + (float)(blk[4 + j] >> 4) * x[j + 16];
            sx += x[j] + x[j + 16];
        }
        return load_f16(blk) * s + load_f16(blk + 2) * sx;
    }
    }
    return 0.0f;
}

// One warp per row (blockDim 128: 4 rows per block). Quantized types only.
extern "C" __global__ void gemv_v2(const u8* w, int ty, const float* __restrict__ x,
                                   float* y, int rows, int cols) {
    const int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (r >= rows) return;
    const int n_blocks = cols / QK;
    const int bb = ty == TY_Q8_0 ? Q8_0_BYTES : ty == TY_Q4_0 ? Q4_0_BYTES : Q4_1_BYTES;
    const u8* row = w + (long long)r * n_blocks * bb;
    float acc = 0.0f;
    for (int b = lane; b < n_blocks; b += 32) acc += block_dot(row + b * bb, ty, x + b * QK);
    acc = warp_sum(acc);
    if (lane == 0) y[r] = acc;
}

#define GEMV_MAX_VECS 8

// 4 weights of a block for sub-lane s (0..8): weights 4s..4s+4, as floats.
__device__ __forceinline__ void quad(const u8* blk, int ty, int s, float* wq, float& d, float& m) {
    d = load_f16(blk);
    m = 0.0f;
    if (ty == TY_Q8_0) {
        // qs starts at byte 2 of a 34-byte block: 2-aligned, so two u16 loads.
        const u16* q = reinterpret_cast<const u16*>(blk + 2 + 4 * s);
        const u16 a = q[0], b = q[1];
        wq[0] = (float)(i8)(a & 0xFF);
        wq[1] = (float)(i8)(a >> 8);
        wq[2] = (float)(i8)(b & 0xFF);
        wq[3] = (float)(i8)(b >> 8);
    } else {
        // Q4_x: weights j < 16 are low nibbles of qs[j], j >= 16 high nibbles
        // of qs[j - 16]; sub-lane s's four weights share one shift.
        const int qoff = ty == TY_Q4_1 ? 4 : 2;
        const int shift = s < 4 ? 0 : 4;
        const u8* q = blk + qoff + 4 * (s & 3);
        const float zero = ty == TY_Q4_0 ? 8.0f : 0.0f;
#pragma unroll
        for (int j = 0; j < 4; j++) wq[j] = (float)((q[j] >> shift) & 0xF) - zero;
        if (ty == TY_Q4_1) m = load_f16(blk + 2);
    }
}

// One warp per row; lane = 8·(block within the step) + sub-lane. x: (n_vecs, cols),
// y: (n_vecs, rows), n_vecs <= 8.
extern "C" __global__ void gemv_v3(const u8* w, int ty, const float* __restrict__ x,
                                   float* y, int rows, int cols, int n_vecs) {
    const int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (r >= rows) return;
    const int n_blocks = cols / QK;
    const int bb = ty == TY_Q8_0 ? Q8_0_BYTES : ty == TY_Q4_0 ? Q4_0_BYTES : Q4_1_BYTES;
    const u8* row = w + (long long)r * n_blocks * bb;
    const int s = lane & 7;
    float acc[GEMV_MAX_VECS];
#pragma unroll
    for (int v = 0; v < GEMV_MAX_VECS; v++) acc[v] = 0.0f;
    for (int b = lane >> 3; b < n_blocks; b += 4) {
        float wq[4], d, m;
        quad(row + (long long)b * bb, ty, s, wq, d, m);
        const int k = b * QK + 4 * s;
#pragma unroll
        for (int v = 0; v < GEMV_MAX_VECS; v++) {
            if (v < n_vecs) {
                const float4 xv = *reinterpret_cast<const float4*>(x + (long long)v * cols + k);
                const float dot = wq[0] * xv.x + wq[1] * xv.y + wq[2] * xv.z + wq[3] * xv.w;
                acc[v] += d * dot + m * (xv.x + xv.y + xv.z + xv.w);
            }
        }
    }
#pragma unroll
    for (int v = 0; v < GEMV_MAX_VECS; v++) {
        if (v < n_vecs) {
            const float t = warp_sum(acc[v]);
            if (lane == 0) y[(long long)v * rows + r] = t;
        }
    }
}

// F32 weights (safetensors checkpoints): one warp per row, float4 loads.
extern "C" __global__ void gemv_f32(const float* w, const float* __restrict__ x, float* y,
                                    int rows, int cols, int n_vecs) {
    const int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (r >= rows) return;
    const float4* row = reinterpret_cast<const float4*>(w + (long long)r * cols);
    float acc[GEMV_MAX_VECS];
#pragma unroll
    for (int v = 0; v < GEMV_MAX_VECS; v++) acc[v] = 0.0f;
    for (int c = lane; c < cols / 4; c += 32) {
        const float4 wv = row[c];
#pragma unroll
        for (int v = 0; v < GEMV_MAX_VECS; v++) {
            if (v < n_vecs) {
                const float4 xv = reinterpret_cast<const float4*>(x + (long long)v * cols)[c];
                acc[v] += wv.x * xv.x + wv.y * xv.y + wv.z * xv.z + wv.w * xv.w;
            }
        }
    }
#pragma unroll
    for (int v = 0; v < GEMV_MAX_VECS; v++) {
        if (v < n_vecs) {
            const float t = warp_sum(acc[v]);
            if (lane == 0) y[(long long)v * rows + r] = t;
        }
    }
}
