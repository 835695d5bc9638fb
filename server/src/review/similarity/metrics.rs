//! The measures behind [`super::compare`], on planes of luma: area resampling, SSIM and a DCT
//! perceptual hash. Plain arithmetic on `f64`, so the known-value tests can hold them exactly.

/// A single-channel image, row-major, values on the 0–255 scale.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Plane {
    pub(super) width: usize,
    pub(super) height: usize,
    pub(super) data: Vec<f64>,
}

impl Plane {
    /// Resamples to `width`×`height`, each output pixel the mean of the source area it covers
    /// (partially covered source pixels count by their covered fraction).
    pub(super) fn resize_area(&self, width: usize, height: usize) -> Plane {
        let across = area_weights(self.width, width);
        let down = area_weights(self.height, height);
        let mut rows = vec![0.0; width * self.height];
        for y in 0..self.height {
            let source = &self.data[y * self.width..(y + 1) * self.width];
            for (x, weights) in across.iter().enumerate() {
                rows[y * width + x] = weights.iter().map(|&(i, w)| source[i] * w).sum();
            }
        }
        let mut data = vec![0.0; width * height];
        for (y, weights) in down.iter().enumerate() {
            for x in 0..width {
                data[y * width + x] = weights.iter().map(|&(i, w)| rows[i * width + x] * w).sum();
            }
        }
        Plane {
            width,
            height,
            data,
        }
    }

    fn map2(&self, other: &Plane, f: impl Fn(f64, f64) -> f64) -> Plane {
        Plane {
            width: self.width,
            height: self.height,
            data: self
                .data
                .iter()
                .zip(&other.data)
                .map(|(&a, &b)| f(a, b))
                .collect(),
        }
    }

    /// Correlates with the separable `kernel` where it fits entirely ("valid" region).
    fn filter_valid(&self, kernel: &[f64]) -> Plane {
        let (width, height) = (
            self.width + 1 - kernel.len(),
            self.height + 1 - kernel.len(),
        );
        let mut rows = vec![0.0; width * self.height];
        for y in 0..self.height {
            for x in 0..width {
                let start = y * self.width + x;
                rows[y * width + x] = kernel
                    .iter()
                    .zip(&self.data[start..])
                    .map(|(k, v)| k * v)
                    .sum();
            }
        }
        let mut data = vec![0.0; width * height];
        for y in 0..height {
            for x in 0..width {
                data[y * width + x] = kernel
                    .iter()
                    .enumerate()
                    .map(|(i, k)| k * rows[(y + i) * width + x])
                    .sum();
            }
        }
        Plane {
            width,
            height,
            data,
        }
    }
}

/// For each output index along an axis, the source indices it covers and their weights
/// (summing to 1).
fn area_weights(len_in: usize, len_out: usize) -> Vec<Vec<(usize, f64)>> {
    let scale = len_in as f64 / len_out as f64;
    (0..len_out)
        .map(|i| {
            let start = i as f64 * scale;
            let end = start + scale;
            let last = (end.ceil() as usize).min(len_in);
            (start.floor() as usize..last)
                .filter_map(|j| {
                    let overlap = end.min(j as f64 + 1.0) - start.max(j as f64);
                    (overlap > 1e-12).then_some((j, overlap / scale))
                })
                .collect()
        })
        .collect()
}

/// Side of the SSIM window and the standard deviation of its Gaussian weights, as in Wang,
/// Bovik, Sheikh and Simoncelli (2004).
const WINDOW: usize = 11;
const SIGMA: f64 = 1.5;
/// `C1 = (K1·L)²`, `C2 = (K2·L)²` with `K1 = 0.01`, `K2 = 0.03`, `L = 255`.
const C1: f64 = (0.01 * 255.0) * (0.01 * 255.0);
const C2: f64 = (0.03 * 255.0) * (0.03 * 255.0);

