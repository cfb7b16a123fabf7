//! `mlstack kernels bench --device cuda`: every CUDA kernel variant checked
//! against its CPU reference on random inputs, then timed, in one run: the
//! achieved bandwidth of each next to a plain device-to-device copy measured
//! in the same run (llm.c's `dev/cuda` harness, one table for all ops).
//!
//! Correctness first: a variant whose output leaves its bound is a failure
//! of the whole run ([`KernelBench::failed`]; the report still has every
//! row, that one with `within_bound` 0, and the CLI writes it before it
//! exits 1). Timing: CUDA events around `iters` launches after one warm-up
//! launch. The weight-streaming kernels rotate over copies of their weights
//! whose total is twice the L2 cache (50 MB on the H200), so the figure is
//! DRAM bandwidth, not L2's; rows whose working set fits in L2 say so.
//!
//! Without a GPU this returns [`KernelBenchError::NoGpu`]: the CLI says so
//! and exits 1.

use half::f16;
use kernels::cuda::ops::{
    AdamWStep, AttnShape, DeviceMatrix, GemvVariant, MatmulVariant, PagedAttention,
};
use kernels::cuda::{CudaError, Gpu};
use kernels::ops::RopeLayout;
use kernels::quant::GgmlType;
use kernels::reference::{self, Paging};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::report::{Report, Row};

/// Errors of the kernel bench.
#[derive(Debug, thiserror::Error)]
pub enum KernelBenchError {
    /// No driver or no device: nothing could run.
    #[error("skipped, no GPU: {0}")]
    NoGpu(CudaError),
    #[error(transparent)]
    Cuda(#[from] CudaError),
}

/// A finished run: the report, and the variants whose output left their
/// bound (empty when every check passed).
#[derive(Debug)]
pub struct KernelBench {
    pub report: Report,
    pub failed: Vec<String>,
}

impl KernelBenchError {
    pub fn is_no_gpu(&self) -> bool {
        matches!(self, KernelBenchError::NoGpu(_))
    }
}

/// Settings of a run.
#[derive(Clone, Debug)]
pub struct KernelBenchOpts {
    /// Timed launches per variant (0: check only).
    pub iters: usize,
    pub seed: u64,
}

/// What one variant measured.
struct Outcome {
    name: String,
    /// Largest |kernel − reference| over the outputs.
    max_err: f64,
    /// Largest |kernel − reference| / bound over the outputs, each output
    /// with its own bound (stated where the check is built); ≤ 1 passes.
    worst_ratio: f64,
    time_us: Option<f64>,
    /// Bytes the timed launches stream per launch (the minimum traffic).
    bytes: f64,
    /// Bytes in rotation across the timed launches: below the L2 cache
    /// (50 MB on the H200) the figure is L2's bandwidth, not DRAM's.
    working_set: f64,
}

/// L2 cache of the largest device this targets (H200: 50 MB; H100: 50 MB).
const L2_BYTES: f64 = 50e6;

const SYSTEM: &str = "mlstack-cuda";

/// Runs every check (and, when `iters > 0`, every timing); the report has
/// one row per figure, and `failed` names the checks that left their bound.
pub fn run(opts: &KernelBenchOpts) -> Result<KernelBench, KernelBenchError> {
    let gpu = Gpu::open(0).map_err(|e| {
        if e.is_no_gpu() {
            KernelBenchError::NoGpu(e)
        } else {
            KernelBenchError::Cuda(e)
        }
    })?;
    let mut h = Harness {
        gpu: &gpu,
        rng: StdRng::seed_from_u64(opts.seed),
        iters: opts.iters,
        out: Vec::new(),
    };
    let copy_gbps = h.copy_bandwidth()?;
    h.gemvs()?;
    h.matmuls()?;
    h.elementwise()?;
    h.attention()?;
    h.training()?;

    let mut rows = vec![Row::new(
        SYSTEM,
        "copy_d2d",
        "gbytes_per_sec",
        copy_gbps,
        "GB/s",
    )];
    println!(
        "device: {} (sm_{}); copy bandwidth {copy_gbps:.0} GB/s (read + write)",
        gpu.name(),
        gpu.arch()
    );
    println!(
        "{:<42} {:>10} {:>9} {:>10} {:>9} {:>7}",
        "kernel", "max err", "err/bound", "time us", "GB/s", "% copy"
    );
    let mut failed = Vec::new();
    for o in &h.out {
        let ok = o.worst_ratio <= 1.0;
        if !ok {
            failed.push(o.name.clone());
        }
        let gbps = o.time_us.map(|t| o.bytes / (t * 1e-6) / 1e9);
        let l2 = if o.time_us.is_some() && o.working_set < L2_BYTES {
            " (L2)"
        } else {
            ""
        };
        println!(
            "{:<42} {:>10.2e} {:>9.3} {:>10} {:>9} {:>7}{l2}{}",
            o.name,
            o.max_err,
            o.worst_ratio,
            crate::report::cell(o.time_us, 1),
            crate::report::cell(gbps, 0),
            crate::report::cell(gbps.map(|g| 100.0 * g / copy_gbps), 0),
            if ok { "" } else { "  OUT OF BOUND" }
        );
        rows.push(Row::new(SYSTEM, &o.name, "max_abs_error", o.max_err, "abs"));
        rows.push(Row::new(
            SYSTEM,
            &o.name,
            "error_over_bound",
            o.worst_ratio,
            "ratio",
        ));
        rows.push(Row::new(
            SYSTEM,
            &o.name,
            "within_bound",
            f64::from(u8::from(ok)),
            "bool",
        ));
        if let (Some(t), Some(g)) = (o.time_us, gbps) {
            rows.push(Row::new(SYSTEM, &o.name, "time_us", t, "us"));
            rows.push(Row::new(SYSTEM, &o.name, "gbytes_per_sec", g, "GB/s"));
            rows.push(Row::new(
                SYSTEM,
                &o.name,
                "pct_of_copy_bandwidth",
                100.0 * g / copy_gbps,
                "%",
            ));
            rows.push(Row::new(
                SYSTEM,
                &o.name,
                "working_set_mb",
                o.working_set / 1e6,
                "MB",
            ));
        }
    }
    let report = Report {
        component: "kernels",
        bench: "cuda",
        config: serde_json::json!({
            "device": gpu.name(),
            "arch": format!("sm_{}", gpu.arch()),
            "iters": opts.iters,
            "seed": opts.seed,
        }),
        results: rows,
    };
    Ok(KernelBench { report, failed })
}

struct Harness<'a> {
    gpu: &'a Gpu,
    rng: StdRng,
    iters: usize,
    out: Vec<Outcome>,
}

