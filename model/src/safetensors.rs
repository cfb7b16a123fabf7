//! Hugging Face checkpoints: a directory of `config.json` plus one or more
//! `*.safetensors` files, read into f32 tensors by name and written back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::config::{Config, cfg_err};
use crate::error::Error;

/// One tensor: its shape and its values, row-major.
pub type Tensor = (Vec<usize>, Vec<f32>);

/// A checkpoint read into memory.
#[derive(Debug)]
pub struct Checkpoint {
    pub config: Config,
    /// The `config.json` as read (fields the config does not model, such as
    /// `tie_word_embeddings`, stay available).
    pub config_json: serde_json::Value,
    pub tensors: HashMap<String, Tensor>,
}

impl Checkpoint {
    /// Whether the output head is the embedding (`tie_word_embeddings`).
    pub fn tied(&self) -> bool {
        self.config_json
            .get("tie_word_embeddings")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false)
    }

    /// Removes and returns tensor `name`, checking its shape.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, Error> {
        let (s, v) = self
            .tensors
            .remove(name)
            .ok_or_else(|| Error::tensor(name, "missing from the checkpoint"))?;
        if s != shape {
            return Err(Error::tensor(
                name,
                format!("shape {s:?}, expected {shape:?}"),
            ));
        }
        Ok(v)
    }
}

/// Reads `dir/config.json` and every `dir/*.safetensors` (F32, F16 or BF16,
/// converted to f32).
pub fn read_dir(dir: &Path) -> Result<Checkpoint, Error> {
    let read = |p: PathBuf| std::fs::read(&p).map_err(|source| Error::Io { path: p, source });
    let cfg_path = dir.join("config.json");
    let config_json: serde_json::Value = serde_json::from_slice(&read(cfg_path.clone())?)
        .map_err(|e| cfg_err("config.json", format!("{}: {e}", cfg_path.display())))?;
    let config = Config::from_hf(&config_json)?;
    // The model's weights only: `model.safetensors` or Hugging Face's shards
    // `model-00001-of-00002.safetensors` (a trainer's `optimizer.safetensors`
    // beside them is not the model).
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "safetensors")
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("model"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::Safetensors {
            path: dir.to_path_buf(),
            reason: "no model*.safetensors files".into(),
        });
    }
    let mut tensors = HashMap::new();
    for path in &files {
        tensors.extend(read_file(path)?);
    }
    Ok(Checkpoint {
        config,
        config_json,
        tensors,
    })
}

/// Every tensor of one safetensors file (F32, F16 or BF16, converted to f32).
pub fn read_file(path: &Path) -> Result<HashMap<String, Tensor>, Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: read-only private mapping of a checkpoint nobody writes
    // while it loads; the bytes are converted and the map dropped.
    let bytes = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
    let st = ::safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            ::safetensors::Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            ::safetensors::Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            ::safetensors::Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(Error::tensor(
                    &name,
                    format!("dtype {other:?} (F32, F16 and BF16 are supported)"),
                ));
            }
        };
        tensors.insert(name, (view.shape().to_vec(), values));
    }
    Ok(tensors)
}

/// Writes `tensors` as one F32 safetensors file at `path`.
pub fn write_file(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<(), Error> {
    let st_err = |e: ::safetensors::SafeTensorError| Error::Safetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let bytes: Vec<(&str, &[usize], Vec<u8>)> = tensors
        .iter()
        .map(|(n, shape, v)| {
            (
                n.as_str(),
                shape.as_slice(),
                v.iter().flat_map(|f| f.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(n, shape, b)| {
            ::safetensors::tensor::TensorView::new(::safetensors::Dtype::F32, shape.to_vec(), b)
                .map(|v| (n.to_string(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(st_err)?;
    ::safetensors::tensor::serialize_to_file(views, None, path).map_err(st_err)
}

/// Writes `dir/model.safetensors` (F32) with `tensors` and `dir/config.json`
/// from `config` (`tied`: the head is the embedding, so no `lm_head.weight`).
pub fn write_dir(
    dir: &Path,
    config: &Config,
    tied: bool,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
) -> Result<(), Error> {
    let io = |path: PathBuf| move |source| Error::Io { path, source };
    std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
    write_file(&dir.join("model.safetensors"), tensors)?;
    let cfg_path = dir.join("config.json");
    let text = serde_json::to_vec_pretty(&config.to_hf(tied)).map_err(|e| Error::Safetensors {
        path: cfg_path.clone(),
        reason: e.to_string(),
    })?;
    std::fs::write(&cfg_path, text).map_err(io(cfg_path.clone()))
}
