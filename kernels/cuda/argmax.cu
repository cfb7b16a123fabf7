// argmax.cu: greedy sampling on the device, so a decode step copies 4 bytes
// back instead of the (vocab,) logits. Reference: infer::sampling::argmax
// (the first index of the maximum; NaN never wins). One block of 1,024 threads
// per row: a strided scan, then (value, index) pairs reduced by warp shuffles
// and once more across warps, ties to the lower index.

__device__ __forceinline__ void better(float& v, int& i, float v2, int i2) {
    if (v2 > v || (v2 == v && i2 < i)) { v = v2; i = i2; }
}

// logits: (n_rows, n)   out: (n_rows,)
extern "C" __global__ void argmax(const float* logits, int n, u32* out) {
    __shared__ float sv[32];
    __shared__ int si[32];
    const float* x = logits + (long long)blockIdx.x * n;
    float v = NEG_INF;
    int idx = 0x7fffffff;
    for (int k = threadIdx.x; k < n; k += blockDim.x) {
        // `x[k] > v` is false for NaN, as in the CPU's fold.
        if (x[k] > v) { v = x[k]; idx = k; }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) better(v, idx, __shfl_xor_sync(0xffffffffu, v, o),
                                              __shfl_xor_sync(0xffffffffu, idx, o));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) { sv[warp] = v; si[warp] = idx; }
    __syncthreads();
    if (warp == 0) {
        const int n_warps = blockDim.x >> 5;
        v = lane < n_warps ? sv[lane] : NEG_INF;
        idx = lane < n_warps ? si[lane] : 0x7fffffff;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) better(v, idx, __shfl_xor_sync(0xffffffffu, v, o),
                                                  __shfl_xor_sync(0xffffffffu, idx, o));
        // All -inf or NaN: index 0, as the CPU's fold starts there.
        if (lane == 0) out[blockIdx.x] = idx == 0x7fffffff ? 0u : (u32)idx;
    }
}
