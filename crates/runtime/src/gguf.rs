//! GGUF files: reading with errors that name the file, and requantization (dequantize every
//! tensor to f32, quantize to the target type) that keeps all metadata — architecture keys,
//! tokenizer vocabulary, merges, special ids, chat template — so llama.cpp can load the output.
//!
//! Output is deterministic: metadata is written in key order and tensors in their source order,
//! so the same input and type give byte-identical files (the cache's early cutoff relies on it).

use anyhow::{Context, Result, bail};
use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{Device, Tensor};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::path::Path;

/// Precision names of the language → GGML types.
pub fn dtype_of(precision: &str) -> Option<GgmlDType> {
    Some(match precision {
        "f32" => GgmlDType::F32,
        "f16" => GgmlDType::F16,
        "bf16" => GgmlDType::BF16,
        "q8_0" => GgmlDType::Q8_0,
        "q4_0" => GgmlDType::Q4_0,
        "q4_1" => GgmlDType::Q4_1,
        "q5_0" => GgmlDType::Q5_0,
        "q5_1" => GgmlDType::Q5_1,
        "q4_k" => GgmlDType::Q4K,
        "q5_k" => GgmlDType::Q5K,
        "q6_k" => GgmlDType::Q6K,
        _ => return None,
    })
}

pub fn type_name(t: GgmlDType) -> &'static str {
    match t {
        GgmlDType::F32 => "f32",
        GgmlDType::F16 => "f16",
        GgmlDType::BF16 => "bf16",
        GgmlDType::Q4_0 => "q4_0",
        GgmlDType::Q4_1 => "q4_1",
        GgmlDType::Q5_0 => "q5_0",
        GgmlDType::Q5_1 => "q5_1",
        GgmlDType::Q8_0 => "q8_0",
        GgmlDType::Q8_1 => "q8_1",
        GgmlDType::Q2K => "q2_k",
        GgmlDType::Q3K => "q3_k",
        GgmlDType::Q4K => "q4_k",
        GgmlDType::Q5K => "q5_k",
        GgmlDType::Q6K => "q6_k",
        GgmlDType::Q8K => "q8_k",
    }
}

/// llama.cpp's `general.file_type` (enum llama_ftype) for a file mostly of type `t`.
fn llama_ftype(t: GgmlDType) -> u32 {
    match t {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q8_0 => 7,
        GgmlDType::Q5_0 => 8,
        GgmlDType::Q5_1 => 9,
        GgmlDType::Q4K => 15, // Q4_K_M
        GgmlDType::Q5K => 17, // Q5_K_M
        GgmlDType::Q6K => 18,
        GgmlDType::BF16 => 32,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 12,
        GgmlDType::Q8_1 | GgmlDType::Q8K => 7,
    }
}

/// A parsed GGUF header and its open file.
pub struct Gguf {
    pub content: gguf_file::Content,
    reader: BufReader<File>,
    pub path: std::path::PathBuf,
}

impl Gguf {
    pub fn open(path: &Path) -> Result<Gguf> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut reader = BufReader::new(file);
        // candle's reader divides by the declared alignment: refuse a zero one first.
        if declared_alignment(&mut reader) == Some(0) {
            bail!(
                "{} is not a readable GGUF file: general.alignment is 0 (it must be a power of \
                 two, 32 by default)",
                path.display()
            );
        }
        reader.rewind()?;
        let content = gguf_file::Content::read(&mut reader)
            .map_err(|e| anyhow::anyhow!("{} is not a readable GGUF file: {e}", path.display()))?;
        Ok(Gguf {
            content,
            reader,
            path: path.to_path_buf(),
        })
    }

    /// Tensor names in file order.
    pub fn tensor_names(&self) -> Vec<String> {
        let mut names: Vec<(&String, u64)> = self
            .content
            .tensor_infos
            .iter()
            .map(|(n, i)| (n, i.offset))
            .collect();
        names.sort_by_key(|(n, off)| (*off, n.to_string()));
        names.into_iter().map(|(n, _)| n.clone()).collect()
    }

    pub fn tensor(&mut self, name: &str) -> Result<QTensor> {
        self.tensor_on(name, &Device::Cpu)
    }

    /// The stored type of a tensor, if the file has it.
    pub fn tensor_type(&self, name: &str) -> Option<GgmlDType> {
        self.content.tensor_infos.get(name).map(|i| i.ggml_dtype)
    }

    /// A tensor read straight onto `device` (a GPU for the CUDA build).
    pub fn tensor_on(&mut self, name: &str, device: &Device) -> Result<QTensor> {
        self.content
            .tensor(&mut self.reader, name, device)
            .map_err(|e| anyhow::anyhow!("{}: tensor `{name}`: {e}", self.path.display()))
    }

    pub fn metadata_str(&self, key: &str) -> Option<&str> {
        self.content
            .metadata
            .get(key)
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
    }
}

