//! ggml's tensor types and their block layouts, and scalar dequantization (the
//! reference every SIMD kernel is checked against).
//!
//! Quantized types store weights in blocks of 32 with per-block scales:
//!
//! ```text
//! Q8_0 (34 bytes / 32 weights):  d: f16 | qs: i8[32]                 w[i] = d * qs[i]
//! Q4_0 (18 bytes / 32 weights):  d: f16 | qs: u8[16]                 w[i]    = d * ((qs[i] & 0xF) - 8)
//!                                                                     w[i+16] = d * ((qs[i] >> 4)  - 8)
//! Q4_1 (20 bytes / 32 weights):  d: f16 | m: f16 | qs: u8[16]        w[i]    = d * (qs[i] & 0xF) + m
//!                                                                     w[i+16] = d * (qs[i] >> 4)  + m
//! F16 / BF16: 2 bytes per weight;  F32: 4 bytes per weight (little endian)
//! ```
//!
//! Note the nibble order: the low nibbles of the 16 bytes hold weights 0..16
//! and the high nibbles weights 16..32 (not interleaved pairs).

use half::{bf16, f16};

/// Weights per quantized block.
pub const QK: usize = 32;

/// The tensor types mlstack reads (ggml's numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    BF16,
}

/// Errors from the quantization layer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantError {
    /// A ggml type id mlstack does not implement.
    #[error("unsupported ggml tensor type {id}")]
    UnsupportedType { id: u32 },
    /// An element count that is not a whole number of blocks.
    #[error("{n} elements is not a multiple of the {ty:?} block size {block}")]
    PartialBlock {
        ty: GgmlType,
        n: usize,
        block: usize,
    },
    /// Input bytes or output length that do not match the element count.
    #[error("{ty:?}: {n} elements need {want} bytes, got {got}")]
    SizeMismatch {
        ty: GgmlType,
        n: usize,
        want: usize,
        got: usize,
    },
}

impl GgmlType {
    /// From ggml's type id.
    pub fn from_id(id: u32) -> Result<GgmlType, QuantError> {
        Ok(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            30 => GgmlType::BF16,
            _ => return Err(QuantError::UnsupportedType { id }),
        })
    }

    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 8,
            GgmlType::BF16 => 30,
        }
    }

    /// Elements per block (1 for float types).
    pub fn block_len(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => QK,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 2 + QK / 2,
            GgmlType::Q4_1 => 4 + QK / 2,
            GgmlType::Q8_0 => 2 + QK,
        }
    }

    /// Bytes needed for `n` elements; `None` when `n` is not whole blocks or
    /// the size overflows.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_len()) {
            return None;
        }
        (n / self.block_len()).checked_mul(self.block_bytes())
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantizes `n = out.len()` elements of type `ty` from `src`.
pub fn dequantize(ty: GgmlType, src: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    let n = out.len();
    let want = ty.bytes_for(n).ok_or(QuantError::PartialBlock {
        ty,
        n,
        block: ty.block_len(),
    })?;
    if src.len() != want {
        return Err(QuantError::SizeMismatch {
            ty,
            n,
            want,
            got: src.len(),
        });
    }
    match ty {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::Q8_0 => {
            for (o, b) in out
                .chunks_exact_mut(QK)
                .zip(src.chunks_exact(ty.block_bytes()))
            {
                let d = f16_at(b, 0);
                for (w, &q) in o.iter_mut().zip(&b[2..]) {
                    *w = d * f32::from(q as i8);
                }
            }
        }
        GgmlType::Q4_0 => {
            for (o, b) in out
                .chunks_exact_mut(QK)
                .zip(src.chunks_exact(ty.block_bytes()))
            {
                let d = f16_at(b, 0);
                let qs = &b[2..];
                for i in 0..QK / 2 {
                    o[i] = d * f32::from((qs[i] & 0x0f) as i8 - 8);
                    o[i + QK / 2] = d * f32::from((qs[i] >> 4) as i8 - 8);
                }
            }
        }
        GgmlType::Q4_1 => {
            for (o, b) in out
                .chunks_exact_mut(QK)
                .zip(src.chunks_exact(ty.block_bytes()))
            {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let qs = &b[4..];
                for i in 0..QK / 2 {
                    o[i] = d * f32::from(qs[i] & 0x0f) + m;
                    o[i + QK / 2] = d * f32::from(qs[i] >> 4) + m;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_1_nibble_order_and_affine_map() {
        // d = 0.5, m = -1.0, byte i holds (low = i % 16, high = 15 - i % 16).
        let mut b = Vec::new();
        b.extend_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b.extend_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        for i in 0..16u8 {
            b.push((i & 0x0f) | ((15 - i) << 4));
        }
        let mut out = [0f32; 32];
        dequantize(GgmlType::Q4_1, &b, &mut out).expect("dequantize");
        for i in 0..16 {
            assert_eq!(out[i], 0.5 * i as f32 - 1.0, "low nibble {i}");
            assert_eq!(out[i + 16], 0.5 * (15 - i) as f32 - 1.0, "high nibble {i}");
        }
    }

    #[test]
    fn sizes_are_checked() {
        let mut out = [0f32; 33];
        assert!(matches!(
            dequantize(GgmlType::Q8_0, &[0; 34], &mut out),
            Err(QuantError::PartialBlock { .. })
        ));
        let mut out = [0f32; 32];
        assert!(matches!(
            dequantize(GgmlType::Q8_0, &[0; 33], &mut out),
            Err(QuantError::SizeMismatch {
                want: 34,
                got: 33,
                ..
            })
        ));
        assert_eq!(
            GgmlType::from_id(12),
            Err(QuantError::UnsupportedType { id: 12 })
        );
        for id in [0, 1, 2, 3, 8, 30] {
            assert_eq!(GgmlType::from_id(id).map(GgmlType::id), Ok(id));
        }
    }
}
