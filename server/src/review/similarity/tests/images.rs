//! Test images built from code: deterministic scenes, seeded patterns and textures, and the
//! perturbations an honest re-render or a cheat applies to them.

/// An 8-bit RGB image.
#[derive(Debug, Clone)]
pub(super) struct Rgb {
    pub(super) width: usize,
    pub(super) height: usize,
    pub(super) data: Vec<u8>,
}

/// A uniform value in [0, 1) from a position and a seed (SplitMix64 finaliser).
pub(super) fn hash(x: i64, y: i64, seed: u64) -> f64 {
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add((x as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9))
        .wrapping_add((y as u64).wrapping_mul(0x94D0_49BB_1331_11EB));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

impl Rgb {
    pub(super) fn from_fn(
        width: usize,
        height: usize,
        f: impl Fn(usize, usize) -> [f64; 3],
    ) -> Rgb {
        let mut data = Vec::with_capacity(width * height * 3);
        for y in 0..height {
            for x in 0..width {
                data.extend(f(x, y).map(|v| v.round().clamp(0.0, 255.0) as u8));
            }
        }
        Rgb {
            width,
            height,
            data,
        }
    }

    fn at(&self, x: usize, y: usize) -> [f64; 3] {
        let i = (y * self.width + x) * 3;
        [0, 1, 2].map(|c| f64::from(self.data[i + c]))
    }

    pub(super) fn png(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, self.width as u32, self.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().expect("png header");
        writer.write_image_data(&self.data).expect("png data");
        writer.finish().expect("png end");
        out
    }

    /// Each sample through `f(sample index, value)`.
    pub(super) fn map(&self, f: impl Fn(usize, f64) -> f64) -> Rgb {
        let data = self
            .data
            .iter()
            .enumerate()
            .map(|(i, &v)| f(i, f64::from(v)).round().clamp(0.0, 255.0) as u8)
            .collect();
        Rgb { data, ..*self }
    }

    /// Uniform integer noise in `-amplitude..=amplitude` on every sample.
    pub(super) fn noisy(&self, amplitude: i64, seed: u64) -> Rgb {
        let span = (2 * amplitude + 1) as f64;
        self.map(|i, v| v + (hash(i as i64, 0, seed) * span).floor() - amplitude as f64)
    }

    /// Every sample through bf16, as a decoder working in bf16 on values in [-1, 1] leaves them.
    pub(super) fn bf16_rounded(&self) -> Rgb {
        self.map(|_, v| {
            let bits = ((v / 127.5 - 1.0) as f32).to_bits();
            let rounded = bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) & 0xFFFF_0000;
            (f64::from(f32::from_bits(rounded)) + 1.0) * 127.5
        })
    }

    /// Separable Gaussian blur, edges clamped.
    pub(super) fn blurred(&self, sigma: f64) -> Rgb {
        let radius = (3.0 * sigma).ceil() as i64;
        let weights: Vec<f64> = (-radius..=radius)
            .map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let pass = |image: &Rgb, dx: i64, dy: i64| {
            Rgb::from_fn(image.width, image.height, |x, y| {
                let mut sum = [0.0; 3];
                for (k, w) in (-radius..=radius).zip(&weights) {
                    let sx = (x as i64 + k * dx).clamp(0, image.width as i64 - 1) as usize;
                    let sy = (y as i64 + k * dy).clamp(0, image.height as i64 - 1) as usize;
                    let p = image.at(sx, sy);
                    (0..3).for_each(|c| sum[c] += w * p[c] / total);
                }
                sum
            })
        };
        pass(&pass(self, 1, 0), 0, 1)
    }

    /// Resized with bilinear interpolation between pixel centres.
    pub(super) fn bilinear(&self, width: usize, height: usize) -> Rgb {
        let source = |out: usize, len_out: usize, len_in: usize| {
            let s = ((out as f64 + 0.5) * len_in as f64 / len_out as f64 - 0.5)
                .clamp(0.0, (len_in - 1) as f64);
            let low = s.floor() as usize;
            (low, (low + 1).min(len_in - 1), s - low as f64)
        };
        Rgb::from_fn(width, height, |x, y| {
            let (x0, x1, fx) = source(x, width, self.width);
            let (y0, y1, fy) = source(y, height, self.height);
            let (a, b, c, d) = (
                self.at(x0, y0),
                self.at(x1, y0),
                self.at(x0, y1),
                self.at(x1, y1),
            );
            [0, 1, 2].map(|i| {
                (a[i] * (1.0 - fx) + b[i] * fx) * (1.0 - fy) + (c[i] * (1.0 - fx) + d[i] * fx) * fy
            })
        })
    }

    /// The cheat of rendering at half the size (2×2 means) and scaling back up.
    pub(super) fn half_size_upscaled(&self) -> Rgb {
        let half = Rgb::from_fn(self.width / 2, self.height / 2, |x, y| {
            let p =
                [(0, 0), (1, 0), (0, 1), (1, 1)].map(|(dx, dy)| self.at(2 * x + dx, 2 * y + dy));
            [0, 1, 2].map(|c| p.iter().map(|p| p[c]).sum::<f64>() / 4.0)
        });
        half.bilinear(self.width, self.height)
    }

    /// A flat image of this one's mean colour: the best a canned answer can do.
    pub(super) fn flat(&self) -> Rgb {
        let n = (self.width * self.height) as f64;
        let mut mean = [0.0; 3];
        for (i, &v) in self.data.iter().enumerate() {
            mean[i % 3] += f64::from(v) / n;
        }
        Rgb::from_fn(self.width, self.height, |_, _| mean)
    }
}

