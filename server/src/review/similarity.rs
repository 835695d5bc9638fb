//! Does a miner's image show what the validator's re-render shows?
//!
//! A validator re-runs an image job with the same model, seed and parameters. The two PNGs are
//! never bit-identical (GPU models, f16 against bf16 kernels and thread counts move pixels by
//! a level or two), while the cheats this guards against (fewer denoising steps, a smaller
//! render scaled up, another model or seed, a canned image) change what the picture shows.
//! [`compare`] decodes both, turns them into BT.601 luma, resamples both to
//! [`WORKING_SIZE`]² with an area filter and measures two things:
//!
//! - the mean SSIM (11×11 Gaussian window, σ = 1.5, `K1 = 0.01`, `K2 = 0.03`): local
//!   brightness, contrast and structure, sensitive to blur and to lost detail;
//! - the Hamming distance of 64-bit DCT perceptual hashes: the layout of the picture at a
//!   coarse scale, indifferent to noise and blur.
//!
//! [`Thresholds::verdict`] turns the two into [`Verdict::Match`] or [`Verdict::Mismatch`].
//! Images of different sizes are not scored at all: that alone is a mismatch ([`Sizes`]).
//!
//! Decoding a large PNG takes tens of milliseconds: async callers use `spawn_blocking`.

mod metrics;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io::Cursor;

use metrics::Plane;

use crate::jobs::objects::png_size;

/// Side of the square both images are resampled to before they are measured. Detail finer
/// than this is not compared: a half-size render scaled up is only caught for images up to
/// twice this size by its blur, and above that because a diffusion model given another size
/// draws another picture, which both measures see.
pub const WORKING_SIZE: usize = 256;

/// The most pixels an image may declare; larger ones are refused before anything is
/// allocated for them. Well above any size the registry allows.
pub const MAX_PIXELS: u64 = 4096 * 4096;

/// Memory the PNG decoder may use beside the decoded pixels.
const DECODER_BYTES: usize = 64 << 20;

/// Which of the two images something is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Image {
    Miner,
    Validator,
}

impl fmt::Display for Image {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Image::Miner => "miner's",
            Image::Validator => "validator's",
        })
    }
}

/// Why two images could not be compared.
#[derive(Debug, thiserror::Error)]
pub enum SimilarityError {
    #[error("{image} image is not a PNG (no PNG signature and header)")]
    NotPng { image: Image },
    #[error("{image} image has no pixels ({size})")]
    Empty { image: Image, size: Size },
    #[error("{image} image declares {size}, more than the {MAX_PIXELS} pixels compared")]
    TooLarge { image: Image, size: Size },
    #[error("{image} image is not a decodable PNG: {source}")]
    Undecodable {
        image: Image,
        #[source]
        source: png::DecodingError,
    },
}

/// Width and height in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub width: u32,
    pub height: u32,
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}×{}", self.width, self.height)
    }
}

/// Whether the two images had the same size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sizes {
    Same(Size),
    /// Nothing was measured; the scores of the [`Similarity`] are the worst possible.
    Differ {
        miner: Size,
        validator: Size,
    },
}

/// What [`compare`] measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Similarity {
    /// Mean SSIM at [`WORKING_SIZE`]: 1 for identical images, near 0 for unrelated ones.
    pub ssim: f64,
    /// The miner's finest-scale detail (mean squared neighbour difference) over the
    /// validator's: near 1 for honest pairs, above 1 with added noise, well below 1 when the
    /// miner's image is blurred (fewer steps) or scaled up from a smaller render.
    pub detail_ratio: f64,
    /// Bits that differ between the two 64-bit perceptual hashes: 0 to 64, about 32 for
    /// unrelated images.
    pub phash_distance: u32,
    pub sizes: Sizes,
}

/// Where an honest re-render ends and a different image begins (`[review.image]`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    /// The lowest SSIM an honest pair has.
    pub min_ssim: f64,
    /// The lowest share of the validator's fine detail an honest miner's image keeps.
    pub min_detail_ratio: f64,
    /// The most perceptual-hash bits an honest pair differs by.
    pub max_phash_distance: u32,
}

