//! Quantized weight matmul for the CPU. Activations are quantized per row into 32-value int8 blocks with an f32
//! scale; weights stay in blocks of 32 as well, in one of two forms:
//! - **nibbles**: Q4_1's 4-bit values with its f16 scale and offset per block, 20 bytes per 32 values, so
//!   decoding reads no more weight bytes than llama.cpp does;
//! - **int8**: Q8_0, and Q5_0/Q5_1 requantized (int8 steps are finer than theirs, so nothing is lost).
//!
//! Weights are packed in **panels** of 16 output rows: for every block, four consecutive values of each of the 16
//! rows lie side by side, so one vector instruction multiplies four inputs (broadcast) into 16 outputs at once
//! (`vpdpbusd` with AVX-512 VNNI; `vpmaddubsw` with AVX2, eight outputs at a time), and a block's integer dot
//! products arrive as one vector per panel, scaled with one multiply-add. Dot-product kernels (one output row
//! against one activation row) must instead sum each block across its lanes, which costs more than the
//! multiplications. A tile of up to eight activation rows shares every weight load and unpack.
//!
//! Every kernel (portable, AVX2, AVX-512 VNNI) computes each output with the same operations in the same order:
//! exact integer block dot products, then `acc = fma(dot, w_scale * a_scale, acc)` (and `fma(m, a_sum, acc)`
//! for the offset of nibbles) block after block. So results are the same to the bit on every CPU, alone or in
//! any batch, on any number of threads.

use candle_core::Device;
use candle_core::quantized::{GgmlDType, QTensor};
use std::ops::Range;

use super::LocalError;
use super::simd::f16_to_f32;
use super::team::Team;

const BLOCK: usize = 32;
/// Output rows packed together.
const PANEL: usize = 16;
/// Steps of four inputs in a block: what one `vpdpbusd` / `vpmaddubsw` lane multiplies and sums.
const STEPS: usize = BLOCK / 4;
/// Bytes of one block of a panel: int8 holds one byte per value, nibbles two values per byte.
const INT8_PANEL_BLOCK: usize = BLOCK * PANEL;
const NIBBLE_PANEL_BLOCK: usize = BLOCK * PANEL / 2;
/// Activation rows that share every weight load and unpack (a kernel call takes 1, 2, 3, 4 or 8).
const TILE: usize = 8;
/// Weight bytes a thread runs every tile of rows over before moving on: well inside a core's L2.
const L2_WEIGHT_BYTES: usize = 256 << 10;
/// Rows from which an AMX tile beats AVX-512 VNNI tiles.
pub const AMX_MIN_ROWS: usize = 8;

#[cfg(target_arch = "x86_64")]
mod amx;

/// A `[outputs, inputs]` weight matrix in quantized blocks, packed in panels.
pub struct QMatrix {
    pub outputs: usize,
    pub inputs: usize,
    blocks: usize,
    /// `outputs` / 16, rounded up; the last panel's missing rows are zero weights.
    panels: usize,
    weights: Weights,
}

/// Panel layouts. Scales are `[panel][block][16]`. Quants, per panel and block:
/// - int8: `[step][row][4]`, each value `q + 128` (0..=255; VNNI multiplies unsigned by signed bytes);
/// - nibbles: `[4][row][4]` bytes, the low nibble of byte `[j][row][t]` holding input `4j + t` of the block and
///   the high nibble input `16 + 4j + t`.
enum Weights {
    /// value = scale * q with q in -127..=127.
    Int8 { scales: Vec<f32>, quants: Vec<u8> },
    /// value = d * q + m with q in 0..=15, as GGUF's Q4_1; `d` and `m` are f16 bits.
    Nibbles { d: Vec<u16>, m: Vec<u16>, quants: Vec<u8> },
}

/// A weight matrix's blocks row after row, as read from GGUF or quantized, before packing into panels. Matrices
/// that read the same input (q, k and v, say) are joined in this form and packed once.
pub struct RowMatrix {
    pub outputs: usize,
    pub inputs: usize,
    blocks: RowBlocks,
}

/// A [`RowMatrix`]'s blocks: `[outputs][blocks]` scales, `[outputs][inputs]` values.
enum RowBlocks {
    Int8 {
        scales: Vec<f32>,
        quants: Vec<i8>,
    },
    /// One value (0..=15) per byte.
    Nibbles {
        d: Vec<u16>,
        m: Vec<u16>,
        quants: Vec<u8>,
    },
}

/// Activation rows in int8 blocks.
struct Q8Rows {
    blocks: usize,
    /// `[rows][blocks]`.
    scales: Vec<f32>,
    /// scale * (sum of the block's values), `[rows][blocks]`: what a weight offset `m` multiplies.
    sums: Vec<f32>,
    /// The sum of the block's values, `[rows][blocks]`: VNNI's unsigned weights carry 128 times it.
    int_sums: Vec<i32>,
    /// `[rows][blocks][32]`.
    quants: Vec<i8>,
}

/// One activation row's blocks, as a kernel reads them.
#[derive(Clone, Copy)]
struct RowRef<'a> {
    quants: &'a [i8],
    scales: &'a [f32],
    sums: &'a [f32],
    int_sums: &'a [i32],
}

impl Q8Rows {
    fn row(&self, r: usize) -> RowRef<'_> {
        let (width, blocks) = (self.blocks * BLOCK, self.blocks);
        RowRef {
            quants: &self.quants[r * width..(r + 1) * width],
            scales: &self.scales[r * blocks..(r + 1) * blocks],
            sums: &self.sums[r * blocks..(r + 1) * blocks],
            int_sums: &self.int_sums[r * blocks..(r + 1) * blocks],
        }
    }
}

/// The instruction set a kernel uses, in order: a CPU that runs one runs those before it too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kernel {
    Portable,
    /// AVX2, FMA and F16C.
    Avx2,
    /// AVX-512 (F, BW) with VNNI.
    Avx512Vnni,
    /// AVX-512 VNNI, and AMX-INT8 for tiles of [`AMX_MIN_ROWS`] rows or more.
    Amx,
}

