// common.cuh: what every kernel file shares. Prepended to each .cu source by
// kernels/src/cuda/source.rs before NVRTC compiles it: NVRTC from PyPI ships no
// CUDA headers, so nothing here #includes anything. f16 goes through PTX's
// cvt instructions instead of cuda_fp16.h's __half.

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;

// ggml's quantized blocks (kernels/src/quant.rs has the byte layouts).
#define QK 32
#define Q8_0_BYTES 34  // d: f16 | qs: i8[32]
#define Q4_0_BYTES 18  // d: f16 | qs: u8[16]
#define Q4_1_BYTES 20  // d: f16 | m: f16 | qs: u8[16]

// Tensor type ids, ggml's numbering (GgmlType::id).
#define TY_F32 0
#define TY_F16 1
#define TY_Q4_0 2
#define TY_Q4_1 3
#define TY_Q8_0 8

// No math.h under NVRTC without headers: -inf by its bits.
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("{ cvt.f32.f16 %0, %1; }" : "=f"(f) : "h"(h));
    return f;
}

// Round to nearest even, as half::f16::from_f32 does.
__device__ __forceinline__ u16 f32_to_f16(float f) {
    u16 h;
    asm("{ cvt.rn.f16.f32 %0, %1; }" : "=h"(h) : "f"(f));
    return h;
}

// An f16 at a byte address that is 2-aligned (block scales are).
__device__ __forceinline__ float load_f16(const u8* p) {
    return f16_to_f32(*reinterpret_cast<const u16*>(p));
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the whole thread block (blockDim.x a multiple of 32, <= 1024);
// every thread gets the total. `scratch` holds 32 floats of shared memory.
// The leading __syncthreads lets a caller reuse `scratch` back to back.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    const int n_warps = blockDim.x >> 5;
    v = lane < n_warps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    const int n_warps = blockDim.x >> 5;
    v = lane < n_warps ? scratch[lane] : NEG_INF;
    return warp_max(v);
}

// Weight k of a row of blocks of type `ty` (the reference dequantization,
// one element at a time: for the naive variants and the tile loaders).
__device__ __forceinline__ float dequant_at(const u8* row, int ty, int k) {
    const int b = k / QK, j = k % QK;
    switch (ty) {
    case TY_F32: return reinterpret_cast<const float*>(row)[k];
    case TY_F16: return f16_to_f32(reinterpret_cast<const u16*>(row)[k]);
    case TY_Q8_0: {
        const u8* blk = row + b * Q8_0_BYTES;
        return load_f16(blk) * (float)(i8)blk[2 + j];
    }
    case TY_Q4_0: {
        const u8* blk = row + b * Q4_0_BYTES;
        const int q = j < 16 ? (blk[2 + j] & 0xF) : (blk[2 + j - 16] >> 4);
        return load_f16(blk) * (float)(q - 8);
    }
    case TY_Q4_1: {
        const u8* blk = row + b * Q4_1_BYTES;
        const int q = j < 16 ? (blk[4 + j] & 0xF) : (blk[4 + j - 16] >> 4);
        return load_f16(blk) * (float)q + load_f16(blk + 2);
    }
    }
    return 0.0f;
}

// Bytes of one row of `cols` weights of type `ty`.
__device__ __forceinline__ long long row_bytes(int ty, int cols) {
    switch (ty) {
    case TY_F32: return 4ll * cols;
    case TY_F16: return 2ll * cols;
    case TY_Q8_0: return (long long)(cols / QK) * Q8_0_BYTES;
    case TY_Q4_0: return (long long)(cols / QK) * Q4_0_BYTES;
    case TY_Q4_1: return (long long)(cols / QK) * Q4_1_BYTES;
    }
    return 0;
}
