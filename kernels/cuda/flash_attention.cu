// flash_attention.cu: causal prefill attention for one sequence's new tokens
// over the paged f16 KV cache, tiled in shared memory as FlashAttention does
// (Dao et al., 2022): Q tiles stay on chip, K/V stream through in tiles, and
// the online softmax means the (n, n) score matrix never exists in memory.
// Reference: per query row, kernels::attention::scores_ref → softmax →
// weighted_sum_ref over keys 0..=its position.
//
// Grid (ceil(n_q / 16), n_heads); 4 warps, each owning 4 query rows of the
// block's 16. Per K/V tile of 32 positions: all 128 threads copy it from the
// cache (f16 → f32) into shared memory; then for each of its rows a warp has
// lane j score key j of the tile (the K tile is padded to head_dim + 1
// floats per row, so the 32 lanes reading 32 rows at the same column hit 32
// different banks), takes the tile's max and sum by shuffles, and adds
// p_j · V_j into per-lane accumulators (lane l owns dims l, l+32, ...),
// broadcasting each p_j with a shuffle. Each K/V element is loaded from
// global memory once per 16 query rows instead of once per row.
// Shared memory: 16·128 + 32·129 + 32·128 floats = 40.6 KB at head_dim 128.
// Limits (checked by the host): head_dim % 32 == 0, head_dim <= 128.

#define FA_BQ 16
#define FA_BK 32
#define FA_MAX_HD 128
#define FA_ROWS_PER_WARP 4

// q, out: (n_q, n_heads, head_dim), query t at position start + t
// k_cache, v_cache: (n_blocks · block_size, n_kv_heads · head_dim) f16 (one layer)
// table: (blocks of this sequence,) covering positions 0 .. start + n_q
extern "C" __global__ void flash_attention_prefill(
    const float* q, const u16* k_cache, const u16* v_cache, const int* table, float* out, int n_q,
    int start, int n_heads, int n_kv_heads, int head_dim, int block_size, float scale) {
    __shared__ float qs[FA_BQ][FA_MAX_HD];
    __shared__ float ks[FA_BK][FA_MAX_HD + 1];
    __shared__ float vs[FA_BK][FA_MAX_HD];
    const int h = blockIdx.y, kvh = h / (n_heads / n_kv_heads);
    const int q0 = blockIdx.x * FA_BQ;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int dpl = head_dim >> 5, kv_dim = n_kv_heads * head_dim;
    const int q_end = min(q0 + FA_BQ, n_q);

    for (int idx = threadIdx.x; idx < FA_BQ * head_dim; idx += blockDim.x) {
        const int r = idx / head_dim, d = idx % head_dim;
        qs[r][d] = q0 + r < n_q ? q[((long long)(q0 + r) * n_heads + h) * head_dim + d] * scale : 0.0f;
    }

    float m[FA_ROWS_PER_WARP], l[FA_ROWS_PER_WARP], acc[FA_ROWS_PER_WARP][FA_MAX_HD / 32];
#pragma unroll
    for (int r = 0; r < FA_ROWS_PER_WARP; r++) {
        m[r] = NEG_INF;
        l[r] = 0.0f;
#pragma unroll
        for (int i = 0; i < FA_MAX_HD / 32; i++) acc[r][i] = 0.0f;
    }

    // Keys this block needs: 0 ..= the position of its last query.
    const int last_key = start + q_end - 1;
    for (int k0 = 0; k0 <= last_key; k0 += FA_BK) {
        __syncthreads();  // the previous tile is consumed (and qs written, the first time)
        for (int idx = threadIdx.x; idx < FA_BK * head_dim; idx += blockDim.x) {
            const int j = idx / head_dim, d = idx % head_dim;
            const int p = k0 + j;
            float kv = 0.0f, vv = 0.0f;
            if (p <= last_key) {
                const long long slot = (long long)table[p / block_size] * block_size + p % block_size;
                const long long at = slot * kv_dim + kvh * head_dim + d;
                kv = f16_to_f32(k_cache[at]);
                vv = f16_to_f32(v_cache[at]);
            }
            ks[j][d] = kv;
            vs[j][d] = vv;
        }
        __syncthreads();
#pragma unroll
        for (int r = 0; r < FA_ROWS_PER_WARP; r++) {
            const int row = warp * FA_ROWS_PER_WARP + r;
            const int t = q0 + row;
            if (t >= n_q) continue;  // uniform across the warp
            const int pos = start + t;
            const int p = k0 + lane;
            float s = NEG_INF;
            if (p <= pos) {
                s = 0.0f;
                for (int d = 0; d < head_dim; d++) s += qs[row][d] * ks[lane][d];
            }
            const float tile_max = warp_max(s);
            if (tile_max == NEG_INF) continue;  // the whole tile is in this row's future
            const float mn = fmaxf(m[r], tile_max);
            const float corr = expf(m[r] - mn);
            const float pe = p <= pos ? expf(s - mn) : 0.0f;
            l[r] = l[r] * corr + warp_sum(pe);
#pragma unroll
            for (int i = 0; i < FA_MAX_HD / 32; i++) acc[r][i] *= corr;
            for (int j = 0; j < FA_BK; j++) {
                const float pj = __shfl_sync(0xffffffffu, pe, j);
#pragma unroll
                for (int i = 0; i < FA_MAX_HD / 32; i++)
                    if (i < dpl) acc[r][i] += pj * vs[j][lane + 32 * i];
            }
            m[r] = mn;
        }
    }
#pragma unroll
    for (int r = 0; r < FA_ROWS_PER_WARP; r++) {
        const int t = q0 + warp * FA_ROWS_PER_WARP + r;
        if (t >= n_q) continue;
#pragma unroll
        for (int i = 0; i < FA_MAX_HD / 32; i++)
            if (i < dpl) out[((long long)t * n_heads + h) * head_dim + lane + 32 * i] = acc[r][i] / l[r];
    }
}
