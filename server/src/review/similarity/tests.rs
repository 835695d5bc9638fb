mod images;

use self::images::{Rgb, pattern, scene, texture};
use super::metrics::{self, Plane};
use super::*;

fn plane(width: usize, height: usize, f: impl Fn(usize, usize) -> f64) -> Plane {
    let data = (0..height)
        .flat_map(|y| (0..width).map(move |x| (x, y)))
        .map(|(x, y)| f(x, y))
        .collect();
    Plane {
        width,
        height,
        data,
    }
}

#[test]
fn ssim_matches_its_closed_forms() {
    let textured = plane(32, 32, |x, y| images::hash(x as i64, y as i64, 3) * 255.0);
    assert!((metrics::ssim(&textured, &textured) - 1.0).abs() < 1e-12);
    // Flat images: no variance, so SSIM is the luminance term (2ab + C1) / (a² + b² + C1).
    let c1 = (0.01f64 * 255.0).powi(2);
    let expected = (2.0 * 100.0 * 120.0 + c1) / (100.0f64.powi(2) + 120.0f64.powi(2) + c1);
    let measured = metrics::ssim(&plane(20, 20, |_, _| 100.0), &plane(20, 20, |_, _| 120.0));
    assert!(
        (measured - expected).abs() < 1e-9,
        "{measured} against {expected}"
    );
    // An inverted texture is anti-correlated: the structure term is negative.
    let inverted = Plane {
        data: textured.data.iter().map(|v| 255.0 - v).collect(),
        ..textured.clone()
    };
    assert!(metrics::ssim(&textured, &inverted) < -0.5);
}

#[test]
fn area_resize_averages_what_each_pixel_covers() {
    let ramp = plane(4, 2, |x, y| (x + 10 * y) as f64);
    let half = ramp.resize_area(2, 1);
    assert_eq!(half.data, vec![5.5, 7.5]);
    let thirds = plane(3, 1, |x, _| [0.0, 30.0, 90.0][x]).resize_area(2, 1);
    assert!((thirds.data[0] - 10.0).abs() < 1e-9 && (thirds.data[1] - 70.0).abs() < 1e-9);
}

#[test]
fn phash_reads_the_low_dct_frequencies() {
    // A sum of DCT basis images, one per coefficient of the hash's block, positive where the
    // expected hash has a bit and negative elsewhere (32 of each): the median is 0 and the
    // hash is the sign pattern.
    let expected: u64 = 0xA5A5_0F0F_3C3C_9696;
    let basis =
        |n: usize, k: usize| (std::f64::consts::PI / 32.0 * (n as f64 + 0.5) * k as f64).cos();
    let image = plane(32, 32, |x, y| {
        (0..64)
            .map(|bit| {
                let sign = if expected >> bit & 1 == 1 { 1.0 } else { -1.0 };
                sign * basis(x, bit % 8 + 1) * basis(y, bit / 8 + 1)
            })
            .sum::<f64>()
            + 128.0
    });
    assert_eq!(metrics::phash(&image), expected);
    let inverted = Plane {
        data: image.data.iter().map(|v| 256.0 - v).collect(),
        ..image.clone()
    };
    assert_eq!(metrics::phash(&inverted), !expected);
}

/// What a pair is, so what the verdict must be.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// What an honest re-render on other hardware could produce: must match.
    Honest,
    /// Must not match.
    Cheat,
    /// A cheat that leaves a picture without fine detail unchanged (a smooth pattern scaled
    /// up from half size, or blurred by less than its own scale): the same picture, so it
    /// matches, and its scores are printed to show how close it comes.
    Invisible,
}

struct Case {
    name: String,
    miner: Rgb,
    validator: Rgb,
    kind: Kind,
}

fn cases() -> Vec<Case> {
    let bases = [
        ("scene 128", scene(128, 128), pattern(128, 128, 1)),
        ("scene 256x192", scene(256, 192), texture(256, 192, 4)),
        ("pattern 128", pattern(128, 128, 1), pattern(128, 128, 2)),
        ("texture 128", texture(128, 128, 1), texture(128, 128, 2)),
        ("texture 256", texture(256, 256, 5), texture(256, 256, 6)),
    ];
    let mut cases = Vec::new();
    for (seed, (name, base, other)) in bases.into_iter().enumerate() {
        let smooth = name.starts_with("pattern");
        let scaled = if smooth { Kind::Invisible } else { Kind::Cheat };
        let mut add = |what: &str, miner: Rgb, kind| {
            cases.push(Case {
                name: format!("{name}: {what}"),
                miner,
                validator: base.clone(),
                kind,
            })
        };
        add("±3 noise", base.noisy(3, seed as u64), Kind::Honest);
        add("±1 noise", base.noisy(1, seed as u64 + 50), Kind::Honest);
        add("σ 0.5 blur", base.blurred(0.5), Kind::Honest);
        add("+1 level", base.map(|_, v| v + 1.0), Kind::Honest);
        add("bf16", base.bf16_rounded(), Kind::Honest);
        let bf16_noisy = base.bf16_rounded().noisy(2, seed as u64 + 90);
        add("bf16 ±2 noise", bf16_noisy, Kind::Honest);
        add("other image", other, Kind::Cheat);
        add("half size", base.half_size_upscaled(), scaled);
        add("flat", base.flat(), Kind::Cheat);
        add("σ 3 blur", base.blurred(3.0), scaled);
        add("σ 6 blur", base.blurred(6.0), Kind::Cheat);
    }
    cases
}