impl Kernel {
    /// The fastest kernel this CPU runs, or the one `SDG_CPU_KERNEL` names (`portable`, `avx2`, `avx512vnni` or
    /// `amx`; one this CPU runs) to compare kernels in one build.
    pub fn detect() -> Kernel {
        use std::sync::OnceLock;
        static DETECTED: OnceLock<Kernel> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            let fastest = *Kernel::supported().last().unwrap_or(&Kernel::Portable);
            let Ok(name) = std::env::var("SDG_CPU_KERNEL") else { return fastest };
            match Kernel::supported().iter().find(|kernel| kernel.name() == name.trim()) {
                Some(&kernel) => kernel,
                None => {
                    tracing::warn!(%name, ?fastest, "SDG_CPU_KERNEL names no kernel this CPU runs; using the fastest");
                    fastest
                }
            }
        })
    }

    /// Every kernel this CPU runs, slowest first.
    pub fn available() -> Vec<Kernel> {
        Kernel::supported().to_vec()
    }

    /// Whether this CPU runs the kernel (without the allocation of [`Kernel::available`]: callers check it on
    /// every call).
    pub fn runs_here(self) -> bool {
        Kernel::supported().contains(&self)
    }

    /// The name `SDG_CPU_KERNEL` takes.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            Kernel::Avx2 => "avx2",
            Kernel::Avx512Vnni => "avx512vnni",
            Kernel::Amx => "amx",
        }
    }

    fn supported() -> &'static [Kernel] {
        use std::sync::OnceLock;
        static SUPPORTED: OnceLock<Vec<Kernel>> = OnceLock::new();
        SUPPORTED.get_or_init(|| {
            let mut kernels = vec![Kernel::Portable];
            #[cfg(target_arch = "x86_64")]
            {
                if super::simd::has_f16c() {
                    kernels.push(Kernel::Avx2);
                    if is_x86_feature_detected!("avx512f")
                        && is_x86_feature_detected!("avx512bw")
                        && is_x86_feature_detected!("avx512vnni")
                    {
                        kernels.push(Kernel::Avx512Vnni);
                        if amx::available() {
                            kernels.push(Kernel::Amx);
                        }
                    }
                }
            }
            kernels
        })
    }
}

impl RowMatrix {
    /// A GGUF weight of a type these kernels run; `None` for other types or an input width that is not a
    /// multiple of 32 (candle's kernels run those).
    pub fn from_qtensor(tensor: &QTensor) -> Result<Option<RowMatrix>, LocalError> {
        let (outputs, inputs) = tensor.shape().dims2()?;
        if !inputs.is_multiple_of(BLOCK) {
            return Ok(None);
        }
        match tensor.dtype() {
            GgmlDType::Q4_1 => {
                let blocks = q4_1_rows(&tensor.data()?, outputs, inputs)?;
                Ok(Some(RowMatrix { outputs, inputs, blocks }))
            }
            GgmlDType::Q8_0 | GgmlDType::Q5_0 | GgmlDType::Q5_1 => {
                let values = tensor.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
                Ok(Some(RowMatrix::from_f32(&values, outputs, inputs)))
            }
            _ => Ok(None),
        }
    }

    /// From float weights `[outputs, inputs]`, as int8 blocks.
    pub fn from_f32(values: &[f32], outputs: usize, inputs: usize) -> RowMatrix {
        assert!(inputs.is_multiple_of(BLOCK) && values.len() == outputs * inputs);
        let rows = quantize(values, outputs, inputs);
        RowMatrix { outputs, inputs, blocks: RowBlocks::Int8 { scales: rows.scales, quants: rows.quants } }
    }

    /// One matrix whose outputs are those of `parts` in order (q, k and v, say), so one pass quantizes the
    /// input once and one thread dispatch covers them all. `Err(parts)` unless every part has the same inputs
    /// and form.
    pub fn concat(parts: Vec<RowMatrix>) -> Result<RowMatrix, Vec<RowMatrix>> {
        let same = parts.windows(2).all(|pair| {
            pair[0].inputs == pair[1].inputs
                && std::mem::discriminant(&pair[0].blocks) == std::mem::discriminant(&pair[1].blocks)
        });
        if parts.is_empty() || !same {
            return Err(parts);
        }
        let mut parts = parts.into_iter();
        let mut whole = parts.next().expect("not empty");
        for part in parts {
            whole.outputs += part.outputs;
            match (&mut whole.blocks, part.blocks) {
                (RowBlocks::Int8 { scales, quants }, RowBlocks::Int8 { scales: s, quants: q }) => {
                    scales.extend(s);
                    quants.extend(q);
                }
                (RowBlocks::Nibbles { d, m, quants }, RowBlocks::Nibbles { d: d2, m: m2, quants: q }) => {
                    d.extend(d2);
                    m.extend(m2);
                    quants.extend(q);
                }
                _ => unreachable!("forms checked above"),
            }
        }
        Ok(whole)
    }

    /// The rows packed into panels for the kernels.
    pub fn pack(self) -> QMatrix {
        let (outputs, inputs) = (self.outputs, self.inputs);
        let blocks = inputs / BLOCK;
        let panels = outputs.div_ceil(PANEL);
        // Where the scale of a panel's row (`lane`) for block `b` goes, and which matrix row a lane holds (`None`
        // for the padding rows of the last panel).
        let scale_at = |panel: usize, b: usize, lane: usize| (panel * blocks + b) * PANEL + lane;
        let source = |panel: usize, lane: usize| Some(panel * PANEL + lane).filter(|&row| row < outputs);
        let weights = match self.blocks {
            RowBlocks::Int8 { scales, quants } => {
                let mut packed_scales = vec![0.0f32; panels * blocks * PANEL];
                // Padding rows hold 128: the value zero.
                let mut packed = vec![128u8; panels * blocks * INT8_PANEL_BLOCK];
                for panel in 0..panels {
                    for b in 0..blocks {
                        for lane in 0..PANEL {
                            let Some(row) = source(panel, lane) else { continue };
                            packed_scales[scale_at(panel, b, lane)] = scales[row * blocks + b];
                            for step in 0..STEPS {
                                for t in 0..4 {
                                    let at = (panel * blocks + b) * INT8_PANEL_BLOCK + (step * PANEL + lane) * 4 + t;
                                    packed[at] = (quants[row * inputs + b * BLOCK + step * 4 + t] as i16 + 128) as u8;
                                }
                            }
                        }
                    }
                }
                Weights::Int8 { scales: packed_scales, quants: packed }
            }
            RowBlocks::Nibbles { d, m, quants } => {
                let mut packed_d = vec![0u16; panels * blocks * PANEL];
                let mut packed_m = vec![0u16; panels * blocks * PANEL];
                let mut packed = vec![0u8; panels * blocks * NIBBLE_PANEL_BLOCK];
                for panel in 0..panels {
                    for b in 0..blocks {
                        for lane in 0..PANEL {
                            let Some(row) = source(panel, lane) else { continue };
                            packed_d[scale_at(panel, b, lane)] = d[row * blocks + b];
                            packed_m[scale_at(panel, b, lane)] = m[row * blocks + b];
                            let values = &quants[row * inputs + b * BLOCK..][..BLOCK];
                            for j in 0..4 {
                                for t in 0..4 {
                                    let at = (panel * blocks + b) * NIBBLE_PANEL_BLOCK + (j * PANEL + lane) * 4 + t;
                                    packed[at] = values[j * 4 + t] | values[16 + j * 4 + t] << 4;
                                }
                            }
                        }
                    }
                }
                Weights::Nibbles { d: packed_d, m: packed_m, quants: packed }
            }
        };
        QMatrix { outputs, inputs, blocks, panels, weights }
    }
}