/// (largest |got − want|, largest |got − want| / bound(i)) over the outputs.
/// A NaN on either side where the other has none is an infinite error; a
/// zero bound means exact equality.
fn compare(got: &[f32], want: &[f32], bound: impl Fn(usize) -> f64) -> (f64, f64) {
    assert_eq!(got.len(), want.len(), "outputs of different lengths");
    let mut worst = (0f64, 0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = if g.is_nan() || w.is_nan() {
            if g.is_nan() && w.is_nan() {
                0.0
            } else {
                f64::INFINITY
            }
        } else {
            (f64::from(g) - f64::from(w)).abs()
        };
        let b = bound(i);
        let r = if d == 0.0 {
            0.0
        } else if b > 0.0 {
            d / b
        } else {
            f64::INFINITY
        };
        worst = (worst.0.max(d), worst.1.max(r));
    }
    worst
}

/// Events that record time (cudarc's default event disables timing).
const TIMING: Option<cudarc::driver::sys::CUevent_flags> =
    Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);

/// The weight types the GEMV and matmul kernels take.
const WEIGHT_TYPES: [GgmlType; 5] = [
    GgmlType::Q8_0,
    GgmlType::Q4_1,
    GgmlType::Q4_0,
    GgmlType::F32,
    GgmlType::F16,
];

/// Unit roundoff of f32, 2⁻²⁴.
const U: f64 = f32::EPSILON as f64 / 2.0;