impl Default for Thresholds {
    /// Calibrated by `tests::calibration_separates_honest_pairs_from_cheats` on programmatic
    /// images (shapes on a gradient at 128×128 and 256×192, a seeded smooth pattern, seeded
    /// multi-scale colour noise like the output of a small random-weight diffusion model at
    /// 128×128 and 256×256). Measured:
    ///
    /// | pairs | SSIM | detail ratio | pHash distance |
    /// |---|---|---|---|
    /// | honest: ±1/±3 noise, σ 0.5 blur, +1 level, bf16 rounding (± noise) | ≥ 0.976 | ≥ 0.483 | ≤ 2 |
    /// | other image or seed | ≤ 0.38 | any | ≥ 30 |
    /// | flat (mean colour) | ≤ 0.84 | ≤ 0.016 | ≥ 32 |
    /// | half size scaled up (images with fine detail) | ≤ 0.969 | ≤ 0.216 | 0 |
    /// | σ 3 and σ 6 blur (fewer steps) | ≤ 0.91 | ≤ 0.157 | ≤ 4 |
    ///
    /// `min_ssim` and `min_detail_ratio` sit between the groups; the hash bound is loose on
    /// purpose: it backs SSIM against a different composition and ignores blur. A smooth
    /// picture without fine detail scaled up from half size, or blurred by less than its own
    /// scale, stays the same picture and matches (SSIM 0.98–0.999, detail 0.60–0.94).
    /// Re-renders across GPU kinds may drift more than these synthetic perturbations; revisit
    /// with measured pairs.
    fn default() -> Self {
        Thresholds {
            min_ssim: 0.9,
            min_detail_ratio: 0.35,
            max_phash_distance: 12,
        }
    }
}

/// The judgement on one pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    Match,
    Mismatch { reason: MismatchReason },
}

/// Why a pair is judged different, with the numbers that decided it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MismatchReason {
    SizesDiffer {
        miner: Size,
        validator: Size,
    },
    LowSsim {
        ssim: f64,
        min_ssim: f64,
    },
    LostDetail {
        detail_ratio: f64,
        min_detail_ratio: f64,
    },
    PhashDistance {
        distance: u32,
        max: u32,
    },
}

impl fmt::Display for MismatchReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MismatchReason::SizesDiffer { miner, validator } => {
                write!(
                    f,
                    "the miner's image is {miner}, the validator's {validator}"
                )
            }
            MismatchReason::LowSsim { ssim, min_ssim } => {
                write!(f, "structural similarity {ssim:.3} is below {min_ssim:.3}")
            }
            MismatchReason::LostDetail {
                detail_ratio,
                min_detail_ratio,
            } => write!(
                f,
                "the miner's image keeps {detail_ratio:.2} of the fine detail, less than \
                 {min_detail_ratio:.2} (blurred or scaled up)"
            ),
            MismatchReason::PhashDistance { distance, max } => write!(
                f,
                "perceptual hashes differ in {distance} of 64 bits, more than {max}"
            ),
        }
    }
}

impl Thresholds {
    /// `Match` when the sizes agree and both measures are within bounds; otherwise the first
    /// failing check, in the order sizes, SSIM, detail, hash.
    pub fn verdict(&self, similarity: &Similarity) -> Verdict {
        let reason = if let Sizes::Differ { miner, validator } = similarity.sizes {
            MismatchReason::SizesDiffer { miner, validator }
        } else if similarity.ssim.is_nan() || similarity.ssim < self.min_ssim {
            MismatchReason::LowSsim {
                ssim: similarity.ssim,
                min_ssim: self.min_ssim,
            }
        } else if similarity.detail_ratio.is_nan()
            || similarity.detail_ratio < self.min_detail_ratio
        {
            MismatchReason::LostDetail {
                detail_ratio: similarity.detail_ratio,
                min_detail_ratio: self.min_detail_ratio,
            }
        } else if similarity.phash_distance > self.max_phash_distance {
            MismatchReason::PhashDistance {
                distance: similarity.phash_distance,
                max: self.max_phash_distance,
            }
        } else {
            return Verdict::Match;
        };
        Verdict::Mismatch { reason }
    }
}

