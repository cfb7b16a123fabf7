//! Dequantization checked against values computed independently by llama.cpp's
//! `gguf` Python package (`scripts/reference/gguf_golden.py` writes
//! `tests/data/dequant_golden.json`): random F16, BF16, Q8_0, Q4_0 and Q4_1
//! blocks and their expected f32 values. Both sides do the same f32
//! arithmetic, so the values must match exactly.

use kernels::quant::{GgmlType, dequantize};

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

#[test]
fn dequantization_matches_gguf_py_bit_for_bit() {
    let text = include_str!("data/dequant_golden.json");
    let golden: serde_json::Value = serde_json::from_str(text).expect("golden JSON");
    let cases = golden["cases"].as_array().expect("cases");
    let mut seen = Vec::new();
    for c in cases {
        let id = c["type_id"].as_u64().expect("type id") as u32;
        let ty = GgmlType::from_id(id).expect("supported type");
        let n = c["n"].as_u64().expect("n") as usize;
        let bytes = unhex(c["hex"].as_str().expect("hex"));
        let want: Vec<f32> = c["values"]
            .as_array()
            .expect("values")
            .iter()
            .map(|v| v.as_f64().expect("number") as f32)
            .collect();
        let mut got = vec![0f32; n];
        dequantize(ty, &bytes, &mut got).expect("dequantize");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{ty:?} element {i}: got {g}, gguf-py {w}"
            );
        }
        seen.push(ty);
    }
    for ty in [
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
    ] {
        assert!(seen.contains(&ty), "no golden case for {ty:?}");
    }
}
