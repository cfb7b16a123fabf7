// rmsnorm.cu: RMSNorm forward and backward side by side (Zhang & Sennrich, 2019).
// References: kernels::ops::rms_norm (inference), train::ops::rmsnorm (training).
//
// One thread block per row: the row is read once to reduce Σx² across the
// block (warp shuffles, then one float per warp in shared memory), and once
// more to scale, which at d_model 576 is still in L1. 256 threads.

// x, out: (n_rows, dim)   w: (dim,)   rstd: (n_rows,) or null (kept for the backward)
extern "C" __global__ void rmsnorm_fwd(const float* x, const float* w, float* out, float* rstd,
                                       int dim, float eps) {
    __shared__ float scratch[32];
    const float* xr = x + (long long)blockIdx.x * dim;
    float* yr = out + (long long)blockIdx.x * dim;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
    ss = block_sum(ss, scratch);
    const float r = rsqrtf(ss / (float)dim + eps);
    if (rstd != 0 && threadIdx.x == 0) rstd[blockIdx.x] = r;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = xr[i] * r * w[i];
}

// With x̂ = x·r:  dx = r · (dy⊙w − x̂ · mean(dy⊙w⊙x̂));  dw += Σ_rows dy⊙x̂.
// dx: (n_rows, dim) written   dw: (dim,) accumulated with atomicAdd (so its
// sum order, and last bits, vary run to run; the CPU's is fixed)
extern "C" __global__ void rmsnorm_bwd(float* dx, float* dw, const float* dy, const float* x,
                                       const float* w, const float* rstd, int dim) {
    __shared__ float scratch[32];
    const long long off = (long long)blockIdx.x * dim;
    const float r = rstd[blockIdx.x];
    float dot = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        const float xhat = x[off + i] * r;
        dot += dy[off + i] * w[i] * xhat;
        atomicAdd(&dw[i], dy[off + i] * xhat);
    }
    const float mean = block_sum(dot, scratch) / (float)dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        dx[off + i] = r * (dy[off + i] * w[i] - x[off + i] * r * mean);
}
