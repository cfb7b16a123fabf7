//! GGUF v3, llama.cpp's model container, read without trusting a byte of it.
//!
//! ```text
//! file   = header | metadata kv * kv_count | tensor info * tensor_count | padding | tensor data
//! header = magic "GGUF" (u32 LE 0x46554747) | version u32 (3) | tensor_count u64 | kv_count u64
//! string = len u64 | UTF-8 bytes
//! kv     = key string | value type u32 | value
//! value  = u8 | i8 | u16 | i16 | u32 | i32 | f32 | bool (u8) | string | u64 | i64 | f64
//!        | array: element type u32 | count u64 | element * count
//! tensor info = name string | n_dims u32 (<= 4) | dims u64 * n_dims | ggml type u32 | offset u64
//! tensor data starts at the tensor infos' end rounded up to `general.alignment`
//! (default 32); each tensor's offset is relative to it and aligned.
//! ```
//!
//! Every length and count is checked against the bytes that remain before it is
//! used, so a truncated or hostile file gives a [`GgufError`], never a panic or
//! an allocation the file cannot back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kernels::quant::{self, GgmlType};

const MAGIC: u32 = 0x4655_4747; // "GGUF" read as little-endian u32
const DEFAULT_ALIGNMENT: u64 = 32;
const MAX_DIMS: u32 = 4;
const MAX_ARRAY_NESTING: usize = 4;

/// Errors from reading a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not a GGUF file: magic {found:#010x} (expected {MAGIC:#010x}, \"GGUF\")")]
    BadMagic { found: u32 },
    #[error("unsupported GGUF version {version} (this reader supports 2 and 3)")]
    UnsupportedVersion { version: u32 },
    #[error(
        "file truncated at offset {offset} while reading {what} ({need} bytes needed, {left} left)"
    )]
    Truncated {
        offset: u64,
        what: String,
        need: u64,
        left: u64,
    },
    #[error("unknown metadata value type {ty} at offset {offset}")]
    UnknownValueType { offset: u64, ty: u32 },
    #[error("metadata at offset {offset}: {reason}")]
    BadMetadata { offset: u64, reason: String },
    #[error("tensor {name:?}: {source}")]
    UnsupportedTensorType {
        name: String,
        #[source]
        source: quant::QuantError,
    },
    #[error("tensor {name:?}: {reason}")]
    BadTensor { name: String, reason: String },
    #[error("tensor {name:?} needs bytes {start}..{end} but the file has {file_len} bytes")]
    TensorOutOfBounds {
        name: String,
        start: u64,
        end: u64,
        file_len: u64,
    },
    #[error("no tensor named {name:?}")]
    NoSuchTensor { name: String },
    #[error("metadata key {key:?}: {reason}")]
    MissingMetadata { key: String, reason: String },
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// Any integer type that fits in u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where a tensor lives and what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: dims[0] is the innermost (contiguous) dimension.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Absolute byte range in the file.
    pub start: u64,
    pub bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// The parsed header: everything but the tensor bytes.
#[derive(Clone, Debug)]
pub struct Header {
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    pub data_start: u64,
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        let left = (self.b.len() - self.pos) as u64;
        if n > left {
            return Err(GgufError::Truncated {
                offset: self.pos as u64,
                what: what(),
                need: n,
                left,
            });
        }
        let s = &self.b[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, &|| what.to_string())?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let at = self.pos as u64;
        let len = self.u64(what)?;
        let bytes = self.take(len, &|| format!("{what} ({len} bytes)"))?;
        String::from_utf8(bytes.to_vec()).map_err(|e| GgufError::BadMetadata {
            offset: at,
            reason: format!("{what} is not UTF-8: {e}"),
        })
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<Value, GgufError> {
        let at = self.pos as u64;
        Ok(match ty {
            0 => Value::U8(self.array::<1>("u8")?[0]),
            1 => Value::I8(self.array::<1>("i8")?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array("u16")?)),
            3 => Value::I16(i16::from_le_bytes(self.array("i16")?)),
            4 => Value::U32(self.u32("u32")?),
            5 => Value::I32(i32::from_le_bytes(self.array("i32")?)),
            6 => Value::F32(f32::from_le_bytes(self.array("f32")?)),
            7 => match self.array::<1>("bool")?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                other => {
                    return Err(GgufError::BadMetadata {
                        offset: at,
                        reason: format!("bool byte {other}"),
                    });
                }
            },
            8 => Value::String(self.string("string value")?),
            9 => {
                if depth >= MAX_ARRAY_NESTING {
                    return Err(GgufError::BadMetadata {
                        offset: at,
                        reason: format!("arrays nested deeper than {MAX_ARRAY_NESTING}"),
                    });
                }
                let elem = self.u32("array element type")?;
                let count = self.u64("array length")?;
                // Every element takes at least one byte: a count beyond the
                // bytes left cannot be real, and must not size an allocation.
                let left = (self.b.len() - self.pos) as u64;
                if count > left {
                    return Err(GgufError::Truncated {
                        offset: self.pos as u64,
                        what: format!("array of {count} elements"),
                        need: count,
                        left,
                    });
                }
                let mut v = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    v.push(self.value(elem, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64("u64")?),
            11 => Value::I64(i64::from_le_bytes(self.array("i64")?)),
            12 => Value::F64(f64::from_le_bytes(self.array("f64")?)),
            other => {
                return Err(GgufError::UnknownValueType {
                    offset: at,
                    ty: other,
                });
            }
        })
    }
}

