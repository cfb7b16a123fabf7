// kv_write.cu: new keys and values into the paged cache (vLLM's
// reshape_and_cache). Each token has a slot, block · block_size + offset,
// chosen by the host's block allocator; f32 → f16 rounds to nearest even,
// as the CPU cache's half::f16::from_f32 does, so both caches hold the same bits.

// k, v: (n_tokens, kv_dim)   slots: (n_tokens,)
// k_cache, v_cache: (n_blocks · block_size, kv_dim) f16, kv_dim = n_kv_heads · head_dim
extern "C" __global__ void kv_write(const float* k, const float* v, const int* slots, u16* k_cache,
                                    u16* v_cache, int n_tokens, int kv_dim) {
    const long long total = (long long)n_tokens * kv_dim;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int t = (int)(i / kv_dim), c = (int)(i % kv_dim);
        const long long dst = (long long)slots[t] * kv_dim + c;
        k_cache[dst] = f32_to_f16(k[i]);
        v_cache[dst] = f32_to_f16(v[i]);
    }
}