impl Harness<'_> {
    fn floats(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| self.rng.random_range(-scale..scale))
            .collect()
    }

    /// Random weights of `ty`: small f16 scales, random quants.
    fn matrix_bytes(&mut self, ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
        let n = rows * cols;
        match ty {
            GgmlType::F32 => self
                .floats(n, 0.1)
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            GgmlType::F16 => self
                .floats(n, 0.1)
                .iter()
                .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                .collect(),
            _ => {
                let blocks = n / 32;
                let mut out = Vec::with_capacity(ty.bytes_for(n).unwrap_or(0));
                for _ in 0..blocks {
                    let d = f16::from_f32(self.rng.random_range(0.001..0.01));
                    out.extend_from_slice(&d.to_le_bytes());
                    if ty == GgmlType::Q4_1 {
                        // m ≥ 0 as d·q ≥ 0: |w| = d·q + m, so Σ|w·x| bounds the
                        // kernel's separately rounded d·Σqx and m·Σx terms too.
                        let m = f16::from_f32(self.rng.random_range(0.0..0.05));
                        out.extend_from_slice(&m.to_le_bytes());
                    }
                    let q = if ty == GgmlType::Q8_0 { 32 } else { 16 };
                    out.extend((0..q).map(|_| self.rng.random::<u8>()));
                }
                out
            }
        }
    }

    /// Times `launch` over `iters` calls (after one warm-up) with CUDA events;
    /// `launch(i)` should rotate its inputs by i.
    fn time(
        &self,
        mut launch: impl FnMut(usize) -> Result<(), CudaError>,
    ) -> Result<Option<f64>, CudaError> {
        if self.iters == 0 {
            return Ok(None);
        }
        let ev = |what| {
            move |e: cudarc::driver::DriverError| CudaError::driver(format!("event {what}"), e)
        };
        launch(0)?;
        let stream = self.gpu.stream();
        let start = stream.record_event(TIMING).map_err(ev("start"))?;
        for i in 0..self.iters {
            launch(i + 1)?;
        }
        let end = stream.record_event(TIMING).map_err(ev("end"))?;
        end.synchronize().map_err(ev("sync"))?;
        let ms = start.elapsed_ms(&end).map_err(ev("elapsed"))?;
        Ok(Some(f64::from(ms) * 1000.0 / self.iters as f64))
    }

    fn push(
        &mut self,
        name: String,
        (max_err, worst_ratio): (f64, f64),
        time_us: Option<f64>,
        bytes: f64,
        working_set: f64,
    ) {
        self.out.push(Outcome {
            name,
            max_err,
            worst_ratio,
            time_us,
            bytes,
            working_set,
        });
    }

    /// Device-to-device copy of 1 GiB with the copy kernel: GB/s, read + write.
    fn copy_bandwidth(&mut self) -> Result<f64, CudaError> {
        let n4 = (1usize << 30) / 16;
        let src = self.gpu.zeros::<f32>(n4 * 4)?;
        let mut dst = self.gpu.zeros::<f32>(n4 * 4)?;
        let f = self.gpu.function("copy_f32x4")?;
        let iters = self.iters.max(3);
        let stream = self.gpu.stream().clone();
        let n = n4 as i64;
        let cfg = cudarc::driver::LaunchConfig {
            grid_dim: (132 * 8, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut go = || -> Result<(), CudaError> {
            use cudarc::driver::PushKernelArg;
            let mut b = stream.launch_builder(&f);
            b.arg(&mut dst).arg(&src).arg(&n);
            // SAFETY: both buffers hold n float4s.
            unsafe { b.launch(cfg) }
                .map(|_| ())
                .map_err(|e| CudaError::driver("copy", e))
        };
        go()?;
        let ev = |e: cudarc::driver::DriverError| CudaError::driver("event", e);
        let start = stream.record_event(TIMING).map_err(ev)?;
        for _ in 0..iters {
            go()?;
        }
        let end = stream.record_event(TIMING).map_err(ev)?;
        end.synchronize().map_err(ev)?;
        let ms = f64::from(start.elapsed_ms(&end).map_err(ev)?) / iters as f64;
        Ok(2.0 * (1u64 << 30) as f64 / (ms * 1e-3) / 1e9)
    }

    fn gemvs(&mut self) -> Result<(), CudaError> {
        // SmolLM2-135M's shapes: d_model 576, d_ff 1536; the output head 49,152 × 576.
        for &(rows, cols) in &[(1536usize, 576usize), (576, 1536), (49_152, 576)] {
            for ty in WEIGHT_TYPES {
                if ty == GgmlType::F16 && rows > 1536 {
                    continue; // the naive kernel only: one shape is enough
                }
                let bytes = self.matrix_bytes(ty, rows, cols);
                // Copies in rotation past L2: at least 2 × 50 MB of weights.
                let copies = (2.0 * L2_BYTES / bytes.len() as f64)
                    .ceil()
                    .clamp(1.0, 512.0) as usize;
                let mats: Vec<DeviceMatrix> = (0..copies)
                    .map(|_| DeviceMatrix::upload(self.gpu, ty, rows, cols, &bytes))
                    .collect::<Result<_, _>>()?;
                // v3's output for vector 0 alone, to check batch invariance below.
                let mut alone: Option<(Vec<f32>, Vec<f32>)> = None;
                for n_vecs in [1usize, 3, 8] {
                    let variants: &[GemvVariant] = match (ty, n_vecs) {
                        (GgmlType::F16, 1) => &[GemvVariant::V1Naive],
                        (GgmlType::F16, _) => &[],
                        (GgmlType::F32, _) => &[GemvVariant::V3SubWarpBlocks],
                        (_, 1) => &[
                            GemvVariant::V1Naive,
                            GemvVariant::V2WarpPerRow,
                            GemvVariant::V3SubWarpBlocks,
                        ],
                        _ => &[GemvVariant::V3SubWarpBlocks],
                    };
                    if variants.is_empty() {
                        continue;
                    }
                    let x = self.floats(n_vecs * cols, 1.0);
                    let (want, abs) =
                        reference::matmul_ref(ty, &bytes, rows, cols, &x).expect("valid matrix");
                    let xd = self.gpu.upload(&x)?;
                    for &v in variants {
                        let mut y = self.gpu.zeros::<f32>(n_vecs * rows)?;
                        self.gpu.gemv(v, &mats[0], &xd, &mut y, n_vecs)?;
                        // Per output: the f32 sum bound over its `cols` products.
                        let err = compare(&self.gpu.download(&y)?, &want, |i| {
                            reference::f32_sum_bound(abs[i], cols)
                        });
                        let gpu = self.gpu;
                        let t =
                            self.time(|i| gpu.gemv(v, &mats[i % copies], &xd, &mut y, n_vecs))?;
                        let name = format!(
                            "gemv_{}_{:?}_{rows}x{cols}_b{n_vecs}",
                            variant_name(v, ty),
                            ty
                        )
                        .to_lowercase();
                        self.push(
                            name.clone(),
                            err,
                            t,
                            bytes.len() as f64,
                            (bytes.len() * copies) as f64,
                        );
                        if v == GemvVariant::V3SubWarpBlocks && ty != GgmlType::F16 {
                            // Batch invariance: a vector's output does not depend on
                            // what else is in the batch (each has its own
                            // accumulators, summed in the same order): bit-equal.
                            match &alone {
                                None => {
                                    let got = self.gpu.download(&y)?;
                                    alone = Some((x[..cols].to_vec(), got[..rows].to_vec()));
                                }
                                Some((x0, y0)) => {
                                    // Vector 0 of the batch replaced by the lone vector.
                                    let mut xb = x.clone();
                                    xb[..cols].copy_from_slice(x0);
                                    let xbd = self.gpu.upload(&xb)?;
                                    self.gpu.gemv(v, &mats[0], &xbd, &mut y, n_vecs)?;
                                    let again = self.gpu.download(&y)?;
                                    let err = compare(&again[..rows], y0, |_| 0.0);
                                    self.push(
                                        format!("{name}_batch_invariance"),
                                        err,
                                        None,
                                        0.0,
                                        0.0,
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn matmuls(&mut self) -> Result<(), CudaError> {
        // Prefill of 512 tokens, and an edge shape (neither side a multiple of the 64 × 64 tile).
        for &(n, rows, cols) in &[(512usize, 1536usize, 576usize), (77, 1000, 96)] {
            for ty in WEIGHT_TYPES {
                let bytes = self.matrix_bytes(ty, rows, cols);
                let w = DeviceMatrix::upload(self.gpu, ty, rows, cols, &bytes)?;
                let x = self.floats(n * cols, 1.0);
                let (want, abs) =
                    reference::matmul_ref(ty, &bytes, rows, cols, &x).expect("valid matrix");
                let xd = self.gpu.upload(&x)?;
                for v in [MatmulVariant::V1Naive, MatmulVariant::V2Tiled] {
                    let mut y = self.gpu.zeros::<f32>(n * rows)?;
                    self.gpu.matmul(v, &xd, &w, &mut y, n)?;
                    let err = compare(&self.gpu.download(&y)?, &want, |i| {
                        reference::f32_sum_bound(abs[i], cols)
                    });
                    let gpu = self.gpu;
                    let t = self.time(|_| gpu.matmul(v, &xd, &w, &mut y, n))?;
                    // Bytes of X, W and Y once (the minimum traffic).
                    let traffic = (4 * n * cols + bytes.len() + 4 * n * rows) as f64;
                    let name = format!("matmul_{v:?}_{ty:?}_{n}x{rows}x{cols}").to_lowercase();
                    if let Some(t) = t {
                        println!(
                            "  {name}: {:.2} TFLOP/s",
                            2.0 * (n * rows * cols) as f64 / (t * 1e-6) / 1e12
                        );
                    }
                    self.push(name, err, t, traffic, traffic);
                }
            }
        }
        Ok(())
    }

    fn elementwise(&mut self) -> Result<(), CudaError> {
        let (rows, dim) = (512usize, 576usize);
        let x = self.floats(rows * dim, 2.0);
        let w = self.floats(dim, 1.0);
        let (xd, wd) = (self.gpu.upload(&x)?, self.gpu.upload(&w)?);
        let gpu = self.gpu;
        // RMSNorm forward: out = x·r·w, r from an f32 sum of dim squares in
        // about dim/256 + 10 sequential steps: relative error ≤ 64u.
        let mut want = vec![0f32; rows * dim];
        for r in 0..rows {
            kernels::ops::rms_norm(&x[r * dim..][..dim], &w, 1e-5, &mut want[r * dim..][..dim]);
        }
        let mut y = self.gpu.zeros::<f32>(rows * dim)?;
        let mut rstd = self.gpu.zeros::<f32>(rows)?;
        self.gpu
            .rmsnorm(&xd, &wd, &mut y, Some(&mut rstd), rows, dim, 1e-5)?;
        let err = compare(&self.gpu.download(&y)?, &want, |i| {
            64.0 * U * f64::from(want[i]).abs() + 1e-30
        });
        let t = self.time(|_| gpu.rmsnorm(&xd, &wd, &mut y, None, rows, dim, 1e-5))?;
        self.push(
            format!("rmsnorm_fwd_{rows}x{dim}"),
            err,
            t,
            (8 * rows * dim) as f64,
            (8 * rows * dim) as f64,
        );
        // SiLU·mul: expf within 2 ulp, then a division and a product: 16u relative.
        let up = self.floats(rows * dim, 2.0);
        let upd = self.gpu.upload(&up)?;
        let mut want = vec![0f32; rows * dim];
        kernels::ops::silu_mul(&x, &up, &mut want);
        let mut out = self.gpu.zeros::<f32>(rows * dim)?;
        self.gpu.silu_mul(&xd, &upd, &mut out, rows * dim)?;
        let err = compare(&self.gpu.download(&out)?, &want, |i| {
            16.0 * U * f64::from(want[i]).abs() + 1e-30
        });
        let t = self.time(|_| gpu.silu_mul(&xd, &upd, &mut out, rows * dim))?;
        self.push(
            format!("silu_mul_{}", rows * dim),
            err,
            t,
            (12 * rows * dim) as f64,
            (12 * rows * dim) as f64,
        );
        // Residual add: exact (one rounding, the same on both sides).
        let want: Vec<f32> = x.iter().zip(&up).map(|(a, b)| a + b).collect();
        let mut yd = self.gpu.upload(&x)?;
        self.gpu.add_inplace(&mut yd, &upd)?;
        let err = compare(&self.gpu.download(&yd)?, &want, |_| 0.0);
        let t = self.time(|_| gpu.add_inplace(&mut yd, &upd))?;
        self.push(
            format!("add_{}", rows * dim),
            err,
            t,
            (12 * rows * dim) as f64,
            (12 * rows * dim) as f64,
        );
        // RoPE, both layouts, positions up to 4,088. The angle is f64 on both
        // sides, so the outputs differ by the f32 rotation's roundings: 8u of
        // the pair's size (≤ √2 · max|x|).
        let (n_heads, hd) = (9usize, 64usize);
        let q = self.floats(rows * n_heads * hd, 1.0);
        let pos: Vec<i32> = (0..rows as i32).map(|p| p * 8).collect();
        let posd = self.gpu.upload(&pos)?;
        let qmax = q.iter().map(|v| f64::from(*v).abs()).fold(0.0, f64::max);
        for layout in [RopeLayout::Interleaved, RopeLayout::HalfSplit] {
            let mut want = q.clone();
            for (t, tok) in want.chunks_exact_mut(n_heads * hd).enumerate() {
                kernels::ops::rope(tok, hd, pos[t] as usize, 100_000.0, layout);
            }
            let mut qd = self.gpu.upload(&q)?;
            self.gpu
                .rope(&mut qd, &posd, rows, n_heads, hd, 100_000.0, layout)?;
            let err = compare(&self.gpu.download(&qd)?, &want, |_| 8.0 * U * 1.5 * qmax);
            let t =
                self.time(|_| gpu.rope(&mut qd, &posd, rows, n_heads, hd, 100_000.0, layout))?;
            self.push(
                format!("rope_{layout:?}_{rows}x{n_heads}x{hd}").to_lowercase(),
                err,
                t,
                (8 * q.len()) as f64,
                (8 * q.len()) as f64,
            );
        }
        // Embedding lookup: dequantization, d·q (+ m, possibly fused into an
        // FMA on the device): within 2u of d·|q| + |m|.
        let (vocab, d) = (49_152usize, 576usize);
        for ty in [GgmlType::Q8_0, GgmlType::Q4_1, GgmlType::F16, GgmlType::F32] {
            let bytes = self.matrix_bytes(ty, vocab, d);
            let table = DeviceMatrix::upload(self.gpu, ty, vocab, d, &bytes)?;
            let mut toks: Vec<u32> = (0..rows)
                .map(|_| self.rng.random_range(0..vocab as u32))
                .collect();
            toks[0] = vocab as u32 - 1; // the last row: the table's end
            let tokd = self.gpu.upload(&toks)?;
            let rb = ty.bytes_for(d).expect("whole blocks");
            let mut want = vec![0f32; rows * d];
            for (t, &id) in toks.iter().enumerate() {
                kernels::quant::dequantize(
                    ty,
                    &bytes[id as usize * rb..][..rb],
                    &mut want[t * d..][..d],
                )
                .expect("row");
            }
            let mut out = self.gpu.zeros::<f32>(rows * d)?;
            self.gpu.embedding(&table, &tokd, rows, &mut out)?;
            let err = compare(&self.gpu.download(&out)?, &want, |i| {
                2.0 * U * (f64::from(want[i]).abs() + 0.1)
            });
            let t = self.time(|_| gpu.embedding(&table, &tokd, rows, &mut out))?;
            self.push(
                format!("embedding_{ty:?}_{rows}x{d}").to_lowercase(),
                err,
                t,
                (rows * (rb + 4 * d)) as f64,
                (rows * (rb + 4 * d)) as f64,
            );
        }
        // Argmax: exact. Ties across warps with the lower index on the higher
        // thread (row 1: 1,031 and 40 → thread 7 and thread 40), a NaN that
        // must not win (row 2), a row of -inf (row 3: index 0).
        let mut logits = self.floats(16 * vocab, 10.0);
        logits[vocab + 1031] = 50.0;
        logits[vocab + 40] = 50.0;
        logits[2 * vocab + 5] = f32::NAN;
        logits[2 * vocab + 6] = 60.0;
        logits[3 * vocab..4 * vocab].fill(f32::NEG_INFINITY);
        let want: Vec<f32> = logits
            .chunks_exact(vocab)
            .map(|r| kernels::ops::argmax(r) as f32)
            .collect();
        assert_eq!(
            (want[1], want[2], want[3]),
            (40.0, 6.0, 0.0),
            "the reference's own ties"
        );
        let ld = self.gpu.upload(&logits)?;
        let mut idx = self.gpu.zeros::<u32>(16)?;
        self.gpu.argmax(&ld, 16, vocab, &mut idx)?;
        let got: Vec<f32> = self.gpu.download(&idx)?.iter().map(|&i| i as f32).collect();
        let err = compare(&got, &want, |_| 0.0);
        let t = self.time(|_| gpu.argmax(&ld, 16, vocab, &mut idx))?;
        self.push(
            format!("argmax_16x{vocab}"),
            err,
            t,
            (4 * 16 * vocab) as f64,
            (4 * 16 * vocab) as f64,
        );
        Ok(())
    }

    fn attention(&mut self) -> Result<(), CudaError> {
        // SmolLM2: 9 query heads, 3 KV heads, head_dim 64; 16-position blocks.
        let s = AttnShape {
            n_heads: 9,
            n_kv_heads: 3,
            head_dim: 64,
            block_size: 16,
        };
        let kv_dim = s.n_kv_heads * s.head_dim;
        // (sequences, length): a partial last block (150), the figures' shapes,
        // and 64 × 4,096 positions (200 MB of cache, past L2).
        for &(n_seqs, len) in &[
            (1usize, 150usize),
            (1, 128),
            (1, 1024),
            (16, 1024),
            (64, 4096),
        ] {
            let blocks_per = len.div_ceil(s.block_size);
            let n_blocks = n_seqs * blocks_per;
            // A scrambled block table: sequence i's block b at a shuffled row.
            let mut perm: Vec<i32> = (0..n_blocks as i32).collect();
            for i in (1..perm.len()).rev() {
                perm.swap(i, self.rng.random_range(0..=i));
            }
            let kv: Vec<f32> = self.floats(2 * n_blocks * s.block_size * kv_dim, 1.0);
            let (kf, vf) = kv.split_at(n_blocks * s.block_size * kv_dim);
            // Every position goes in through kv_write (checked too: the
            // references read the f16 the device stored).
            let slots: Vec<i32> = (0..n_seqs)
                .flat_map(|q| {
                    let perm = &perm;
                    (0..blocks_per * s.block_size).map(move |p| {
                        perm[q * blocks_per + p / s.block_size] * s.block_size as i32
                            + (p % s.block_size) as i32
                    })
                })
                .collect();
            let mut kc = self.gpu.zeros::<u16>(n_blocks * s.block_size * kv_dim)?;
            let mut vc = self.gpu.zeros::<u16>(n_blocks * s.block_size * kv_dim)?;
            let (kd, vd, sd) = (
                self.gpu.upload(kf)?,
                self.gpu.upload(vf)?,
                self.gpu.upload(&slots)?,
            );
            self.gpu
                .kv_write(&kd, &vd, &sd, &mut kc, &mut vc, slots.len(), kv_dim)?;
            let kh: Vec<f16> = self
                .gpu
                .download(&kc)?
                .into_iter()
                .map(f16::from_bits)
                .collect();
            let vh: Vec<f16> = self
                .gpu
                .download(&vc)?
                .into_iter()
                .map(f16::from_bits)
                .collect();
            // kv_write: each slot holds the round-to-nearest f16 of its input, K and V.
            let mut stored = Vec::with_capacity(2 * slots.len() * kv_dim);
            let mut expect = Vec::with_capacity(2 * slots.len() * kv_dim);
            for (t, &slot) in slots.iter().enumerate() {
                for c in 0..kv_dim {
                    let at = slot as usize * kv_dim + c;
                    stored.extend([kh[at].to_f32(), vh[at].to_f32()]);
                    expect.extend([
                        f16::from_f32(kf[t * kv_dim + c]).to_f32(),
                        f16::from_f32(vf[t * kv_dim + c]).to_f32(),
                    ]);
                }
            }
            let err = compare(&stored, &expect, |_| 0.0);
            self.push(
                format!("kv_write_{}x{kv_dim}", slots.len()),
                err,
                None,
                0.0,
                0.0,
            );

            let q = self.floats(n_seqs * s.n_heads * s.head_dim, 1.0);
            let qd = self.gpu.upload(&q)?;
            // Sequence i has length len − (i % 3): unequal lengths in one batch.
            let lens: Vec<usize> = (0..n_seqs).map(|i| len - (i % 3).min(len - 1)).collect();
            let lens_i: Vec<i32> = lens.iter().map(|&l| l as i32).collect();
            let lensd = self.gpu.upload(&lens_i)?;
            let tables = self.gpu.upload(&perm)?;
            let mut out = self.gpu.zeros::<f32>(q.len())?;
            let gpu = self.gpu;
            let run = |out: &mut cudarc::driver::CudaSlice<f32>| {
                gpu.paged_attention_decode(PagedAttention {
                    shape: s,
                    q: &qd,
                    k_cache: &kc,
                    v_cache: &vc,
                    block_tables: &tables,
                    max_blocks: blocks_per,
                    seq_lens: &lens,
                    seq_lens_dev: &lensd,
                    out,
                })
            };
            run(&mut out)?;
            let got = self.gpu.download(&out)?;
            let mut want = Vec::with_capacity(q.len());
            for i in 0..n_seqs {
                let pg = Paging {
                    n_heads: s.n_heads,
                    n_kv_heads: s.n_kv_heads,
                    head_dim: s.head_dim,
                    block_size: s.block_size,
                    table: &perm[i * blocks_per..(i + 1) * blocks_per],
                };
                want.extend(reference::paged_attention_ref(
                    &pg,
                    &q[i * s.n_heads * s.head_dim..][..s.n_heads * s.head_dim],
                    &kh,
                    &vh,
                    lens[i],
                ));
            }
            // Outputs are convex combinations of values in [-1, 1]: the f32
            // scores (64 products) and the sums over `len` positions round
            // with at most (len + 64 + 16)·u of that scale, ×4 for exp and the
            // online rescaling.
            let bound = 4.0 * (len as f64 + 80.0) * U;
            let err = compare(&got, &want, |_| bound);
            let t = self.time(|_| run(&mut out))?;
            let bytes = (lens.iter().sum::<usize>() * kv_dim * 2 * 2) as f64;
            self.push(
                format!("paged_attention_decode_b{n_seqs}_ctx{len}"),
                err,
                t,
                bytes,
                bytes,
            );

            if n_seqs == 1 {
                // Prefill: the last n_q positions of the sequence as queries
                // (an edge count at 150: 37 queries, a partial query tile).
                let n_q = if len == 150 { 37 } else { len.min(512) };
                let start = len - n_q;
                let q = self.floats(n_q * s.n_heads * s.head_dim, 1.0);
                let qd = self.gpu.upload(&q)?;
                let mut out = self.gpu.zeros::<f32>(q.len())?;
                self.gpu
                    .flash_attention_prefill(&s, &qd, &kc, &vc, &tables, &mut out, n_q, start)?;
                let pg = Paging {
                    n_heads: s.n_heads,
                    n_kv_heads: s.n_kv_heads,
                    head_dim: s.head_dim,
                    block_size: s.block_size,
                    table: &perm,
                };
                let want = reference::prefill_attention_ref(&pg, &q, &kh, &vh, start);
                let err = compare(&self.gpu.download(&out)?, &want, |_| bound);
                let t = self.time(|_| {
                    gpu.flash_attention_prefill(&s, &qd, &kc, &vc, &tables, &mut out, n_q, start)
                })?;
                let flops =
                    4.0 * (n_q * s.n_heads * s.head_dim) as f64 * (start as f64 + n_q as f64 / 2.0);
                if let Some(t) = t {
                    println!(
                        "  flash_attention_prefill ctx{len}: {:.2} TFLOP/s",
                        flops / (t * 1e-6) / 1e12
                    );
                }
                self.push(
                    format!("flash_attention_prefill_q{n_q}_ctx{len}"),
                    err,
                    t,
                    8.0 * q.len() as f64 + bytes,
                    8.0 * q.len() as f64 + bytes,
                );
            }
        }
        Ok(())
    }

    fn training(&mut self) -> Result<(), CudaError> {
        let gpu = self.gpu;
        // Cross-entropy over SmolLM2's vocabulary. dlogits: p·scale with p
        // from expf (2 ulp) over a sum of 49,152 terms in ~60 sequential
        // steps: 1e-5 relative; the loss log(Σ) − z_t: 1e-5 absolute.
        let (n, vocab) = (64usize, 49_152usize);
        let logits = self.floats(n * vocab, 8.0);
        let mut targets: Vec<u32> = (0..n)
            .map(|_| self.rng.random_range(0..vocab as u32))
            .collect();
        targets[0] = vocab as u32 - 1;
        let scale = 1.0 / n as f32;
        let mut want = logits.clone();
        let mut want_loss = vec![0f32; n];
        train::ops::cross_entropy::cross_entropy_backward_inplace(
            &mut want,
            &mut want_loss,
            &targets,
            vocab,
            scale,
        );
        let mut ld = self.gpu.upload(&logits)?;
        let td = self.gpu.upload(&targets)?;
        let mut lossd = self.gpu.zeros::<f32>(n)?;
        self.gpu
            .cross_entropy(&mut ld, &td, &mut lossd, n, vocab, scale)?;
        let dz = compare(&self.gpu.download(&ld)?, &want, |i| {
            1e-5 * f64::from(want[i]).abs() + 1e-12
        });
        let loss = compare(&self.gpu.download(&lossd)?, &want_loss, |_| 1e-5);
        let err = (dz.0.max(loss.0), dz.1.max(loss.1));
        // Timed on its own output (in place): the arithmetic is the same.
        let t = self.time(|_| gpu.cross_entropy(&mut ld, &td, &mut lossd, n, vocab, scale))?;
        self.push(
            format!("cross_entropy_{n}x{vocab}"),
            err,
            t,
            (8 * n * vocab) as f64,
            (4 * n * vocab) as f64,
        );
        // RMSNorm backward: dx per element within 64u of its row's scale
        // (a mean over 576 terms); dw summed over 512 rows by atomics in any
        // order: (rows + 1)·u of Σ|terms|, bounded here by the row maximum.
        let (rows, dim) = (512usize, 576usize);
        let x = self.floats(rows * dim, 2.0);
        let w = self.floats(dim, 1.0);
        let dy = self.floats(rows * dim, 1.0);
        let mut y = vec![0f32; rows * dim];
        let mut rstd = vec![0f32; rows];
        train::ops::rmsnorm::rmsnorm_forward(&mut y, &mut rstd, &x, &w, dim, 1e-5);
        let (mut dx, mut dw) = (vec![0f32; rows * dim], vec![0f32; dim]);
        train::ops::rmsnorm::rmsnorm_backward(&mut dx, &mut dw, &dy, &x, &w, &rstd, dim, false);
        let (xd, wd, dyd, rd) = (
            self.gpu.upload(&x)?,
            self.gpu.upload(&w)?,
            self.gpu.upload(&dy)?,
            self.gpu.upload(&rstd)?,
        );
        let (mut dxd, mut dwd) = (
            self.gpu.zeros::<f32>(rows * dim)?,
            self.gpu.zeros::<f32>(dim)?,
        );
        self.gpu
            .rmsnorm_bwd(&mut dxd, &mut dwd, &dyd, &xd, &wd, &rd, rows, dim)?;
        let row_max: Vec<f64> = dx
            .chunks_exact(dim)
            .map(|r| r.iter().map(|v| f64::from(*v).abs()).fold(0.0, f64::max))
            .collect();
        // Both sides sum the row's mean in f32 (the CPU reference too):
        // (dim + 64)·u of the row's scale each, ×4.
        let ex = compare(&self.gpu.download(&dxd)?, &dx, |i| {
            4.0 * (dim as f64 + 64.0) * U * row_max[i / dim] + 1e-30
        });
        // |dy·x̂| ≤ 1 · 2 · max r: Σ|terms| ≤ rows · that.
        let rmax = rstd.iter().map(|v| f64::from(*v)).fold(0.0, f64::max);
        let ew = compare(&self.gpu.download(&dwd)?, &dw, |_| {
            2.0 * (rows as f64 + 1.0) * U * rows as f64 * 2.0 * rmax
        });
        self.push(
            format!("rmsnorm_bwd_{rows}x{dim}"),
            (ex.0.max(ew.0), ex.1.max(ew.1)),
            None,
            0.0,
            0.0,
        );
        // AdamW, one step at t = 10 on 16M parameters, gradients scaled by ½:
        // the same f32 formula on both sides, within 4u of |p| + 16u of the step.
        let np = 1usize << 24;
        let (p, g) = (self.floats(np, 1.0), self.floats(np, 0.01));
        let (m, v): (Vec<f32>, Vec<f32>) = (
            self.floats(np, 0.001),
            (0..np).map(|_| self.rng.random_range(0.0..1e-4)).collect(),
        );
        let hp = AdamWStep {
            lr: 3e-4,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            bc1: 1.0 - 0.9f32.powi(10),
            bc2: 1.0 - 0.95f32.powi(10),
            grad_scale: 0.5,
        };
        // The formula of train::optim::AdamW::step, element by element.
        let want: Vec<f32> = (0..np)
            .map(|i| {
                let gi = g[i] * hp.grad_scale;
                let mi = hp.beta1 * m[i] + (1.0 - hp.beta1) * gi;
                let vi = hp.beta2 * v[i] + (1.0 - hp.beta2) * gi * gi;
                p[i] - hp.lr
                    * ((mi / hp.bc1) / ((vi / hp.bc2).sqrt() + hp.eps) + hp.weight_decay * p[i])
            })
            .collect();
        let (mut pd, gd, mut md, mut vd) = (
            self.gpu.upload(&p)?,
            self.gpu.upload(&g)?,
            self.gpu.upload(&m)?,
            self.gpu.upload(&v)?,
        );
        self.gpu.adamw(&mut pd, &gd, &mut md, &mut vd, &hp)?;
        let err = compare(&self.gpu.download(&pd)?, &want, |i| {
            4.0 * U * f64::from(want[i]).abs()
                + 16.0 * U * (f64::from(p[i]) - f64::from(want[i])).abs()
        });
        let t = self.time(|_| gpu.adamw(&mut pd, &gd, &mut md, &mut vd, &hp))?;
        self.push(
            format!("adamw_{np}"),
            err,
            t,
            (28 * np) as f64,
            (28 * np) as f64,
        );
        Ok(())
    }
}

fn variant_name(v: GemvVariant, ty: GgmlType) -> &'static str {
    match (v, ty) {
        (_, GgmlType::F32) => "f32",
        (GemvVariant::V1Naive, _) => "v1",
        (GemvVariant::V2WarpPerRow, _) => "v2",
        (GemvVariant::V3SubWarpBlocks, _) => "v3",
    }
}