#[test]
#[expect(
    clippy::print_stdout,
    reason = "the measured table is the calibration's record (`-- --nocapture`)"
)]
fn calibration_separates_honest_pairs_from_cheats() {
    let thresholds = Thresholds::default();
    let mut failures = Vec::new();
    let (mut honest_ssim, mut honest_hash) = (f64::INFINITY, 0);
    let (mut cheat_ssim, mut cheat_detail) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let mut honest_detail = f64::INFINITY;
    println!(
        "{:<34} {:>7} {:>7} {:>5}  verdict",
        "pair", "ssim", "detail", "phash"
    );
    for case in cases() {
        let similarity =
            compare(&case.miner.png(), &case.validator.png()).expect("test PNGs decode");
        let verdict = thresholds.verdict(&similarity);
        println!(
            "{:<34} {:>7.4} {:>7.3} {:>5}  {}",
            case.name,
            similarity.ssim,
            similarity.detail_ratio,
            similarity.phash_distance,
            format!("{:?}", case.kind).to_lowercase()
        );
        if case.kind == Kind::Honest {
            honest_ssim = honest_ssim.min(similarity.ssim);
            honest_hash = honest_hash.max(similarity.phash_distance);
            honest_detail = honest_detail.min(similarity.detail_ratio);
        } else if case.kind == Kind::Cheat {
            cheat_ssim = cheat_ssim.max(similarity.ssim);
            cheat_detail = cheat_detail.max(similarity.detail_ratio);
        }
        if (verdict == Verdict::Match) != (case.kind != Kind::Cheat) {
            failures.push(format!("{}: {verdict:?}", case.name));
        }
    }
    println!(
        "honest: ssim ≥ {honest_ssim:.4}, detail ≥ {honest_detail:.3}, phash ≤ {honest_hash}; \
         cheats: ssim ≤ {cheat_ssim:.4}, detail ≤ {cheat_detail:.3}; thresholds: {thresholds:?}"
    );
    assert!(failures.is_empty(), "misjudged: {failures:#?}");
}

#[test]
fn different_sizes_are_a_mismatch_not_an_error() {
    let image = pattern(128, 128, 1);
    let similarity = compare(&image.png(), &image.bilinear(128, 96).png()).expect("both decode");
    let size = |width, height| Size { width, height };
    assert_eq!(
        similarity.sizes,
        Sizes::Differ {
            miner: size(128, 128),
            validator: size(128, 96)
        }
    );
    assert!(matches!(
        Thresholds::default().verdict(&similarity),
        Verdict::Mismatch {
            reason: MismatchReason::SizesDiffer { .. }
        }
    ));
}

#[test]
fn identical_and_grey_images_match() {
    let image = texture(64, 48, 9).png();
    let similarity = compare(&image, &image).expect("decodes");
    assert_eq!(similarity.phash_distance, 0);
    assert!((similarity.ssim - 1.0).abs() < 1e-9);

    let mut grey = Vec::new();
    let mut encoder = png::Encoder::new(&mut grey, 64, 48);
    encoder.set_color(png::ColorType::Grayscale);
    let luma: Vec<u8> = texture(64, 48, 9)
        .data
        .chunks(3)
        .map(|p| {
            (0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2])).round()
                as u8
        })
        .collect();
    let mut writer = encoder.write_header().expect("header");
    writer.write_image_data(&luma).expect("data");
    writer.finish().expect("end");
    let similarity = compare(&grey, &image).expect("both decode");
    assert_eq!(Thresholds::default().verdict(&similarity), Verdict::Match);
}

/// A PNG whose IHDR declares `width`×`height` and that has no pixel data.
fn header_only(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    bytes.extend(width.to_be_bytes());
    bytes.extend(height.to_be_bytes());
    bytes.extend([8, 2, 0, 0, 0, 0, 0, 0, 0]);
    bytes
}

#[test]
fn hostile_inputs_are_refused_without_panicking() {
    let good = pattern(32, 32, 1).png();
    let refusal = |miner: &[u8]| compare(miner, &good).expect_err("refused").to_string();
    assert!(refusal(b"").contains("miner's image is not a PNG"));
    assert!(refusal(b"GIF89a not a png at all, really").contains("not a PNG"));
    assert!(refusal(&header_only(0, 10)).contains("has no pixels"));
    assert!(refusal(&header_only(u32::MAX, u32::MAX)).contains("more than"));
    assert!(refusal(&header_only(5000, 5000)).contains("more than"));
    assert!(refusal(&header_only(64, 64)).contains("not a decodable PNG"));
    let message = compare(&good, &good[..good.len() / 2])
        .expect_err("truncated")
        .to_string();
    assert!(
        message.contains("validator's image is not a decodable PNG"),
        "{message}"
    );

    for cut in (0..good.len()).step_by(7) {
        let _ = compare(&good[..cut], &good);
    }
    for at in (8..good.len()).step_by(3) {
        let mut bent = good.clone();
        bent[at] ^= 0x5A;
        let _ = compare(&bent, &good);
    }
}