/// What a conversion did; built tensor by tensor with [`Requantized::input`] and
/// [`Requantized::encode`].
#[derive(Debug, Clone)]
pub struct Requantized {
    pub target: GgmlDType,
    /// Parameters (elements over all tensors).
    pub params: u64,
    /// Bytes of tensor data in and out.
    pub input_tensor_bytes: u64,
    pub output_tensor_bytes: u64,
    /// Tensors not written in the target type, and why (shape not divisible by the block).
    pub fallbacks: Vec<String>,
    /// Input elements per source type.
    by_type: std::collections::BTreeMap<&'static str, u64>,
    /// The tensor that produces the logits (`output.weight`, or the tied `token_embd.weight`).
    head: Option<String>,
}

impl Requantized {
    pub fn new(target: GgmlDType) -> Requantized {
        Requantized {
            target,
            params: 0,
            input_tensor_bytes: 0,
            output_tensor_bytes: 0,
            fallbacks: vec![],
            by_type: Default::default(),
            head: None,
        }
    }

    /// Notes which of `names` is the output head: `output.weight`, else the tied embedding.
    pub fn find_head<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        let names: Vec<&str> = names.into_iter().collect();
        self.head = ["output.weight", "token_embd.weight"]
            .into_iter()
            .find(|h| names.contains(h))
            .map(str::to_string);
    }

    /// Counts one input tensor.
    pub fn input(&mut self, source_type: &'static str, elems: usize, bytes: usize) {
        self.params += elems as u64;
        self.input_tensor_bytes += bytes as u64;
        *self.by_type.entry(source_type).or_default() += elems as u64;
    }

    /// The type `name` is written in (see [`tensor_type`]), recording a fallback.
    pub fn type_for(&mut self, name: &str, dims: &[usize]) -> GgmlDType {
        // As llama.cpp does: below 6 bits, the output head is written in q6_k (q8_0 where its
        // rows do not fit q6_k's blocks): its error lands on every logit.
        if self.head.as_deref() == Some(name) && dims.len() == 2 && low_bit(self.target) {
            let row = dims[1];
            let t = [GgmlDType::Q6K, GgmlDType::Q8_0]
                .into_iter()
                .find(|t| row.is_multiple_of(t.block_size()))
                .unwrap_or(GgmlDType::F16);
            self.fallbacks.push(format!(
                "{name} → {}: the output head is kept above {} bits",
                type_name(t),
                type_name(self.target)
            ));
            return t;
        }
        let (t, why) = tensor_type(dims, self.target);
        if let Some(why) = why {
            self.fallbacks
                .push(format!("{name} → {}: {why}", type_name(t)));
        }
        t
    }

    /// Counts one output tensor.
    pub fn output(&mut self, q: &QTensor) {
        self.output_tensor_bytes += q.storage_size_in_bytes() as u64;
    }

    /// Quantizes an f32 tensor to the type chosen for it and counts it.
    pub fn encode(&mut self, name: &str, t: &Tensor) -> Result<QTensor> {
        let ty = self.type_for(name, t.dims());
        let q = QTensor::quantize(t, ty)
            .with_context(|| format!("cannot quantize `{name}` to {}", type_name(ty)))?;
        self.output(&q);
        Ok(q)
    }

    /// Most common tensor type of the source (by elements), e.g. "q4_1".
    pub fn source_type(&self) -> &'static str {
        self.by_type
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(t, _)| *t)
            .unwrap_or("f32")
    }
}