fn gaussian_kernel() -> Vec<f64> {
    let centre = (WINDOW / 2) as f64;
    let weights: Vec<f64> = (0..WINDOW)
        .map(|i| (-((i as f64 - centre).powi(2)) / (2.0 * SIGMA * SIGMA)).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    weights.into_iter().map(|w| w / total).collect()
}

/// Mean structural similarity of two planes of the same size (at least [`WINDOW`] on a side),
/// over every position where the Gaussian window fits.
pub(super) fn ssim(a: &Plane, b: &Plane) -> f64 {
    let kernel = gaussian_kernel();
    let mean_a = a.filter_valid(&kernel);
    let mean_b = b.filter_valid(&kernel);
    let aa = a.map2(a, |x, y| x * y).filter_valid(&kernel);
    let bb = b.map2(b, |x, y| x * y).filter_valid(&kernel);
    let ab = a.map2(b, |x, y| x * y).filter_valid(&kernel);
    let n = mean_a.data.len();
    let total: f64 = (0..n)
        .map(|i| {
            let (ma, mb) = (mean_a.data[i], mean_b.data[i]);
            let var_a = aa.data[i] - ma * ma;
            let var_b = bb.data[i] - mb * mb;
            let cov = ab.data[i] - ma * mb;
            ((2.0 * ma * mb + C1) * (2.0 * cov + C2))
                / ((ma * ma + mb * mb + C1) * (var_a + var_b + C2))
        })
        .sum();
    total / n as f64
}

/// Mean squared difference between horizontal and vertical neighbours: the energy of the
/// finest detail, which blur and upscaling take away and noise adds.
pub(super) fn detail(plane: &Plane) -> f64 {
    let (w, h, d) = (plane.width, plane.height, &plane.data);
    let across =
        (0..h).flat_map(|y| (1..w).map(move |x| (d[y * w + x] - d[y * w + x - 1]).powi(2)));
    let down =
        (1..h).flat_map(|y| (0..w).map(move |x| (d[y * w + x] - d[(y - 1) * w + x]).powi(2)));
    let pairs = (h * (w - 1) + w * (h - 1)).max(1);
    across.chain(down).sum::<f64>() / pairs as f64
}

/// Side of the image the hash's DCT runs on, and of the block of low frequencies it keeps.
const HASH_INPUT: usize = 32;
const HASH_BLOCK: usize = 8;

/// The 64-bit DCT perceptual hash (the pHash construction): the image at 32×32, its 2-D DCT-II,
/// the 8×8 lowest frequencies after the DC row and column, one bit per coefficient set when
/// it is above their median.
pub(super) fn phash(plane: &Plane) -> u64 {
    let small = plane.resize_area(HASH_INPUT, HASH_INPUT);
    let basis: Vec<Vec<f64>> = (1..=HASH_BLOCK)
        .map(|k| {
            (0..HASH_INPUT)
                .map(|n| {
                    (std::f64::consts::PI / HASH_INPUT as f64 * (n as f64 + 0.5) * k as f64).cos()
                })
                .collect()
        })
        .collect();
    let dot = |u: &[f64], v: &mut dyn Iterator<Item = f64>| -> f64 {
        u.iter().zip(v).map(|(a, b)| a * b).sum()
    };
    let rows: Vec<Vec<f64>> = small
        .data
        .chunks(HASH_INPUT)
        .map(|row| {
            basis
                .iter()
                .map(|b| dot(b, &mut row.iter().copied()))
                .collect()
        })
        .collect();
    let mut coefficients = Vec::with_capacity(HASH_BLOCK * HASH_BLOCK);
    for b in &basis {
        for u in 0..HASH_BLOCK {
            coefficients.push(dot(b, &mut rows.iter().map(|r| r[u])));
        }
    }
    let mut sorted = coefficients.clone();
    sorted.sort_by(f64::total_cmp);
    let median = (sorted[31] + sorted[32]) / 2.0;
    coefficients
        .iter()
        .enumerate()
        .filter(|&(_, &c)| c > median)
        .fold(0, |hash, (i, _)| hash | 1 << i)
}
