// adamw.cu: one fused AdamW step (Loshchilov & Hutter, decoupled weight
// decay). Reference: train::optim::AdamW::step. Reads p, g, m, v and writes
// p, m, v: 28 bytes per parameter, one pass, bandwidth-bound; unfused it
// would be several passes over the same arrays.
//   g ← g·grad_scale;  m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²
//   p ← p − lr·(m/bc1 / (√(v/bc2) + ε) + wd·p)
// bc1 = 1 − β1^t, bc2 = 1 − β2^t are computed once on the host. The host
// launches one range with wd > 0 for matrices and wd = 0 for norms.

// p, g, m, v: (n,)
extern "C" __global__ void adamw(float* p, const float* g, float* m, float* v, long long n, float lr,
                                 float beta1, float beta2, float eps, float wd, float bc1, float bc2,
                                 float grad_scale) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float gi = g[i] * grad_scale;
        const float mi = beta1 * m[i] + (1.0f - beta1) * gi;
        const float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        const float mhat = mi / bc1, vhat = vi / bc2;
        p[i] -= lr * (mhat / (sqrtf(vhat) + eps) + wd * p[i]);
    }
}