/// Writes a GGUF: `meta` (sorted by key, with `general.file_type` for `target` and the 32-byte
/// alignment the writer uses) and `tensors` in the given order.
pub fn write_file(
    dst: &Path,
    mut meta: Vec<(String, gguf_file::Value)>,
    target: GgmlDType,
    tensors: &[(String, QTensor)],
) -> Result<()> {
    meta.retain(|(k, _)| k != "general.alignment" && k != "general.file_type");
    meta.push((
        "general.file_type".into(),
        gguf_file::Value::U32(llama_ftype(target)),
    ));
    meta.push(("general.alignment".into(), gguf_file::Value::U32(32)));
    meta.sort_by(|a, b| a.0.cmp(&b.0));
    let meta_refs: Vec<(&str, &gguf_file::Value)> =
        meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let file = File::create(dst).with_context(|| format!("cannot create {}", dst.display()))?;
    let mut w = BufWriter::new(file);
    gguf_file::write(&mut w, &meta_refs, &refs)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", dst.display()))?;
    w.flush()?;
    Ok(())
}

/// The architecture keys llama.cpp reads for `llama` / `qwen2` models.
pub struct ArchMeta<'a> {
    pub family: &'a str,
    pub layers: usize,
    pub context: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub eps: f32,
    pub rope_base: f32,
    pub vocab: usize,
}

impl ArchMeta<'_> {
    pub fn metadata(&self) -> Vec<(String, gguf_file::Value)> {
        let f = self.family;
        let u = |x: usize| gguf_file::Value::U32(x as u32);
        vec![
            (
                "general.architecture".into(),
                gguf_file::Value::String(f.into()),
            ),
            (format!("{f}.block_count"), u(self.layers)),
            (format!("{f}.context_length"), u(self.context)),
            (format!("{f}.embedding_length"), u(self.hidden)),
            (format!("{f}.feed_forward_length"), u(self.ffn)),
            (format!("{f}.attention.head_count"), u(self.heads)),
            (format!("{f}.attention.head_count_kv"), u(self.kv_heads)),
            (
                format!("{f}.attention.layer_norm_rms_epsilon"),
                gguf_file::Value::F32(self.eps),
            ),
            (
                format!("{f}.rope.freq_base"),
                gguf_file::Value::F32(self.rope_base),
            ),
            (format!("{f}.vocab_size"), u(self.vocab)),
        ]
    }
}

/// Types of fewer than 6 bits per weight.
fn low_bit(t: GgmlDType) -> bool {
    use GgmlDType::*;
    matches!(t, Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q2K | Q3K | Q4K | Q5K)
}

/// Type for one tensor: 1-D tensors (norms, biases) stay f32 as llama.cpp keeps them; a matrix
/// whose rows do not split into the target's blocks falls back to q8_0, then f16.
fn tensor_type(dims: &[usize], target: GgmlDType) -> (GgmlDType, Option<String>) {
    if dims.len() < 2 {
        return (GgmlDType::F32, None);
    }
    let row = *dims.last().expect("≥ 2 dims");
    for t in [target, GgmlDType::Q8_0, GgmlDType::F16] {
        if row.is_multiple_of(t.block_size()) {
            let why = (t != target).then(|| {
                format!(
                    "rows of {row} are not a multiple of {}'s block of {}",
                    type_name(target),
                    target.block_size()
                )
            });
            return (t, why);
        }
    }
    (
        GgmlDType::F32,
        Some(format!("rows of {row} fit no block size")),
    )
}

/// Rewrites `src` as a GGUF of `target` precision at `dst`. `progress(done, total)` is called
/// per tensor; `cancelled()` is polled between tensors.
pub fn requantize(
    src: &Path,
    dst: &Path,
    target: GgmlDType,
    progress: &dyn Fn(u64, u64),
    cancelled: &dyn Fn() -> bool,
) -> Result<Requantized> {
    requantize_with(src, dst, target, &Default::default(), progress, cancelled)
}

