// paged_attention.cu: decode attention over the paged f16 KV cache (Kwon et
// al., vLLM, SOSP '23), one new query token per sequence.
// Reference: kernels::attention::{scores_ref, weighted_sum_ref} with
// kernels::ops::softmax between them, over the positions the block table lists.
//
// One thread block per (KV head, sequence), 4 warps. GQA: the block serves all
// G = n_heads / n_kv_heads query heads that share its KV head, so each cached
// key and value is read from memory once for G heads (SmolLM2: G = 3).
// Warp w takes positions w, w+4, w+8, ...; lane l holds dimensions l, l+32, ...
// of the query and the accumulators in registers. Per position: a row of K is
// one coalesced read (head_dim f16), its G scores are warp-shuffle sums, and
// the online softmax (Milakov & Gimelshein, 2018) rescales the running sum
// and accumulator when the max grows, so nothing of length seq_len is stored.
// At the end the 4 warps' (max, sum, acc) merge through shared memory.
// Bytes read per sequence: 2 · seq_len · head_dim · 2 per KV head; the roofline
// is that over the device's bandwidth (a decode step is memory-bound).
// Limits (checked by the host): head_dim % 32 == 0, head_dim <= 128, G <= 8.

#define PA_WARPS 4
#define PA_MAX_G 8
#define PA_MAX_DPL 4  // dims per lane: head_dim / 32

// q: (n_seqs, n_heads, head_dim)   out: same   scale: 1/√head_dim
// k_cache, v_cache: (n_blocks · block_size, n_kv_heads · head_dim) f16 (one layer)
// block_tables: (n_seqs, max_blocks)   seq_lens: (n_seqs,) >= 1, the new token included
extern "C" __global__ void paged_attention_decode(
    const float* q, const u16* k_cache, const u16* v_cache, const int* block_tables,
    const int* seq_lens, float* out, int n_heads, int n_kv_heads, int head_dim, int block_size,
    int max_blocks, float scale) {
    __shared__ float s_max[PA_WARPS][PA_MAX_G];
    __shared__ float s_sum[PA_WARPS][PA_MAX_G];
    __shared__ float s_acc[PA_WARPS][PA_MAX_G][PA_MAX_DPL * 32];
    const int kvh = blockIdx.x, seq = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int G = n_heads / n_kv_heads, dpl = head_dim >> 5;
    const int len = seq_lens[seq];
    const int kv_dim = n_kv_heads * head_dim;
    const int* table = block_tables + (long long)seq * max_blocks;

    float qr[PA_MAX_G][PA_MAX_DPL], acc[PA_MAX_G][PA_MAX_DPL], m[PA_MAX_G], l[PA_MAX_G];
#pragma unroll
    for (int g = 0; g < PA_MAX_G; g++) {
        m[g] = NEG_INF;
        l[g] = 0.0f;
#pragma unroll
        for (int i = 0; i < PA_MAX_DPL; i++) {
            const bool live = g < G && i < dpl;
            qr[g][i] = live ? q[((long long)seq * n_heads + kvh * G + g) * head_dim + lane + 32 * i] * scale
                            : 0.0f;
            acc[g][i] = 0.0f;
        }
    }
    for (int p = warp; p < len; p += PA_WARPS) {
        const long long slot = (long long)table[p / block_size] * block_size + p % block_size;
        const u16* kr = k_cache + slot * kv_dim + kvh * head_dim;
        const u16* vr = v_cache + slot * kv_dim + kvh * head_dim;
        float kf[PA_MAX_DPL], vf[PA_MAX_DPL];
#pragma unroll
        for (int i = 0; i < PA_MAX_DPL; i++) {
            kf[i] = i < dpl ? f16_to_f32(kr[lane + 32 * i]) : 0.0f;
            vf[i] = i < dpl ? f16_to_f32(vr[lane + 32 * i]) : 0.0f;
        }
#pragma unroll
        for (int g = 0; g < PA_MAX_G; g++) {
            if (g < G) {
                float d = 0.0f;
#pragma unroll
                for (int i = 0; i < PA_MAX_DPL; i++) d += qr[g][i] * kf[i];
                const float s = warp_sum(d);
                const float mn = fmaxf(m[g], s);
                const float corr = expf(m[g] - mn);  // 0 on the first position
                const float pe = expf(s - mn);
                l[g] = l[g] * corr + pe;
#pragma unroll
                for (int i = 0; i < PA_MAX_DPL; i++) acc[g][i] = acc[g][i] * corr + pe * vf[i];
                m[g] = mn;
            }
        }
    }
#pragma unroll
    for (int g = 0; g < PA_MAX_G; g++) {
        if (g < G) {
            if (lane == 0) { s_max[warp][g] = m[g]; s_sum[warp][g] = l[g]; }
#pragma unroll
            for (int i = 0; i < PA_MAX_DPL; i++)
                if (i < dpl) s_acc[warp][g][lane + 32 * i] = acc[g][i];
        }
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < G * head_dim; idx += blockDim.x) {
        const int g = idx / head_dim, d = idx % head_dim;
        float mx = NEG_INF;
#pragma unroll
        for (int w = 0; w < PA_WARPS; w++) mx = fmaxf(mx, s_max[w][g]);
        float sum = 0.0f, a = 0.0f;
#pragma unroll
        for (int w = 0; w < PA_WARPS; w++) {
            // A warp that saw no position has max -inf and contributes 0.
            const float c = s_max[w][g] == NEG_INF ? 0.0f : expf(s_max[w][g] - mx);
            sum += s_sum[w][g] * c;
            a += s_acc[w][g][d] * c;
        }
        out[((long long)seq * n_heads + kvh * G + g) * head_dim + d] = sum > 0.0f ? a / sum : 0.0f;
    }
}