impl QMatrix {
    /// A GGUF weight packed for the kernels; `None` where [`RowMatrix::from_qtensor`] gives none.
    pub fn from_qtensor(tensor: &QTensor) -> Result<Option<QMatrix>, LocalError> {
        Ok(RowMatrix::from_qtensor(tensor)?.map(RowMatrix::pack))
    }

    /// From float weights `[outputs, inputs]`, as int8 blocks.
    pub fn from_f32(values: &[f32], outputs: usize, inputs: usize) -> QMatrix {
        RowMatrix::from_f32(values, outputs, inputs).pack()
    }

    pub fn bytes(&self) -> usize {
        match &self.weights {
            Weights::Int8 { scales, quants } => quants.len() + scales.len() * 4,
            Weights::Nibbles { d, m, quants } => quants.len() + (d.len() + m.len()) * 2,
        }
    }

    /// `x` is `[rows, inputs]`, the result `[rows, outputs]`. Panels are split over `team` when given.
    pub fn forward(&self, x: &[f32], rows: usize, team: Option<&Team>) -> Vec<f32> {
        self.forward_with(Kernel::detect(), x, rows, team)
    }

    /// [`QMatrix::forward`] on a given kernel (one of [`Kernel::available`]).
    pub fn forward_with(&self, kernel: Kernel, x: &[f32], rows: usize, team: Option<&Team>) -> Vec<f32> {
        assert!(kernel.runs_here(), "{kernel:?} does not run on this CPU");
        debug_assert_eq!(x.len(), rows * self.inputs);
        let activations = quantize(x, rows, self.inputs);
        // Every element is written below (each thread writes every row of its panels, and the panels cover the
        // outputs), so the buffer is not zeroed first: for a logits matrix that is megabytes per step. Debug
        // builds zero it, so that a gap would show as wrong values in the tests instead of as garbage.
        let mut out = Vec::with_capacity(rows * self.outputs);
        if cfg!(debug_assertions) {
            out.resize(rows * self.outputs, 0.0f32);
        }
        let shared = SharedOut { ptr: out.as_mut_ptr(), rows, outputs: self.outputs };
        // Writes the outputs of `panels` for every row, a tile of rows at a time, over at most `step` panels at
        // a time so that the tiles after the first find those panels' weights still in L2.
        let step = (L2_WEIGHT_BYTES * self.panels / self.bytes().max(1)).max(1);
        // AMX tiles' activation figures are gathered once here, not for every part of every thread's panels.
        #[cfg(target_arch = "x86_64")]
        let amx_rows = (kernel == Kernel::Amx).then(|| amx::AmxRows::new(&activations));
        let fill = |panels: Range<usize>| {
            for start in panels.clone().step_by(step) {
                let part = start..(start + step).min(panels.end);
                #[cfg(target_arch = "x86_64")]
                let mut first = amx_rows.as_ref().map_or(0, |tiles| self.amx_tiles(part.clone(), tiles, &shared));
                #[cfg(not(target_arch = "x86_64"))]
                let mut first = 0;
                while first < rows {
                    let count = tile_rows(rows - first);
                    let tile = Tile { out: &shared, first };
                    match count {
                        1 => self.tile::<1>(kernel, part.clone(), &activations, tile),
                        2 => self.tile::<2>(kernel, part.clone(), &activations, tile),
                        3 => self.tile::<3>(kernel, part.clone(), &activations, tile),
                        4 => self.tile::<4>(kernel, part.clone(), &activations, tile),
                        _ => self.tile::<TILE>(kernel, part.clone(), &activations, tile),
                    }
                    first += count;
                }
            }
        };
        match team.filter(|t| t.threads() > 1) {
            None => fill(0..self.panels),
            Some(team) => {
                // A few ranges per thread keeps them busy when one is preempted. The ranges are disjoint, so
                // every output element is written by exactly one thread.
                let chunk = self.panels.div_ceil(team.threads() * 4).max(1);
                team.run(self.panels.div_ceil(chunk), |i| fill(i * chunk..((i + 1) * chunk).min(self.panels)));
            }
        }
        // SAFETY: the capacity holds `rows * outputs` floats, all of them written above (see the comment at the
        // allocation).
        unsafe { out.set_len(rows * self.outputs) };
        out
    }

