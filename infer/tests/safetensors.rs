//! The Hugging Face path: the real model written as a safetensors checkpoint
//! (F32, Q/K rows in Hugging Face's order, half-split RoPE) and loaded back
//! through `Engine::load(dir)` must compute what the GGUF path computes with
//! the same (dequantized) weights, where the GGUF path has llama.cpp's permuted
//! rows and interleaved RoPE. A checkpoint written by another writer (the
//! `safetensors` Python package, float16 and float32 tensors, an untied
//! head) loads and computes the logits an independent numpy forward pass
//! computed. Also: broken checkpoints give typed errors.

use std::sync::Arc;

use infer::generate::{Engine, GenerateError};
use infer::model::{KvCache, Logits, Model, ModelError};
use infer::request::Request;
use infer::sampling::SamplingParams;
use model::gguf::GgufFile;
use model::tokenizer::Tokenizer;

#[test]
fn safetensors_checkpoint_matches_the_gguf_model() {
    let path = infer::locate_model(None).expect("model");
    let file = Arc::new(GgufFile::open(&path).expect("gguf"));
    let tok = Tokenizer::from_gguf(&file.header).expect("tokenizer");
    let gguf = Model::from_gguf(file).expect("model");
    let dir = tempfile::tempdir().expect("tempdir");
    gguf.save_safetensors(dir.path()).expect("save");
    tok.save_hf(dir.path()).expect("save tokenizer");
    // The reference: the GGUF layout with the same f32 weights.
    let reference = gguf.dequantized();
    drop(gguf);
    let hf = Engine::load(dir.path()).expect("load the checkpoint");
    assert_eq!(hf.model.config.n_layers, 30);
    assert_eq!(hf.model.config.n_kv_heads, 3);

    let text = "<|im_start|>user\nWhat is 2 + 2? Answer with one digit.<|im_end|>\n<|im_start|>assistant\n";
    let ids = tok.encode(text, true).expect("encode");
    assert_eq!(
        hf.tokenizer.encode(text, true).expect("encode"),
        ids,
        "tokenizer.json round trip"
    );
    assert_eq!(hf.tokenizer.chat_template(), tok.chat_template());
    assert_eq!(hf.tokenizer.eos_ids(), tok.eos_ids());

    let (mut c1, mut c2) = (
        KvCache::new(&reference.config, 64),
        KvCache::new(&hf.model.config, 64),
    );
    let a = reference
        .forward(&ids, &mut c1, Logits::All)
        .expect("gguf forward");
    let b = hf
        .model
        .forward(&ids, &mut c2, Logits::All)
        .expect("hf forward");
    assert_eq!(a.len(), ids.len() * 49_152);
    // Same weights; only the RoPE pairing and the row order differ, which
    // changes f32 summation order inside each head, and an occasional f16
    // rounding of the cache flips with it: logits (magnitude ~20) agree to a
    // few hundredths (0.017 measured). A wrong permutation moves them by units.
    let max = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        max < 0.05,
        "max |Δlogit| between the GGUF and HF layouts: {max}"
    );

    // And generation through the engine: greedy, the same tokens.
    let req = Request {
        prompt: ids.clone(),
        max_tokens: 12,
        sampling: SamplingParams::default(),
        stop: vec![],
        ignore_eos: true,
        ..Request::default()
    };
    let out = hf.generate(&req, |_| {}).expect("generate");
    let mut cache = KvCache::new(&reference.config, 64);
    let mut logits = reference
        .forward(&ids, &mut cache, Logits::Last)
        .expect("prefill");
    let mut want = Vec::new();
    for _ in 0..12 {
        let t = infer::sampling::argmax(&logits);
        want.push(t);
        logits = reference
            .forward(&[t], &mut cache, Logits::Last)
            .expect("decode");
    }
    assert_eq!(out.tokens, want);
}