impl Header {
    /// Parses the header of a GGUF file held in `bytes` (the whole file: tensor
    /// bounds are checked against its length).
    pub fn parse(bytes: &[u8]) -> Result<Header, GgufError> {
        let mut c = Cursor { b: bytes, pos: 0 };
        let magic = c.u32("magic")?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic { found: magic });
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion { version });
        }
        let tensor_count = c.u64("tensor count")?;
        let kv_count = c.u64("metadata count")?;
        let mut metadata = Vec::new();
        for i in 0..kv_count {
            let key = c.string(&format!("metadata key {i}"))?;
            let ty = c.u32("metadata value type")?;
            let v = c.value(ty, 0)?;
            metadata.push((key, v));
        }
        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => {
                    return Err(GgufError::BadMetadata {
                        offset: 0,
                        reason: format!("general.alignment {v:?} is not a power of two"),
                    });
                }
            },
        };
        let mut raw = Vec::new();
        for i in 0..tensor_count {
            let name = c.string(&format!("tensor {i} name"))?;
            let n_dims = c.u32("tensor dims")?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::BadTensor {
                    name,
                    reason: format!("{n_dims} dimensions (1..={MAX_DIMS} supported)"),
                });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64("tensor dim")?);
            }
            let type_id = c.u32("tensor type")?;
            let offset = c.u64("tensor offset")?;
            raw.push((name, dims, type_id, offset));
        }
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        let file_len = bytes.len() as u64;
        let mut tensors = Vec::with_capacity(raw.len());
        for (name, dims, type_id, offset) in raw {
            let ty =
                GgmlType::from_id(type_id).map_err(|source| GgufError::UnsupportedTensorType {
                    name: name.clone(),
                    source,
                })?;
            let n = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .filter(|&n| n > 0)
                .ok_or_else(|| GgufError::BadTensor {
                    name: name.clone(),
                    reason: format!("dims {dims:?} give no valid element count"),
                })?;
            let nbytes = usize::try_from(n)
                .ok()
                .and_then(|n| ty.bytes_for(n))
                .ok_or_else(|| GgufError::BadTensor {
                    name: name.clone(),
                    reason: format!("{n} elements is not a whole number of {ty:?} blocks"),
                })? as u64;
            if offset % alignment != 0 {
                return Err(GgufError::BadTensor {
                    name,
                    reason: format!("offset {offset} is not aligned to {alignment}"),
                });
            }
            let start = data_start.checked_add(offset);
            let end = start.and_then(|s| s.checked_add(nbytes));
            match (start, end) {
                (Some(start), Some(end)) if end <= file_len => tensors.push(TensorInfo {
                    name,
                    dims,
                    ty,
                    start,
                    bytes: nbytes,
                }),
                _ => {
                    return Err(GgufError::TensorOutOfBounds {
                        name,
                        start: start.unwrap_or(u64::MAX),
                        end: end.unwrap_or(u64::MAX),
                        file_len,
                    });
                }
            }
        }
        Ok(Header {
            version,
            metadata,
            tensors,
            alignment,
            data_start,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A required integer.
    pub fn u64(&self, key: &str) -> Result<u64, GgufError> {
        self.get(key)
            .ok_or_else(|| missing(key, "absent"))?
            .as_u64()
            .ok_or_else(|| missing(key, "not an unsigned integer"))
    }

    /// A required float.
    pub fn f64(&self, key: &str) -> Result<f64, GgufError> {
        self.get(key)
            .ok_or_else(|| missing(key, "absent"))?
            .as_f64()
            .ok_or_else(|| missing(key, "not a number"))
    }

    /// A required string.
    pub fn str(&self, key: &str) -> Result<&str, GgufError> {
        self.get(key)
            .ok_or_else(|| missing(key, "absent"))?
            .as_str()
            .ok_or_else(|| missing(key, "not a string"))
    }
}

fn missing(key: &str, reason: &str) -> GgufError {
    GgufError::MissingMetadata {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

/// A GGUF file, memory-mapped: tensor bytes are read in place, never copied.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    map: memmap2::Mmap,
    pub header: Header,
    by_name: HashMap<String, usize>,
}

impl GgufFile {
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| GgufError::Io {
            path: path.clone(),
            source,
        };
        let file = std::fs::File::open(&path).map_err(io)?;
        // SAFETY: the map is read-only and private to this process; mlstack
        // never writes model files while serving them. A file truncated by
        // another process underneath would fault (SIGBUS), as with any mmap.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        let header = Header::parse(&map)?;
        let by_name = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(GgufFile {
            path,
            map,
            header,
            by_name,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn tensor(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.by_name
            .get(name)
            .map(|&i| &self.header.tensors[i])
            .ok_or_else(|| GgufError::NoSuchTensor {
                name: name.to_string(),
            })
    }

    /// The whole mapped file (tensor bytes are `data()[t.start..t.start + t.bytes]`).
    pub fn data(&self) -> &[u8] {
        &self.map
    }

    /// A tensor's raw (possibly quantized) bytes, in place in the mapping.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8], GgufError> {
        let t = self.tensor(name)?;
        // Bounds were checked against the file length at parse time.
        Ok(&self.map[t.start as usize..(t.start + t.bytes) as usize])
    }

    /// A tensor dequantized to f32, in ggml element order.
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let t = self.tensor(name)?;
        let mut out = vec![0f32; t.n_elements() as usize];
        quant::dequantize(t.ty, self.tensor_bytes(name)?, &mut out).map_err(|source| {
            GgufError::UnsupportedTensorType {
                name: name.to_string(),
                source,
            }
        })?;
        Ok(out)
    }
}

/// Builds GGUF bytes for tests (and fuzzing seeds).
#[cfg(test)]
pub(crate) mod testfile {
    pub struct Builder {
        pub kv: Vec<u8>,
        pub n_kv: u64,
        pub infos: Vec<u8>,
        pub n_tensors: u64,
        pub data: Vec<u8>,
        pub version: u32,
    }

    pub fn string(b: &mut Vec<u8>, s: &str) {
        b.extend_from_slice(&(s.len() as u64).to_le_bytes());
        b.extend_from_slice(s.as_bytes());
    }

    impl Builder {
        pub fn new() -> Self {
            Self {
                kv: vec![],
                n_kv: 0,
                infos: vec![],
                n_tensors: 0,
                data: vec![],
                version: 3,
            }
        }
        pub fn kv(&mut self, key: &str, ty: u32, value: &[u8]) -> &mut Self {
            string(&mut self.kv, key);
            self.kv.extend_from_slice(&ty.to_le_bytes());
            self.kv.extend_from_slice(value);
            self.n_kv += 1;
            self
        }
        /// Adds a tensor whose data is appended at the next 32-byte boundary.
        pub fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, bytes: &[u8]) -> &mut Self {
            while !self.data.len().is_multiple_of(32) {
                self.data.push(0);
            }
            string(&mut self.infos, name);
            self.infos
                .extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                self.infos.extend_from_slice(&d.to_le_bytes());
            }
            self.infos.extend_from_slice(&ty.to_le_bytes());
            self.infos
                .extend_from_slice(&(self.data.len() as u64).to_le_bytes());
            self.data.extend_from_slice(bytes);
            self.n_tensors += 1;
            self
        }
        pub fn build(&self) -> Vec<u8> {
            let mut b = Vec::new();
            b.extend_from_slice(b"GGUF");
            b.extend_from_slice(&self.version.to_le_bytes());
            b.extend_from_slice(&self.n_tensors.to_le_bytes());
            b.extend_from_slice(&self.n_kv.to_le_bytes());
            b.extend_from_slice(&self.kv);
            b.extend_from_slice(&self.infos);
            while !b.len().is_multiple_of(32) {
                b.push(0);
            }
            b.extend_from_slice(&self.data);
            b
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testfile::{Builder, string};
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Vec<u8> {
        let mut arr = Vec::new();
        arr.extend_from_slice(&8u32.to_le_bytes());
        arr.extend_from_slice(&2u64.to_le_bytes());
        string(&mut arr, "hello");
        string(&mut arr, "wörld");
        let mut s = Vec::new();
        string(&mut s, "llama");
        let mut q8 = Vec::new();
        q8.extend_from_slice(&half::f16::from_f32(0.25).to_le_bytes());
        q8.extend((0..32).map(|i| (i as i8 - 16) as u8));
        Builder::new()
            .kv("general.architecture", 8, &s)
            .kv("u8", 0, &[7])
            .kv("i8", 1, &[0xff])
            .kv("u16", 2, &500u16.to_le_bytes())
            .kv("i16", 3, &(-500i16).to_le_bytes())
            .kv("u32", 4, &70000u32.to_le_bytes())
            .kv("i32", 5, &(-70000i32).to_le_bytes())
            .kv("f32", 6, &1.5f32.to_le_bytes())
            .kv("bool", 7, &[1])
            .kv("arr", 9, &arr)
            .kv("u64", 10, &(1u64 << 40).to_le_bytes())
            .kv("i64", 11, &(-(1i64 << 40)).to_le_bytes())
            .kv("f64", 12, &2.25f64.to_le_bytes())
            .tensor(
                "norm",
                &[4],
                0,
                &[1f32, 2., 3., 4.].map(f32::to_le_bytes).concat(),
            )
            .tensor("embd", &[32, 1], 8, &q8)
            .build()
    }

    #[test]
    fn every_value_type_and_tensor_parses() {
        let bytes = sample();
        let h = Header::parse(&bytes).expect("parses");
        assert_eq!(h.version, 3);
        assert_eq!(h.str("general.architecture").expect("arch"), "llama");
        assert_eq!(h.get("i8"), Some(&Value::I8(-1)));
        assert_eq!(h.get("i16"), Some(&Value::I16(-500)));
        assert_eq!(h.get("i32"), Some(&Value::I32(-70000)));
        assert_eq!(h.u64("u64").expect("u64"), 1 << 40);
        assert_eq!(h.get("i64"), Some(&Value::I64(-(1 << 40))));
        assert_eq!(h.f64("f32").expect("f32"), 1.5);
        assert_eq!(h.f64("f64").expect("f64"), 2.25);
        assert_eq!(h.get("bool"), Some(&Value::Bool(true)));
        assert_eq!(
            h.get("arr"),
            Some(&Value::Array(vec![
                Value::String("hello".into()),
                Value::String("wörld".into())
            ]))
        );
        assert_eq!(h.tensors.len(), 2);
        assert_eq!(h.tensors[1].ty, GgmlType::Q8_0);
        assert_eq!(h.tensors[1].start % 32, 0);
        assert!(matches!(
            h.u64("general.architecture"),
            Err(GgufError::MissingMetadata { .. })
        ));
    }

    #[test]
    fn every_truncation_is_a_typed_error() {
        let bytes = sample();
        for cut in 0..bytes.len() - 1 {
            match Header::parse(&bytes[..cut]) {
                Err(GgufError::Truncated { .. }) | Err(GgufError::TensorOutOfBounds { .. }) => {}
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn bad_magic_version_type_offset_and_alignment_are_reported() {
        let mut b = sample();
        b[0] = b'X';
        assert!(matches!(Header::parse(&b), Err(GgufError::BadMagic { .. })));
        for v in [1u32, 4] {
            let mut b = sample();
            b[4..8].copy_from_slice(&v.to_le_bytes());
            assert!(
                matches!(Header::parse(&b), Err(GgufError::UnsupportedVersion { version }) if version == v)
            );
        }
        let q = Builder::new().tensor("k", &[256], 12, &[0u8; 144]).build(); // Q4_K
        match Header::parse(&q) {
            Err(e @ GgufError::UnsupportedTensorType { .. }) => {
                assert!(e.to_string().contains("12"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        // A tensor that claims more bytes than the file holds.
        let mut t = Builder::new();
        t.tensor("big", &[1024], 0, &[0u8; 16]);
        assert!(matches!(
            Header::parse(&t.build()),
            Err(GgufError::TensorOutOfBounds { .. })
        ));
        // Alignment that is not a power of two.
        let a = Builder::new()
            .kv("general.alignment", 4, &24u32.to_le_bytes())
            .build();
        assert!(matches!(
            Header::parse(&a),
            Err(GgufError::BadMetadata { .. })
        ));
        // A count far beyond the file must not allocate.
        let mut huge = Vec::new();
        huge.extend_from_slice(&0u32.to_le_bytes());
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            Header::parse(&Builder::new().kv("a", 9, &huge).build()),
            Err(GgufError::Truncated { .. })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
        /// Fuzzing the header parser: mutated valid files and random bytes
        /// never panic.
        #[test]
        fn mutated_files_never_panic(
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
            junk in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut b = sample();
            for (i, v) in flips {
                let i = i.index(b.len());
                b[i] = v;
            }
            let _ = Header::parse(&b);
            let c = cut.index(b.len());
            let _ = Header::parse(&b[..c]);
            let mut j = b"GGUF\x03\0\0\0".to_vec();
            j.extend(junk);
            let _ = Header::parse(&j);
        }
    }
}
