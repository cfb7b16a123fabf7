//! Token embedding: a row lookup forward, a scatter-add backward.

/// x[i] = table[tokens[i]].
/// x: (n, d)   table: (vocab, d)   tokens: (n,)
pub fn embedding_forward(x: &mut [f32], table: &[f32], tokens: &[u32], d: usize) {
    for (row, &tok) in x.chunks_exact_mut(d).zip(tokens) {
        let t = tok as usize;
        row.copy_from_slice(&table[t * d..(t + 1) * d]);
    }
}

/// dtable[tokens[i]] += dx[i]. Sequential in token order, so the sum is the
/// same on every run (a repeated token's rows add in a fixed order).
/// dtable: (vocab, d)   dx: (n, d)
pub fn embedding_backward(dtable: &mut [f32], dx: &[f32], tokens: &[u32], d: usize) {
    for (row, &tok) in dx.chunks_exact(d).zip(tokens) {
        let t = tok as usize;
        for (a, b) in dtable[t * d..(t + 1) * d].iter_mut().zip(row) {
            *a += b;
        }
    }
}