/// `scripts/reference/safetensors_independent.py` wrote the checkpoint with
/// Hugging Face's `safetensors` package and the logits with numpy in float64,
/// from `transformers`' Llama definition (rotate_half RoPE, GQA, SwiGLU), so
/// neither side shares code with mlstack's writer or forward pass. The
/// engine computes in f32 but keeps keys and values in f16 and rounds the
/// query and the attention weights to f16 (as llama.cpp does), about 5e-4
/// relative per rounding: the largest difference measured is 1.1e-3 on
/// logits up to 3.5, so the bound is 5e-3. A wrong layout is far outside it
/// (un-permuted Q/K rows moved the real model's logits by 32).
#[test]
fn a_checkpoint_from_an_independent_writer_gives_its_logits() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/independent");
    let model = Model::from_safetensors_dir(&dir).expect("load the independent checkpoint");
    assert_eq!(model.config.n_layers, 2);
    assert_eq!(model.config.n_kv_heads, 2);
    // The head is untied (lm_head differs from the embedding): a loader that
    // fell back to the embedding would miss every logit.
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("expected.json")).expect("expected.json"),
    )
    .expect("JSON");
    let tokens: Vec<u32> = expected["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t.as_u64().expect("token") as u32)
        .collect();
    let want: Vec<f32> = expected["logits"]
        .as_array()
        .expect("logits")
        .iter()
        .flat_map(|row| row.as_array().expect("row").iter())
        .map(|v| v.as_f64().expect("logit") as f32)
        .collect();
    let mut cache = KvCache::new(&model.config, 64);
    let got = model
        .forward(&tokens, &mut cache, Logits::All)
        .expect("forward");
    assert_eq!(got.len(), want.len(), "(n, vocab) logits");
    let max_diff = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!(
        "independent checkpoint: max |Δlogit| {max_diff:.2e} over {} logits",
        got.len()
    );
    assert!(max_diff < 5e-3, "max |Δlogit| {max_diff}");
}

#[test]
fn broken_checkpoints_give_typed_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    // No config.json.
    match Model::from_safetensors_dir(dir.path()) {
        Err(ModelError::Model(model::Error::Io { path, .. })) => {
            assert!(path.ends_with("config.json"))
        }
        other => panic!("expected an Io error, got {other:?}"),
    }
    let cfg = serde_json::json!({
        "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2,
        "num_key_value_heads": 1, "num_hidden_layers": 1, "vocab_size": 10,
        "max_position_embeddings": 32, "tie_word_embeddings": true
    });
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).expect("write");
    // No weights.
    let e = Model::from_safetensors_dir(dir.path()).expect_err("no weights");
    assert!(e.to_string().contains("no model*.safetensors"), "{e}");
    // Garbage weights.
    std::fs::write(
        dir.path().join("model.safetensors"),
        b"\x08\0\0\0\0\0\0\0not json",
    )
    .expect("write");
    let e = Model::from_safetensors_dir(dir.path()).expect_err("corrupt");
    assert!(
        matches!(e, ModelError::Model(model::Error::Safetensors { .. })),
        "{e}"
    );
    // A valid file missing tensors.
    let t = vec![0u8; 4 * 64];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![64], &t).expect("view");
    safetensors::tensor::serialize_to_file(
        [("model.norm.weight", view)],
        None,
        &dir.path().join("model.safetensors"),
    )
    .expect("serialize");
    let e = Model::from_safetensors_dir(dir.path()).expect_err("missing tensors");
    assert!(e.to_string().contains("missing from the checkpoint"), "{e}");
    // A config that cannot describe a Llama.
    std::fs::write(dir.path().join("config.json"), r#"{"hidden_size": 64}"#).expect("write");
    let e = Model::from_safetensors_dir(dir.path()).expect_err("bad config");
    assert!(
        matches!(e, ModelError::Model(model::Error::Config { .. })),
        "{e}"
    );
    // The engine refuses an empty prompt and an over-long request.
    let path = infer::locate_model(None).expect("model");
    let engine = Engine::load(&path).expect("engine");
    let mut req = Request {
        prompt: vec![],
        max_tokens: 4,
        sampling: SamplingParams::default(),
        stop: vec![],
        ignore_eos: false,
        ..Request::default()
    };
    assert!(matches!(
        engine.generate(&req, |_| {}),
        Err(GenerateError::EmptyPrompt)
    ));
    req.prompt = vec![1];
    req.max_tokens = 9000;
    let e = engine.generate(&req, |_| {}).expect_err("too long");
    assert!(e.to_string().contains("8192"), "{e}");
    req.max_tokens = 4;
    req.sampling.temperature = -1.0;
    assert!(matches!(
        engine.generate(&req, |_| {}),
        Err(GenerateError::Sampling(_))
    ));
    // Token ids outside the vocabulary.
    let mut cache = KvCache::new(&engine.model.config, 8);
    let e = engine
        .model
        .forward(&[60_000], &mut cache, Logits::Last)
        .expect_err("bad id");
    assert!(
        matches!(e, ModelError::TokenOutOfRange { id: 60_000, .. }),
        "{e}"
    );
    let e = engine
        .model
        .forward(&[1; 9], &mut cache, Logits::Last)
        .expect_err("full");
    assert!(matches!(e, ModelError::ContextFull { max: 8, .. }), "{e}");
}
