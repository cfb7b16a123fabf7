// embedding.cu: the embedding lookup, x[t] = dequant(table[tokens[t]]).
// Reference: kernels::quant::dequantize of one row. One block per token,
// threads over the row; the table stays in its stored type (Q8_0, Q4_0, Q4_1,
// F16, F32) so it needs no f32 copy on the device.

// table: (vocab, dim) of type ty   tokens: (n_tokens,)   out: (n_tokens, dim)
extern "C" __global__ void embedding(const u8* table, int ty, const u32* tokens, float* out, int dim,
                                     int vocab) {
    const u32 tok = tokens[blockIdx.x];
    float* o = out + (long long)blockIdx.x * dim;
    if (tok >= (u32)vocab) {
        // The host checks ids before the launch; a bad one here writes NaN
        // rather than reading past the table.
        for (int i = threadIdx.x; i < dim; i += blockDim.x) o[i] = __int_as_float(0x7fc00000);
        return;
    }
    const u8* row = table + (long long)tok * row_bytes(ty, dim);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) o[i] = dequant_at(row, ty, i);
}
