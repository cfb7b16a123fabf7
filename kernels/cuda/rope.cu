// rope.cu: rotary position embedding (Su et al., RoFormer) in place.
// Reference: kernels::ops::rope. Pair j of a head rotates by pos · base^(-2j/head_dim);
// `interleaved` picks the pairs (2j, 2j+1) (GGUF) or (j, j + head_dim/2)
// (Hugging Face). One thread per pair. The angle is computed in f64, as the
// CPU reference does: in f32, pos · base^(-2j/d) at position 4,000 is off by
// up to 4,000 · 2⁻²⁴ rad before any rounding of the rotation itself, which
// would move the rotated values by about 2⁻¹² of their size. f64 costs a few
// instructions per pair on a bandwidth-bound kernel. The angle goes through
// sincospi (half-turns), whose argument reduction is exact: sincos's
// Payne-Hanek path for large angles needs a local array (a stack frame,
// which the compile test refuses).

// x: (n_tokens, n_heads, head_dim)   pos: (n_tokens,)
extern "C" __global__ void rope(float* x, const int* pos, int n_tokens, int n_heads, int head_dim,
                                float base, int interleaved) {
    const int half = head_dim / 2;
    const long long total = (long long)n_tokens * n_heads * half;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int j = (int)(i % half);
        const long long head = i / half;  // token · n_heads + h
        const int t = (int)(head / n_heads);
        float* hx = x + head * head_dim;
        const double inv_freq = pow((double)base, -2.0 * (double)j / (double)head_dim);
        const double half_turns = (double)pos[t] * inv_freq * 0.318309886183790671538;  // θ/π
        double sd, cd;
        sincospi(half_turns, &sd, &cd);
        const float s = (float)sd, c = (float)cd;
        const int a = interleaved ? 2 * j : j;
        const int b = interleaved ? 2 * j + 1 : j + half;
        const float x0 = hx[a], x1 = hx[b];
        hx[a] = x0 * c - x1 * s;
        hx[b] = x0 * s + x1 * c;
    }
}