/// Shapes on a gradient: a disc, a rectangle and a diagonal band.
pub(super) fn scene(width: usize, height: usize) -> Rgb {
    let (w, h) = (width as f64, height as f64);
    Rgb::from_fn(width, height, |x, y| {
        let (u, v) = (x as f64 / w, y as f64 / h);
        let mut p = [40.0 + 160.0 * u, 60.0 + 120.0 * v, 200.0 - 150.0 * u];
        if (u - 0.35).powi(2) + (v - 0.4).powi(2) < 0.04 {
            p = [230.0, 200.0 - 80.0 * v, 40.0];
        }
        if (0.55..0.85).contains(&u) && (0.55..0.8).contains(&v) {
            p = [30.0, 90.0 + 60.0 * u, 70.0];
        }
        if ((u + v) - 1.3).abs() < 0.04 {
            p = [250.0, 250.0, 250.0];
        }
        p
    })
}

/// A seeded smooth pattern: three plane waves and a few soft blobs.
pub(super) fn pattern(width: usize, height: usize, seed: u64) -> Rgb {
    let r = |i: i64| hash(i, 7, seed);
    let waves: Vec<(f64, f64, f64)> = (0..3)
        .map(|i| {
            let angle = r(i) * std::f64::consts::TAU;
            let frequency = 2.0 + 6.0 * r(i + 10);
            (
                angle.cos() * frequency,
                angle.sin() * frequency,
                r(i + 20) * 6.3,
            )
        })
        .collect();
    let blobs: Vec<(f64, f64, f64)> = (0..4)
        .map(|i| (r(i + 30), r(i + 40), 0.05 + 0.1 * r(i + 50)))
        .collect();
    Rgb::from_fn(width, height, |x, y| {
        let (u, v) = (x as f64 / width as f64, y as f64 / height as f64);
        let w: Vec<f64> = waves
            .iter()
            .map(|(fx, fy, phase)| (std::f64::consts::TAU * (fx * u + fy * v) + phase).sin())
            .collect();
        let blob: f64 = blobs
            .iter()
            .map(|(bx, by, size)| (-((u - bx).powi(2) + (v - by).powi(2)) / (size * size)).exp())
            .sum();
        [
            128.0 + 50.0 * w[0] + 60.0 * blob,
            128.0 + 50.0 * w[1] - 40.0 * blob,
            128.0 + 50.0 * w[2] + 20.0 * blob,
        ]
    })
}

/// Smoothly interpolated lattice noise with cells of `cell` pixels, in [0, 1).
fn value_noise(x: usize, y: usize, cell: usize, seed: u64) -> f64 {
    let (fx, fy) = (x as f64 / cell as f64, y as f64 / cell as f64);
    let (ix, iy) = (fx.floor() as i64, fy.floor() as i64);
    let smooth = |t: f64| t * t * (3.0 - 2.0 * t);
    let (tx, ty) = (smooth(fx - ix as f64), smooth(fy - iy as f64));
    let top = hash(ix, iy, seed) * (1.0 - tx) + hash(ix + 1, iy, seed) * tx;
    let bottom = hash(ix, iy + 1, seed) * (1.0 - tx) + hash(ix + 1, iy + 1, seed) * tx;
    top * (1.0 - ty) + bottom * ty
}

/// Seeded colour noise over every scale from 32 pixels down to one, the look of a small
/// diffusion model with random weights.
pub(super) fn texture(width: usize, height: usize, seed: u64) -> Rgb {
    const OCTAVES: [(usize, f64); 6] = [
        (32, 1.0),
        (16, 0.7),
        (8, 0.5),
        (4, 0.35),
        (2, 0.25),
        (1, 0.18),
    ];
    let total: f64 = OCTAVES.iter().map(|(_, a)| a).sum();
    let field = |x: usize, y: usize, stream: u64| {
        OCTAVES
            .iter()
            .enumerate()
            .map(|(o, &(cell, amplitude))| {
                amplitude * value_noise(x, y, cell, seed * 100 + stream * 10 + o as u64)
            })
            .sum::<f64>()
            / total
    };
    Rgb::from_fn(width, height, |x, y| {
        let common = field(x, y, 0);
        [1, 2, 3].map(|c| 255.0 * (1.6 * (0.6 * common + 0.4 * field(x, y, c)) - 0.3))
    })
}