    /// Outputs of `panels` for the `R` activation rows from `tile.first`.
    fn tile<const R: usize>(&self, kernel: Kernel, panels: Range<usize>, activations: &Q8Rows, mut tile: Tile) {
        assert!(panels.end <= self.panels && activations.blocks == self.blocks);
        assert!(tile.first + R <= activations.scales.len() / self.blocks.max(1) && tile.first + R <= tile.out.rows);
        assert_eq!(tile.out.outputs, self.outputs);
        let rows: [RowRef; R] = std::array::from_fn(|r| activations.row(tile.first + r));
        let blocks = self.blocks;
        match &self.weights {
            Weights::Int8 { scales, quants } => {
                let weights = Int8View { scales, quants, blocks };
                match kernel {
                    // SAFETY (both): the kernel's instructions are present (`forward_with` checked it against
                    // the CPU); the asserts above and the packing keep every access in bounds.
                    #[cfg(target_arch = "x86_64")]
                    Kernel::Avx512Vnni | Kernel::Amx => unsafe { int8_avx512_vnni(&weights, panels, &rows, &mut tile) },
                    #[cfg(target_arch = "x86_64")]
                    Kernel::Avx2 => unsafe { int8_avx2(&weights, panels, &rows, &mut tile) },
                    _ => int8_portable(&weights, panels, &rows, &mut tile),
                }
            }
            Weights::Nibbles { d, m, quants } => {
                let weights = NibbleView { d, m, quants, blocks };
                match kernel {
                    // SAFETY: as above.
                    #[cfg(target_arch = "x86_64")]
                    Kernel::Avx512Vnni | Kernel::Amx => unsafe {
                        nibble_avx512_vnni(&weights, panels, &rows, &mut tile)
                    },
                    #[cfg(target_arch = "x86_64")]
                    Kernel::Avx2 => unsafe { nibble_avx2(&weights, panels, &rows, &mut tile) },
                    _ => nibble_portable(&weights, panels, &rows, &mut tile),
                }
            }
        }
    }
}

impl QMatrix {
    /// Outputs of `panels` for the rows of every AMX tile; returns how many rows they hold (from row 0).
    #[cfg(target_arch = "x86_64")]
    fn amx_tiles(&self, panels: Range<usize>, tiles: &amx::AmxRows, out: &SharedOut) -> usize {
        for x in &tiles.sixteens {
            self.amx_tile(panels.clone(), x, out);
        }
        if let Some(x) = &tiles.eight {
            self.amx_tile(panels, x, out);
        }
        tiles.rows()
    }

    /// Outputs of `panels` for the `R` activation rows of `x`, in one AMX tile.
    #[cfg(target_arch = "x86_64")]
    fn amx_tile<const R: usize>(&self, panels: Range<usize>, x: &amx::ActivationTile<R>, out: &SharedOut) {
        assert!(panels.end <= self.panels && out.outputs == self.outputs && x.first + R <= out.rows);
        let mut tile = Tile { out, first: x.first };
        let blocks = self.blocks;
        // SAFETY (both): `forward_with` runs `Kernel::Amx` only where `Kernel::available` found AMX (and asked
        // the OS for it) and AVX-512 VNNI; the kernels check their bounds.
        match &self.weights {
            Weights::Int8 { scales, quants } => unsafe {
                amx::int8_amx(&Int8View { scales, quants, blocks }, panels, x, &mut tile)
            },
            Weights::Nibbles { d, m, quants } => unsafe {
                amx::nibble_amx(&NibbleView { d, m, quants, blocks }, panels, x, &mut tile)
            },
        }
    }
}

/// GGUF Q4_1 blocks (`d: f16, m: f16, qs: [u8; 16]`, little-endian, byte i holding value i in its low nibble
/// and value i + 16 in its high one), row after row.
fn q4_1_rows(bytes: &[u8], outputs: usize, inputs: usize) -> Result<RowBlocks, LocalError> {
    const BLOCK_BYTES: usize = 20;
    let blocks = inputs / BLOCK;
    if bytes.len() != outputs * blocks * BLOCK_BYTES {
        return Err(LocalError::Format(format!(
            "Q4_1 tensor [{outputs}, {inputs}] holds {} bytes, expected {}",
            bytes.len(),
            outputs * blocks * BLOCK_BYTES
        )));
    }
    let mut d = Vec::with_capacity(outputs * blocks);
    let mut m = Vec::with_capacity(outputs * blocks);
    let mut quants = Vec::with_capacity(outputs * inputs);
    for block in bytes.chunks_exact(BLOCK_BYTES) {
        d.push(u16::from_le_bytes([block[0], block[1]]));
        m.push(u16::from_le_bytes([block[2], block[3]]));
        quants.extend(block[4..].iter().map(|byte| byte & 0x0F));
        quants.extend(block[4..].iter().map(|byte| byte >> 4));
    }
    Ok(RowBlocks::Nibbles { d, m, quants })
}

/// Rows in the next tile: full tiles, then a half one, then what is left (each count has its own kernel).
fn tile_rows(remaining: usize) -> usize {
    match remaining {
        r if r >= TILE => TILE,
        r if r >= 4 => 4,
        r => r,
    }
}

/// The `[rows][outputs]` result, written by several threads at once, each only at the columns of its own panels.
struct SharedOut {
    ptr: *mut f32,
    rows: usize,
    outputs: usize,
}

// SAFETY: `forward_with` hands each thread a disjoint range of panels, so no element is written by two threads,
// and the buffer outlives the threads' scope.
unsafe impl Sync for SharedOut {}

/// Where a kernel writes: the tile's rows start at row `first` of `out`.
struct Tile<'a> {
    out: &'a SharedOut,
    first: usize,
}

impl Tile<'_> {
    /// Row `r` of the tile, outputs from `column` on: as many of `values` as the matrix has outputs there.
    #[inline(always)]
    fn store(&mut self, r: usize, column: usize, values: &[f32]) {
        let count = values.len().min(self.out.outputs.saturating_sub(column));
        assert!(self.first + r < self.out.rows);
        // SAFETY: in bounds (asserted, and `count` stops at the row's end); only this tile's thread writes these
        // columns (see `SharedOut`).
        unsafe {
            let target = self.out.ptr.add((self.first + r) * self.out.outputs + column);
            std::ptr::copy_nonoverlapping(values.as_ptr(), target, count);
        }
    }
}

/// An int8 weight matrix's arrays.
struct Int8View<'a> {
    scales: &'a [f32],
    quants: &'a [u8],
    blocks: usize,
}

/// A nibble weight matrix's arrays.
struct NibbleView<'a> {
    d: &'a [u16],
    m: &'a [u16],
    quants: &'a [u8],
    blocks: usize,
}