/// [`requantize`], adding `deltas[name]` (f32, the tensor's shape) to the named tensors first:
/// how a LoRA adapter is merged into its base.
pub fn requantize_with(
    src: &Path,
    dst: &Path,
    target: GgmlDType,
    deltas: &std::collections::HashMap<String, Tensor>,
    progress: &dyn Fn(u64, u64),
    cancelled: &dyn Fn() -> bool,
) -> Result<Requantized> {
    let mut g = Gguf::open(src)?;
    let names = g.tensor_names();
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(names.len());
    let mut report = Requantized::new(target);
    report.find_head(names.iter().map(String::as_str));
    for (i, name) in names.iter().enumerate() {
        if cancelled() {
            bail!("interrupted");
        }
        let q = g.tensor(name)?;
        let dims = q.shape().dims().to_vec();
        report.input(
            type_name(q.dtype()),
            q.shape().elem_count(),
            q.storage_size_in_bytes(),
        );
        let ty = report.type_for(name, &dims);
        let out = if let Some(d) = deltas.get(name) {
            let f = (q.dequantize(&Device::Cpu)? + d)
                .with_context(|| format!("cannot merge the adapter into `{name}`"))?;
            QTensor::quantize(&f, ty)
                .with_context(|| format!("cannot quantize `{name}` to {}", type_name(ty)))?
        } else if q.dtype() == ty {
            q
        } else {
            let f: Tensor = q
                .dequantize(&Device::Cpu)
                .with_context(|| format!("{}: cannot dequantize `{name}`", src.display()))?;
            QTensor::quantize(&f, ty)
                .with_context(|| format!("cannot quantize `{name}` to {}", type_name(ty)))?
        };
        report.output(&out);
        tensors.push((name.clone(), out));
        progress(i as u64 + 1, names.len() as u64);
    }
    // Metadata: everything from the source (tokenizer, template, architecture).
    let meta = g
        .content
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    write_file(dst, meta, target, &tensors)?;
    Ok(report)
}

/// The alignment candle's reader takes from the metadata of the GGUF file `r` reads: the last
/// `general.alignment` entry (keys compared as candle does, trailing NULs dropped) of a type it
/// uses (8-, 16-, 32-bit integers). None when there is none, or the metadata is malformed (candle
/// then says what is wrong). Every length is checked against the bytes left, so a hostile
/// header cannot make it allocate or loop for long.
fn declared_alignment(r: &mut (impl Read + Seek)) -> Option<u64> {
    const KEY: &[u8] = b"general.alignment";
    let size = r.seek(std::io::SeekFrom::End(0)).ok()?;
    r.rewind().ok()?;
    let mut w = Walker { r, left: size };
    if &w.bytes(4)?[..] != b"GGUF" {
        return None;
    }
    let version = w.u32()?;
    // Version 1 counts and lengths are 32-bit, later ones 64-bit.
    let wide = version >= 2;
    let count = |w: &mut Walker<_>| {
        if wide {
            w.u64()
        } else {
            w.u32().map(u64::from)
        }
    };
    let _tensors = count(&mut w)?;
    let kvs = count(&mut w)?;
    let mut alignment = None;
    for _ in 0..kvs {
        let len = count(&mut w)?;
        let is_alignment = w.key_is(len, KEY)?;
        let ty = w.u32()?;
        if is_alignment {
            alignment = match ty {
                0 | 1 => w.bytes(1).map(|b| Some(u64::from(b[0])))?,
                2 | 3 => w
                    .bytes(2)
                    .map(|b| Some(u64::from(u16::from_le_bytes([b[0], b[1]]))))?,
                4 | 5 => w.u32().map(|v| Some(u64::from(v)))?,
                _ => w.skip_value(ty, wide, 0).map(|_| None)?,
            };
        } else {
            w.skip_value(ty, wide, 0)?;
        }
    }
    alignment
}

/// Bounded reads over a GGUF header.
struct Walker<'a, R> {
    r: &'a mut R,
    left: u64,
}

