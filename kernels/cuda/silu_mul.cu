// silu_mul.cu: SwiGLU's gate, out[i] = silu(gate[i]) · up[i], silu(g) = g / (1 + e^-g).
// Reference: kernels::ops::silu_mul. Bandwidth-bound; expf is the full-precision
// one (no --use_fast_math), within 2 ulp of the CPU's.

// gate, up, out: (n,)   n = n_tokens · d_ff
extern "C" __global__ void silu_mul(const float* gate, const float* up, float* out, int n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}