/// Decodes both PNGs and measures how alike they look. Errors only when an image cannot be
/// read; a difference in size is an outcome ([`Sizes::Differ`]).
pub fn compare(miner_png: &[u8], validator_png: &[u8]) -> Result<Similarity, SimilarityError> {
    let miner = decode(miner_png, Image::Miner)?;
    let validator = decode(validator_png, Image::Validator)?;
    let (miner_size, validator_size) = (size_of(&miner), size_of(&validator));
    if miner_size != validator_size {
        return Ok(Similarity {
            ssim: 0.0,
            detail_ratio: 0.0,
            phash_distance: 64,
            sizes: Sizes::Differ {
                miner: miner_size,
                validator: validator_size,
            },
        });
    }
    let (width, height) = working_size(miner_size);
    let miner = miner.resize_area(width, height);
    let validator = validator.resize_area(width, height);
    // Noise-free flat images have no detail at all; a floor keeps the ratio finite.
    let floor = 0.25;
    Ok(Similarity {
        ssim: metrics::ssim(&miner, &validator),
        detail_ratio: (metrics::detail(&miner) + floor) / (metrics::detail(&validator) + floor),
        phash_distance: (metrics::phash(&miner) ^ metrics::phash(&validator)).count_ones(),
        sizes: Sizes::Same(miner_size),
    })
}

/// The size measures run at: the image's own up to [`WORKING_SIZE`] on a side, so nothing
/// is interpolated, and at least 16 so the SSIM window fits.
fn working_size(size: Size) -> (usize, usize) {
    let side = |n: u32| (n as usize).clamp(16, WORKING_SIZE);
    (side(size.width), side(size.height))
}

fn size_of(plane: &Plane) -> Size {
    Size {
        width: plane.width as u32,
        height: plane.height as u32,
    }
}

/// The size in the PNG signature's IHDR chunk, read before the decoder sees the bytes so a
/// hostile declaration is refused without allocating for it.
fn declared_size(bytes: &[u8], image: Image) -> Result<Size, SimilarityError> {
    let (width, height) = png_size(bytes).ok_or(SimilarityError::NotPng { image })?;
    let size = Size { width, height };
    if size.width == 0 || size.height == 0 {
        return Err(SimilarityError::Empty { image, size });
    }
    if u64::from(size.width) * u64::from(size.height) > MAX_PIXELS {
        return Err(SimilarityError::TooLarge { image, size });
    }
    Ok(size)
}

/// The image's BT.601 luma (`0.299 R + 0.587 G + 0.114 B` on the stored 8-bit values); alpha
/// is ignored, as generated images are opaque.
fn decode(bytes: &[u8], image: Image) -> Result<Plane, SimilarityError> {
    let size = declared_size(bytes, image)?;
    let undecodable = |source| SimilarityError::Undecodable { image, source };
    let mut decoder = png::Decoder::new_with_limits(
        Cursor::new(bytes),
        png::Limits {
            bytes: DECODER_BYTES,
        },
    );
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(undecodable)?;
    let len = reader
        .output_buffer_size()
        .ok_or(SimilarityError::TooLarge { image, size })?;
    let mut pixels = vec![0; len];
    let frame = reader.next_frame(&mut pixels).map_err(undecodable)?;
    let channels = frame.color_type.samples();
    let (width, height) = (frame.width as usize, frame.height as usize);
    let mut data = Vec::with_capacity(width * height);
    for row in pixels.chunks(frame.line_size).take(height) {
        for pixel in row.chunks_exact(channels).take(width) {
            data.push(match *pixel {
                [r, g, b, ..] if channels >= 3 => {
                    0.299 * f64::from(r) + 0.587 * f64::from(g) + 0.114 * f64::from(b)
                }
                [y, ..] => f64::from(y),
                [] => 0.0,
            });
        }
    }
    Ok(Plane {
        width,
        height,
        data,
    })
}