fn int8_portable<const R: usize>(w: &Int8View, panels: Range<usize>, rows: &[RowRef; R], tile: &mut Tile) {
    for panel in panels {
        let mut acc = [[0.0f32; PANEL]; R];
        for b in 0..w.blocks {
            let at = panel * w.blocks + b;
            let quants = &w.quants[at * INT8_PANEL_BLOCK..][..INT8_PANEL_BLOCK];
            for lane in 0..PANEL {
                let scale = w.scales[at * PANEL + lane];
                for (acc, row) in acc.iter_mut().zip(rows) {
                    let a = &row.quants[b * BLOCK..][..BLOCK];
                    let dot: i32 = (0..BLOCK)
                        .map(|i| (quants[(i / 4 * PANEL + lane) * 4 + i % 4] as i32 - 128) * a[i] as i32)
                        .sum();
                    acc[lane] = (dot as f32).mul_add(scale * row.scales[b], acc[lane]);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            tile.store(r, panel * PANEL, acc);
        }
    }
}

fn nibble_portable<const R: usize>(w: &NibbleView, panels: Range<usize>, rows: &[RowRef; R], tile: &mut Tile) {
    for panel in panels {
        let mut acc = [[0.0f32; PANEL]; R];
        for b in 0..w.blocks {
            let at = panel * w.blocks + b;
            let quants = &w.quants[at * NIBBLE_PANEL_BLOCK..][..NIBBLE_PANEL_BLOCK];
            for lane in 0..PANEL {
                let (d, m) = (f16_to_f32(w.d[at * PANEL + lane]), f16_to_f32(w.m[at * PANEL + lane]));
                for (acc, row) in acc.iter_mut().zip(rows) {
                    let a = &row.quants[b * BLOCK..][..BLOCK];
                    let dot: i32 = (0..16)
                        .map(|i| {
                            let byte = quants[(i / 4 * PANEL + lane) * 4 + i % 4];
                            (byte & 0x0F) as i32 * a[i] as i32 + (byte >> 4) as i32 * a[i + 16] as i32
                        })
                        .sum();
                    acc[lane] = (dot as f32).mul_add(d * row.scales[b], acc[lane]);
                    acc[lane] = m.mul_add(row.sums[b], acc[lane]);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            tile.store(r, panel * PANEL, acc);
        }
    }
}

/// Four activation bytes (inputs `4 * step` on of a block) in every 32-bit lane.
#[cfg(target_arch = "x86_64")]
macro_rules! broadcast_step {
    ($set1:ident, $block:expr, $step:expr) => {
        // SAFETY: the caller's block holds 32 bytes.
        $set1(unsafe { ($block.add($step * 4) as *const i32).read_unaligned() })
    };
}

/// Each row's eight outputs from `column` on, one vector per row of the tile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn store_ymm(tile: &mut Tile, column: usize, rows: &[std::arch::x86_64::__m256]) {
    for (r, vector) in rows.iter().enumerate() {
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` holds eight floats.
        unsafe { std::arch::x86_64::_mm256_storeu_ps(lanes.as_mut_ptr(), *vector) };
        tile.store(r, column, &lanes);
    }
}

/// Each row's sixteen outputs from `column` on, one vector per row of the tile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn store_zmm(tile: &mut Tile, column: usize, rows: &[std::arch::x86_64::__m512]) {
    for (r, vector) in rows.iter().enumerate() {
        let mut lanes = [0.0f32; PANEL];
        // SAFETY: `lanes` holds sixteen floats.
        unsafe { std::arch::x86_64::_mm512_storeu_ps(lanes.as_mut_ptr(), *vector) };
        tile.store(r, column, &lanes);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn int8_avx2<const R: usize>(w: &Int8View, panels: Range<usize>, rows: &[RowRef; R], tile: &mut Tile) {
    use std::arch::x86_64::*;
    let ones = _mm256_set1_epi16(1);
    let offset = _mm256_set1_epi8(-128);
    for panel in panels {
        // Eight outputs at a time: a ymm register holds four values of eight rows.
        for half in 0..2 {
            let mut acc = [_mm256_setzero_ps(); R];
            for b in 0..w.blocks {
                let at = panel * w.blocks + b;
                // SAFETY (every weight load): the panel and block exist (asserted by the caller); a block of a
                // panel holds 8 steps of 64 bytes and 16 scales.
                let base = unsafe { w.quants.as_ptr().add(at * INT8_PANEL_BLOCK + half * 32) };
                // Back to signed values; maddubs multiplies unsigned by signed bytes, so |w| times a with w's
                // sign moved onto a.
                let signed: [__m256i; STEPS] = std::array::from_fn(|step| {
                    _mm256_xor_si256(unsafe { _mm256_loadu_si256(base.add(step * 64) as *const __m256i) }, offset)
                });
                let magnitude: [__m256i; STEPS] =
                    std::array::from_fn(|step| _mm256_sign_epi8(signed[step], signed[step]));
                let scales = unsafe { _mm256_loadu_ps(w.scales.as_ptr().add(at * PANEL + half * 8)) };
                for r in 0..R {
                    let a = unsafe { rows[r].quants.as_ptr().add(b * BLOCK) };
                    let mut dot = _mm256_setzero_si256();
                    for step in 0..STEPS {
                        let inputs = broadcast_step!(_mm256_set1_epi32, a, step);
                        // Pairs of products reach 2 * 127 * 127, so each step widens to 32 bits at once.
                        let products = _mm256_maddubs_epi16(magnitude[step], _mm256_sign_epi8(inputs, signed[step]));
                        dot = _mm256_add_epi32(dot, _mm256_madd_epi16(products, ones));
                    }
                    let combined = _mm256_mul_ps(scales, _mm256_set1_ps(rows[r].scales[b]));
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), combined, acc[r]);
                }
            }
            store_ymm(tile, panel * PANEL + half * 8, &acc);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibble_avx2<const R: usize>(w: &NibbleView, panels: Range<usize>, rows: &[RowRef; R], tile: &mut Tile) {
    use std::arch::x86_64::*;
    let ones = _mm256_set1_epi16(1);
    let low_nibbles = _mm256_set1_epi8(0x0F);
    for panel in panels {
        for half in 0..2 {
            let mut acc = [_mm256_setzero_ps(); R];
            for b in 0..w.blocks {
                let at = panel * w.blocks + b;
                // SAFETY (every weight load): as in `int8_avx2`, with blocks of 4 x 64 bytes and f16 scales.
                let base = unsafe { w.quants.as_ptr().add(at * NIBBLE_PANEL_BLOCK + half * 32) };
                let mut values = [_mm256_setzero_si256(); STEPS];
                for j in 0..4 {
                    let packed = unsafe { _mm256_loadu_si256(base.add(j * 64) as *const __m256i) };
                    values[j] = _mm256_and_si256(packed, low_nibbles);
                    values[j + 4] = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low_nibbles);
                }
                let scale_at = at * PANEL + half * 8;
                let d = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(w.d.as_ptr().add(scale_at) as *const __m128i) });
                let m = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(w.m.as_ptr().add(scale_at) as *const __m128i) });
                for r in 0..R {
                    let a = unsafe { rows[r].quants.as_ptr().add(b * BLOCK) };
                    // Pairs of products stay under 2 * 15 * 127, so eight steps sum in 16 bits (at most 30480).
                    let mut pairs = _mm256_maddubs_epi16(values[0], broadcast_step!(_mm256_set1_epi32, a, 0));
                    for (step, values) in values.iter().enumerate().skip(1) {
                        let inputs = broadcast_step!(_mm256_set1_epi32, a, step);
                        pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(*values, inputs));
                    }
                    let dot = _mm256_madd_epi16(pairs, ones);
                    let combined = _mm256_mul_ps(d, _mm256_set1_ps(rows[r].scales[b]));
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), combined, acc[r]);
                    acc[r] = _mm256_fmadd_ps(m, _mm256_set1_ps(rows[r].sums[b]), acc[r]);
                }
            }
            store_ymm(tile, panel * PANEL + half * 8, &acc);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn int8_avx512_vnni<const R: usize>(w: &Int8View, panels: Range<usize>, rows: &[RowRef; R], tile: &mut Tile) {
    use std::arch::x86_64::*;
    for panel in panels {
        let mut acc = [_mm512_setzero_ps(); R];
        for b in 0..w.blocks {
            let at = panel * w.blocks + b;
            // SAFETY (every weight load): as in `int8_avx2`.
            let base = unsafe { w.quants.as_ptr().add(at * INT8_PANEL_BLOCK) };
            let values: [__m512i; STEPS] =
                std::array::from_fn(|step| unsafe { _mm512_loadu_si512(base.add(step * 64) as *const __m512i) });
            let scales = unsafe { _mm512_loadu_ps(w.scales.as_ptr().add(at * PANEL)) };
            for r in 0..R {
                let a = unsafe { rows[r].quants.as_ptr().add(b * BLOCK) };
                // The weights are q + 128: start from -128 * sum(a) so the sums come out as sum(q * a). Two
                // chains of four halve the wait on each multiply-add's latency.
                let mut low = _mm512_set1_epi32(-128 * rows[r].int_sums[b]);
                let mut high = _mm512_setzero_si512();
                for step in 0..STEPS / 2 {
                    low = _mm512_dpbusd_epi32(low, values[step], broadcast_step!(_mm512_set1_epi32, a, step));
                    let later = step + STEPS / 2;
                    high = _mm512_dpbusd_epi32(high, values[later], broadcast_step!(_mm512_set1_epi32, a, later));
                }
                let dot = _mm512_add_epi32(low, high);
                let combined = _mm512_mul_ps(scales, _mm512_set1_ps(rows[r].scales[b]));
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), combined, acc[r]);
            }
        }
        store_zmm(tile, panel * PANEL, &acc);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn nibble_avx512_vnni<const R: usize>(
    w: &NibbleView,
    panels: Range<usize>,
    rows: &[RowRef; R],
    tile: &mut Tile,
) {
    use std::arch::x86_64::*;
    let low_nibbles = _mm512_set1_epi8(0x0F);
    for panel in panels {
        let mut acc = [_mm512_setzero_ps(); R];
        for b in 0..w.blocks {
            let at = panel * w.blocks + b;
            // SAFETY (every weight load): as in `nibble_avx2`.
            let base = unsafe { w.quants.as_ptr().add(at * NIBBLE_PANEL_BLOCK) };
            let mut values = [_mm512_setzero_si512(); STEPS];
            for j in 0..4 {
                let packed = unsafe { _mm512_loadu_si512(base.add(j * 64) as *const __m512i) };
                values[j] = _mm512_and_si512(packed, low_nibbles);
                values[j + 4] = _mm512_and_si512(_mm512_srli_epi16(packed, 4), low_nibbles);
            }
            let d = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(w.d.as_ptr().add(at * PANEL) as *const __m256i) });
            let m = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(w.m.as_ptr().add(at * PANEL) as *const __m256i) });
            for r in 0..R {
                let a = unsafe { rows[r].quants.as_ptr().add(b * BLOCK) };
                let mut low = _mm512_setzero_si512();
                let mut high = _mm512_setzero_si512();
                for step in 0..STEPS / 2 {
                    low = _mm512_dpbusd_epi32(low, values[step], broadcast_step!(_mm512_set1_epi32, a, step));
                    let later = step + STEPS / 2;
                    high = _mm512_dpbusd_epi32(high, values[later], broadcast_step!(_mm512_set1_epi32, a, later));
                }
                let dot = _mm512_add_epi32(low, high);
                let combined = _mm512_mul_ps(d, _mm512_set1_ps(rows[r].scales[b]));
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), combined, acc[r]);
                acc[r] = _mm512_fmadd_ps(m, _mm512_set1_ps(rows[r].sums[b]), acc[r]);
            }
        }
        store_zmm(tile, panel * PANEL, &acc);
    }
}

/// Rows of `width` floats as int8 blocks: scale = max |x| / 127 per block, values rounded half to even.
fn quantize(values: &[f32], rows: usize, width: usize) -> Q8Rows {
    let blocks = width / BLOCK;
    let mut scales = vec![0.0f32; rows * blocks];
    let mut sums = vec![0.0f32; rows * blocks];
    let mut int_sums = vec![0i32; rows * blocks];
    let mut quants = vec![0i8; rows * width];
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_f16c() {
        // SAFETY: AVX2 and FMA are present (checked at run time, with F16C).
        unsafe { quantize_avx2(values, &mut quants, &mut scales, &mut sums, &mut int_sums) };
        return Q8Rows { blocks, scales, sums, int_sums, quants };
    }
    for (index, (source, target)) in values.chunks_exact(BLOCK).zip(quants.chunks_exact_mut(BLOCK)).enumerate() {
        let source: &[f32; BLOCK] = source.try_into().expect("a whole block");
        let target: &mut [i8; BLOCK] = target.try_into().expect("a whole block");
        let (scale, sum) = quantize_block(source, target);
        scales[index] = scale;
        sums[index] = scale * sum as f32;
        int_sums[index] = sum;
    }
    Q8Rows { blocks, scales, sums, int_sums, quants }
}

/// [`quantize`]'s loop with AVX2, in one function so that the block code is inlined into it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn quantize_avx2(values: &[f32], quants: &mut [i8], scales: &mut [f32], sums: &mut [f32], int_sums: &mut [i32]) {
    let blocks = values.chunks_exact(BLOCK).zip(quants.chunks_exact_mut(BLOCK));
    for ((((source, target), scale), scaled_sum), int_sum) in blocks.zip(scales).zip(sums).zip(int_sums) {
        let source: &[f32; BLOCK] = source.try_into().expect("a whole block");
        let target: &mut [i8; BLOCK] = target.try_into().expect("a whole block");
        let (block_scale, sum) = quantize_block_avx2(source, target);
        *scale = block_scale;
        *scaled_sum = block_scale * sum as f32;
        *int_sum = sum;
    }
}

/// One block's int8 values; returns its scale and the sum of the values.
fn quantize_block(source: &[f32; BLOCK], target: &mut [i8; BLOCK]) -> (f32, i32) {
    let max = source.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = max / 127.0;
    let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let mut sum = 0i32;
    for (q, v) in target.iter_mut().zip(source) {
        *q = (v * inverse).round_ties_even() as i8;
        sum += *q as i32;
    }
    (scale, sum)
}

/// [`quantize_block`] with AVX2: the same values (products rounded half to even by the conversion).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
fn quantize_block_avx2(source: &[f32; BLOCK], target: &mut [i8; BLOCK]) -> (f32, i32) {
    use std::arch::x86_64::*;
    // SAFETY: the arrays hold 32 values.
    let v: [__m256; 4] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(source.as_ptr().add(i * 8)) });
    let sign = _mm256_set1_ps(-0.0);
    let abs = |x| _mm256_andnot_ps(sign, x);
    let max8 = _mm256_max_ps(_mm256_max_ps(abs(v[0]), abs(v[1])), _mm256_max_ps(abs(v[2]), abs(v[3])));
    let max4 = _mm_max_ps(_mm256_extractf128_ps(max8, 1), _mm256_castps256_ps128(max8));
    let max2 = _mm_max_ps(max4, _mm_movehl_ps(max4, max4));
    let max = _mm_cvtss_f32(_mm_max_ss(max2, _mm_movehdup_ps(max2)));
    let scale = max / 127.0;
    let inverse = _mm256_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
    let q: [__m256i; 4] = std::array::from_fn(|i| _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inverse)));
    let total = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    let total4 = _mm_add_epi32(_mm256_extracti128_si256(total, 1), _mm256_castsi256_si128(total));
    let total2 = _mm_add_epi32(total4, _mm_shuffle_epi32(total4, 0b01_00_11_10));
    let sum = _mm_cvtsi128_si32(_mm_add_epi32(total2, _mm_shuffle_epi32(total2, 0b00_00_00_01)));
    // The packs work within 128-bit lanes; the permutation puts the 32 bytes back in order.
    let packed = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    let ordered = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    // SAFETY: as above.
    unsafe { _mm256_storeu_si256(target.as_mut_ptr() as *mut __m256i, ordered) };
    (scale, sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(outputs: usize, inputs: usize, seed: u32) -> Vec<f32> {
        (0..outputs * inputs)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    fn float_matmul(x: &[f32], rows: usize, weights: &[f32], outputs: usize, inputs: usize) -> Vec<f32> {
        (0..rows)
            .flat_map(|r| {
                (0..outputs).map(move |c| (0..inputs).map(|i| x[r * inputs + i] * weights[c * inputs + i]).sum())
            })
            .collect()
    }

    fn q4_1(outputs: usize, inputs: usize, seed: u32) -> (QTensor, Vec<f32>) {
        use candle_core::quantized::GgmlDType;
        let tensor = candle_core::Tensor::from_vec(matrix(outputs, inputs, seed), (outputs, inputs), &Device::Cpu);
        let q4 = QTensor::quantize(&tensor.unwrap(), GgmlDType::Q4_1).unwrap();
        let floats = q4.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        (q4, floats)
    }

    fn assert_close(got: &[f32], expected: &[f32], what: &str) {
        assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(expected) {
            assert!((g - e).abs() < 0.05 + e.abs() * 0.02, "{what}: {g} vs {e}");
        }
    }

    #[test]
    fn int8_matches_float_matmul_within_quantization_error_for_every_row_count() {
        let (outputs, inputs) = (37, 96);
        let weights = matrix(outputs, inputs, 1);
        let q = QMatrix::from_f32(&weights, outputs, inputs);
        let team = Team::new(2, "test").unwrap();
        for rows in [1, 3, 4, 5, 9] {
            let x = matrix(rows, inputs, 7);
            let expected = float_matmul(&x, rows, &weights, outputs, inputs);
            for team in [None, Some(&team)] {
                assert_close(&q.forward(&x, rows, team), &expected, &format!("rows {rows}"));
            }
        }
    }

    #[test]
    fn q4_1_weights_kept_as_nibbles_match_their_float_values() {
        let (outputs, inputs) = (24, 320);
        let (q4, weights) = q4_1(outputs, inputs, 13);
        let matrix4 = QMatrix::from_qtensor(&q4).unwrap().unwrap();
        assert!(matches!(matrix4.weights, Weights::Nibbles { .. }));
        // Two panels of 16 rows (8 of them padding), each block 16 bytes of nibbles and two f16 scales per row.
        assert_eq!(matrix4.bytes(), 32 * (inputs / 2 + inputs / BLOCK * 4));
        let team = Team::new(2, "test").unwrap();
        for rows in [1, 2, 3, 4, 5, 9, 16, 23] {
            let x = matrix(rows, inputs, 17);
            let expected = float_matmul(&x, rows, &weights, outputs, inputs);
            for team in [None, Some(&team)] {
                assert_close(&matrix4.forward(&x, rows, team), &expected, &format!("rows {rows}"));
            }
        }
    }

    #[test]
    fn a_row_gives_the_same_result_alone_or_in_any_tile_and_thread_split() {
        let (outputs, inputs) = (50, 64);
        let (q4, _) = q4_1(outputs, inputs, 3);
        // 13 rows: tiles of 8, 4 and 1.
        let x = matrix(13, inputs, 11);
        let team = Team::new(2, "test").unwrap();
        for q in [
            QMatrix::from_f32(&matrix(outputs, inputs, 3), outputs, inputs),
            QMatrix::from_qtensor(&q4).unwrap().unwrap(),
        ] {
            let all = q.forward(&x, 13, Some(&team));
            for r in 0..13 {
                let alone = q.forward(&x[r * inputs..(r + 1) * inputs], 1, None);
                assert_eq!(alone, all[r * outputs..(r + 1) * outputs].to_vec());
            }
        }
    }

    #[test]
    fn every_kernel_gives_the_same_bits_for_every_row_count_and_thread_split() {
        // 37 outputs: two full panels and a partial one; 288 inputs: nine blocks.
        let (outputs, inputs) = (37, 288);
        let (q4, _) = q4_1(outputs, inputs, 5);
        let team = Team::new(3, "test").unwrap();
        let kernels = Kernel::available();
        println!("kernels on this CPU: {kernels:?}");
        for q in [
            QMatrix::from_f32(&matrix(outputs, inputs, 5), outputs, inputs),
            QMatrix::from_qtensor(&q4).unwrap().unwrap(),
        ] {
            for rows in [1, 2, 3, 4, 5, 8, 13, 16, 21, 40] {
                let x = matrix(rows, inputs, 9);
                let portable = q.forward_with(Kernel::Portable, &x, rows, None);
                for &kernel in &kernels {
                    for team in [None, Some(&team)] {
                        let got = q.forward_with(kernel, &x, rows, team);
                        let same = got.iter().zip(&portable).all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "{kernel:?}, {rows} rows: {got:?} vs {portable:?}");
                    }
                }
            }
        }
    }

    /// A matrix larger than the weight bytes a thread runs all tiles over at once: the tiles go over it in
    /// parts, and every row still gets the bits it gets alone.
    #[test]
    fn a_matrix_larger_than_l2_gives_each_row_the_bits_it_gets_alone() {
        let (outputs, inputs) = (1024, 576);
        let q = QMatrix::from_f32(&matrix(outputs, inputs, 3), outputs, inputs);
        assert!(q.bytes() > 2 * L2_WEIGHT_BYTES, "{} bytes", q.bytes());
        let rows = 13;
        let x = matrix(rows, inputs, 4);
        let team = Team::new(2, "test").unwrap();
        for kernel in Kernel::available() {
            let together = q.forward_with(kernel, &x, rows, Some(&team));
            for r in 0..rows {
                let alone = q.forward_with(kernel, &x[r * inputs..(r + 1) * inputs], 1, None);
                let same = alone.iter().zip(&together[r * outputs..]).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{kernel:?}, row {r}");
            }
        }
    }

    #[test]
    fn simd_and_portable_quantization_agree_to_the_bit() {
        let mut values = matrix(40, BLOCK, 21);
        // Scale 1 and values halfway between integers: both round them to even.
        values[..BLOCK]
            .copy_from_slice(&std::array::from_fn::<f32, BLOCK, _>(|i| if i == 0 { 127.0 } else { i as f32 - 16.5 }));
        values[BLOCK..2 * BLOCK].fill(0.0);
        for (source, _) in values.chunks_exact(BLOCK).zip(0..) {
            let source: &[f32; BLOCK] = source.try_into().unwrap();
            let (mut a, mut b) = ([0i8; BLOCK], [0i8; BLOCK]);
            let portable = quantize_block(source, &mut a);
            #[cfg(target_arch = "x86_64")]
            if super::super::simd::has_f16c() {
                let simd = unsafe { quantize_block_avx2(source, &mut b) };
                assert_eq!((portable, a), (simd, b));
            }
            let max = source.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert_eq!(a.iter().map(|&q| q as i32).sum::<i32>(), portable.1);
            assert!(max == 0.0 || a.iter().any(|&q| q.abs() == 127));
        }
        let mut halves = [0i8; BLOCK];
        quantize_block(values[..BLOCK].try_into().unwrap(), &mut halves);
        assert_eq!(halves[1..5], [-16, -14, -14, -12]);
    }

    #[test]
    fn concatenated_matrices_give_their_parts_outputs_side_by_side() {
        let inputs = 64;
        let parts: Vec<(QTensor, Vec<f32>)> = [(8, 1), (3, 2), (5, 3)].map(|(o, s)| q4_1(o, inputs, s)).into();
        let x = matrix(3, inputs, 4);
        let separate: Vec<Vec<f32>> =
            parts.iter().map(|(t, _)| QMatrix::from_qtensor(t).unwrap().unwrap().forward(&x, 3, None)).collect();
        let whole =
            RowMatrix::concat(parts.iter().map(|(t, _)| RowMatrix::from_qtensor(t).unwrap().unwrap()).collect())
                .ok()
                .unwrap()
                .pack();
        assert_eq!(whole.outputs, 16);
        let fused = whole.forward(&x, 3, None);
        for r in 0..3 {
            let expected: Vec<f32> =
                separate.iter().zip([8, 3, 5]).flat_map(|(s, o)| s[r * o..(r + 1) * o].to_vec()).collect();
            assert_eq!(fused[r * 16..(r + 1) * 16], expected[..]);
        }
        // Different forms stay apart.
        let mixed = vec![
            RowMatrix::from_qtensor(&parts[0].0).unwrap().unwrap(),
            RowMatrix::from_f32(&matrix(2, inputs, 1), 2, inputs),
        ];
        assert_eq!(RowMatrix::concat(mixed).err().map(|parts| parts.len()), Some(2));
    }
}
