// cross_entropy.cu: softmax cross-entropy fused with its backward, as llm.c
// does: the logits become dlogits in place. Reference:
// train::ops::cross_entropy::cross_entropy_backward_inplace.
//   loss_i = logsumexp(z_i) − z_i[target_i];  dz_i = (softmax(z_i) − onehot) · scale
// One block per row (1,024 threads): three passes over the row (max, Σexp,
// write), the row being 192 KB at vocab 49,152 and mostly served from L2 on
// the second and third passes.

// logits: (n, vocab) → dlogits   targets, losses: (n,)
extern "C" __global__ void cross_entropy_fwd_bwd(float* logits, const u32* targets, float* losses,
                                                 int vocab, float scale) {
    __shared__ float scratch[32];
    float* z = logits + (long long)blockIdx.x * vocab;
    const u32 t = targets[blockIdx.x];
    if (t >= (u32)vocab) {
        // The trainer checks ids; a bad one here gives a NaN loss (which the
        // trainer's finite check stops on) rather than a read past the row.
        if (threadIdx.x == 0) losses[blockIdx.x] = __int_as_float(0x7fc00000);
        return;
    }
    float mx = NEG_INF;
    for (int k = threadIdx.x; k < vocab; k += blockDim.x) mx = fmaxf(mx, z[k]);
    mx = block_max(mx, scratch);
    float sum = 0.0f;
    for (int k = threadIdx.x; k < vocab; k += blockDim.x) sum += expf(z[k] - mx);
    sum = block_sum(sum, scratch);
    // Read z[t] before any thread overwrites it; every thread reads, then syncs.
    const float zt = z[t] - mx;
    __syncthreads();
    if (threadIdx.x == 0) losses[blockIdx.x] = logf(sum) - zt;
    const float inv = 1.0f / sum;
    for (int k = threadIdx.x; k < vocab; k += blockDim.x) {
        const float p = expf(z[k] - mx) * inv;
        z[k] = (p - (k == (int)t ? 1.0f : 0.0f)) * scale;
    }
}