impl<R: Read> Walker<'_, R> {
    /// Reads a key of `len` bytes: whether it is `name` once trailing NULs are dropped (as
    /// candle reads keys), without holding a long key in memory.
    fn key_is(&mut self, len: u64, name: &[u8]) -> Option<bool> {
        let head = self.bytes(len.min(name.len() as u64))?;
        let mut rest = len - head.len() as u64;
        let mut all_nul = true;
        while rest > 0 {
            let chunk = self.bytes(rest.min(1 << 16))?;
            all_nul &= chunk.iter().all(|&b| b == 0);
            rest -= chunk.len() as u64;
        }
        Some(all_nul && head == name)
    }
    fn bytes(&mut self, n: u64) -> Option<Vec<u8>> {
        if n > self.left || n > 1 << 20 {
            return None;
        }
        let mut b = vec![0; n as usize];
        self.r.read_exact(&mut b).ok()?;
        self.left -= n;
        Some(b)
    }
    fn skip(&mut self, n: u64) -> Option<()> {
        if n > self.left {
            return None;
        }
        std::io::copy(&mut self.r.by_ref().take(n), &mut std::io::sink()).ok()?;
        self.left -= n;
        Some(())
    }
    fn u32(&mut self) -> Option<u32> {
        self.bytes(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        self.bytes(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    /// Skips one value of GGUF type `ty` (arrays nest at most 64 deep, candle's bound).
    fn skip_value(&mut self, ty: u32, wide: bool, depth: u32) -> Option<()> {
        let len = |w: &mut Self| {
            if wide {
                w.u64()
            } else {
                w.u32().map(u64::from)
            }
        };
        match ty {
            0 | 1 | 7 => self.skip(1),
            2 | 3 => self.skip(2),
            4..=6 => self.skip(4),
            10..=12 => self.skip(8),
            8 => {
                let n = len(self)?;
                self.skip(n)
            }
            9 if depth < 64 => {
                let item = self.u32()?;
                let n = len(self)?;
                let fixed = match item {
                    0 | 1 | 7 => Some(1),
                    2 | 3 => Some(2),
                    4..=6 => Some(4),
                    10..=12 => Some(8),
                    _ => None,
                };
                match fixed {
                    Some(w) => self.skip(n.checked_mul(w)?),
                    // Strings and nested arrays: one at a time, each at least a byte.
                    None if n <= self.left => {
                        (0..n).try_for_each(|_| self.skip_value(item, wide, depth + 1))
                    }
                    None => None,
                }
            }
            _ => None,
        }
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// Writes a small llama-shaped GGUF of random f32 weights; returns the weights by name.
    pub fn tiny_gguf(path: &Path, seed: u64) -> Vec<(String, Vec<f32>)> {
        let mut x = seed | 1;
        let mut rand = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
        };
        let shapes: &[(&str, &[usize])] = &[
            ("token_embd.weight", &[64, 256]),
            ("blk.0.attn_norm.weight", &[256]),
            ("blk.0.attn_q.weight", &[256, 256]),
            ("blk.0.ffn_down.weight", &[256, 96]),
            ("output_norm.weight", &[256]),
        ];
        let mut tensors = vec![];
        let mut values = vec![];
        for (name, dims) in shapes {
            let n: usize = dims.iter().product();
            let v: Vec<f32> = (0..n).map(|_| rand() * 0.1).collect();
            let t = Tensor::from_vec(v.clone(), *dims, &Device::Cpu).unwrap();
            tensors.push((
                name.to_string(),
                QTensor::quantize(&t, GgmlDType::F32).unwrap(),
            ));
            values.push((name.to_string(), v));
        }
        let arch = gguf_file::Value::String("llama".into());
        let vocab = gguf_file::Value::Array(vec![
            gguf_file::Value::String("a".into()),
            gguf_file::Value::String("b".into()),
        ]);
        let meta = [
            ("general.architecture", &arch),
            ("tokenizer.ggml.tokens", &vocab),
        ];
        let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut f = File::create(path).unwrap();
        gguf_file::write(&mut f, &meta, &refs).unwrap();
        values
    }

    fn rel_rms(a: &[f32], b: &[f32]) -> f64 {
        let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
        let den: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum();
        (num / den).sqrt()
    }

    /// Found by the `gguf` fuzz target: a header that declares `general.alignment = 0` made
    /// candle's reader divide by zero (a panic, exit 101).
    #[test]
    fn a_zero_alignment_is_an_error_naming_the_file_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.gguf");
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(3u32.to_le_bytes()); // version
        bytes.extend(0u64.to_le_bytes()); // tensors
        bytes.extend(1u64.to_le_bytes()); // metadata entries
        bytes.extend(17u64.to_le_bytes());
        bytes.extend(b"general.alignment");
        bytes.extend(4u32.to_le_bytes()); // u32
        bytes.extend(0u32.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let e = Gguf::open(&path).err().expect("refused");
        let text = format!("{e:#}");
        assert!(
            text.contains("bad.gguf") && text.contains("alignment is 0"),
            "{text}"
        );
        // The same header with alignment 32 reads.
        let n = bytes.len();
        bytes[n - 4..].copy_from_slice(&32u32.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        assert!(Gguf::open(&path).is_ok());
        // The fuzzer's own input (an i8 alignment of 0 after a shorter key count) too.
        let found = b"GGUF\x03\0\0\0\0\0\0\0\0\0\0\0\x01\0\0\0\0\0\0\0\x14\0\0\0\0\0\0\0general.alignment\0\0\0\0\0\0\0\0l\0";
        std::fs::write(&path, found).unwrap();
        assert!(Gguf::open(&path).is_err());
        // A key padded with NULs past 64 bytes is still `general.alignment` to candle.
        let mut long = b"GGUF".to_vec();
        long.extend(3u32.to_le_bytes());
        long.extend(0u64.to_le_bytes());
        long.extend(1u64.to_le_bytes());
        long.extend(100u64.to_le_bytes());
        long.extend(b"general.alignment");
        long.extend([0u8; 83]);
        long.extend(4u32.to_le_bytes());
        long.extend(0u32.to_le_bytes());
        std::fs::write(&path, &long).unwrap();
        let text = format!("{:#}", Gguf::open(&path).err().expect("refused"));
        assert!(text.contains("alignment is 0"), "{text}");
    }

    #[test]
    fn every_type_round_trips_within_its_error_bound_and_is_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.gguf");
        let original = tiny_gguf(&src, 7);
        // relative RMS error bounds per type (4-bit ≈ 1/16 step, 8-bit ≈ 1/256)
        let cases = [
            ("f32", 1e-7),
            ("f16", 1e-3),
            ("bf16", 8e-3),
            ("q8_0", 1e-2),
            ("q5_0", 6e-2),
            ("q4_0", 0.12),
            ("q4_1", 0.12),
            ("q4_k", 0.12),
            ("q6_k", 3e-2),
        ];
        for (name, bound) in cases {
            let t = dtype_of(name).unwrap();
            let out = dir.path().join(format!("{name}.gguf"));
            let r = requantize(&src, &out, t, &|_, _| {}, &|| false).unwrap();
            assert_eq!(
                r.params,
                original.iter().map(|(_, v)| v.len() as u64).sum::<u64>()
            );
            let mut g = Gguf::open(&out).unwrap();
            assert_eq!(g.metadata_str("general.architecture"), Some("llama"));
            assert!(g.content.metadata.contains_key("tokenizer.ggml.tokens"));
            for (tname, values) in &original {
                let q = g.tensor(tname).unwrap();
                let back: Vec<f32> = q
                    .dequantize(&Device::Cpu)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let err = rel_rms(values, &back);
                let is_matrix = q.shape().dims().len() == 2;
                let expected = match (is_matrix, tname.as_str()) {
                    (false, _) => 1e-7, // norms stay f32
                    // rows of 96 cannot hold K-quant blocks of 256: q8_0 fallback
                    (true, "blk.0.ffn_down.weight") if name.ends_with("_k") => 1e-2,
                    (true, _) => bound,
                };
                assert!(
                    err <= expected,
                    "{name}/{tname}: relative error {err} > {expected}"
                );
            }
            if name == "q4_k" {
                // ffn_down's rows do not fit; the tied head is kept above 4 bits.
                assert_eq!(r.fallbacks.len(), 2, "{:?}", r.fallbacks);
            }
            if matches!(name, "q4_0" | "q5_1" | "q4_k") {
                assert!(
                    r.fallbacks.iter().any(|f| f.contains("output head")),
                    "{name}: {:?}",
                    r.fallbacks
                );
            }
            // same input, same type → same bytes
            let again = dir.path().join(format!("{name}.again.gguf"));
            requantize(&src, &again, t, &|_, _| {}, &|| false).unwrap();
            assert_eq!(
                std::fs::read(&out).unwrap(),
                std::fs::read(&again).unwrap(),
                "{name}"
            );
        }
    }

    #[test]
    fn damaged_files_give_errors_that_name_them() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.gguf");
        tiny_gguf(&src, 3);
        let bytes = std::fs::read(&src).unwrap();
        let cut = dir.path().join("cut.gguf");
        std::fs::write(&cut, &bytes[..bytes.len() - 1000]).unwrap();
        let err = requantize(
            &cut,
            &dir.path().join("o.gguf"),
            GgmlDType::Q8_0,
            &|_, _| {},
            &|| false,
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("cut.gguf"), "{err:#}");
        let junk = dir.path().join("junk.gguf");
        std::fs::write(&junk, b"not a gguf at all").unwrap();
        let err = Gguf::open(&junk).err().unwrap();
        assert!(
            format!("{err:#}").contains("junk.gguf is not a readable GGUF"),
            "{err:#}"
        );
    }
}
