//! `upscale`: an image rendered small, stretched to the size the job asked for.
//!
//! The PNG is decoded, resized with a bilinear filter, and encoded again with its text
//! chunks (the `parameters` chunk naming the requested size), so the returned file, its
//! size, its hash and the output's width and height all agree.

use std::io::Cursor;

use base64::Engine as _;
use image::imageops::{self, FilterType};
use image::{ImageBuffer, Pixel, Rgb, Rgba};
use infermine_protocol::JobOutput;
use sha2::{Digest, Sha256};

/// `output` with its inline PNG upscaled to `width` × `height`; `None` for other outputs and
/// images already that size.
pub(super) fn to_requested_size(
    output: &JobOutput,
    width: u32,
    height: u32,
) -> Result<Option<JobOutput>, String> {
    let JobOutput::Image {
        width: rendered_width,
        height: rendered_height,
        png_b64: Some(png_b64),
        ..
    } = output
    else {
        return Ok(None);
    };
    if (*rendered_width, *rendered_height) == (width, height) {
        return Ok(None);
    }
    let png = base64::engine::general_purpose::STANDARD
        .decode(png_b64)
        .map_err(|e| format!("upscale: the rendered PNG is not base64: {e}"))?;
    let bytes = upscale_png(&png, width, height)?;
    Ok(Some(JobOutput::Image {
        width,
        height,
        size_bytes: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(&bytes)),
        png_b64: Some(base64::engine::general_purpose::STANDARD.encode(&bytes)),
    }))
}

/// A PNG's pixels and international text chunks.
struct Decoded {
    width: u32,
    height: u32,
    color: png::ColorType,
    pixels: Vec<u8>,
    texts: Vec<(String, String)>,
}

/// `png` resized to `width` × `height`, its text chunks kept, any `Size: WxH` in them
/// updated to the new size.
pub(super) fn upscale_png(png: &[u8], width: u32, height: u32) -> Result<Vec<u8>, String> {
    let decoded = decode(png)?;
    let pixels = match decoded.color {
        png::ColorType::Rgb => resize::<Rgb<u8>>(&decoded, width, height)?,
        png::ColorType::Rgba => resize::<Rgba<u8>>(&decoded, width, height)?,
        other => return Err(format!("upscale: cannot resize a {other:?} PNG")),
    };
    let (old_size, new_size) = (
        format!("Size: {}x{}", decoded.width, decoded.height),
        format!("Size: {width}x{height}"),
    );
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(decoded.color);
    encoder.set_depth(png::BitDepth::Eight);
    for (keyword, text) in &decoded.texts {
        encoder
            .add_itxt_chunk(keyword.clone(), text.replace(&old_size, &new_size))
            .map_err(|e| format!("upscale: cannot add a text chunk: {e}"))?;
    }
    let mut writer = encoder
        .write_header()
        .map_err(|e| format!("upscale: cannot write the PNG header: {e}"))?;
    writer
        .write_image_data(&pixels)
        .map_err(|e| format!("upscale: cannot write the PNG data: {e}"))?;
    writer
        .finish()
        .map_err(|e| format!("upscale: cannot finish the PNG: {e}"))?;
    Ok(out)
}

fn decode(png: &[u8]) -> Result<Decoded, String> {
    let mut decoder = png::Decoder::new(Cursor::new(png));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder
        .read_info()
        .map_err(|e| format!("upscale: the rendered PNG cannot be read: {e}"))?;
    let size = reader
        .output_buffer_size()
        .ok_or("upscale: the rendered PNG is too large")?;
    let mut pixels = vec![0; size];
    let frame = reader
        .next_frame(&mut pixels)
        .map_err(|e| format!("upscale: the rendered PNG cannot be decoded: {e}"))?;
    pixels.truncate(frame.buffer_size());
    let texts = reader
        .info()
        .utf8_text
        .iter()
        .filter_map(|chunk| Some((chunk.keyword.clone(), chunk.get_text().ok()?)))
        .collect();
    Ok(Decoded {
        width: frame.width,
        height: frame.height,
        color: frame.color_type,
        pixels,
        texts,
    })
}

fn resize<P: Pixel<Subpixel = u8> + 'static>(
    decoded: &Decoded,
    width: u32,
    height: u32,
) -> Result<Vec<u8>, String> {
    let image =
        ImageBuffer::<P, &[u8]>::from_raw(decoded.width, decoded.height, decoded.pixels.as_slice())
            .ok_or("upscale: the PNG's pixels do not fill its size")?;
    Ok(imageops::resize(&image, width, height, FilterType::Triangle).into_raw())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARAMETERS: &str =
        "a lighthouse\nSteps: 30, Sampler: euler, CFG scale: 7.5, Seed: 1, Size: 32x16, Model: m";

    fn small_png() -> Vec<u8> {
        let pixels: Vec<u8> = (0..32 * 16 * 3).map(|i| (i * 7 % 256) as u8).collect();
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, 32, 16);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder
            .add_itxt_chunk("parameters".to_owned(), PARAMETERS.to_owned())
            .expect("chunk");
        let mut writer = encoder.write_header().expect("header");
        writer.write_image_data(&pixels).expect("data");
        writer.finish().expect("finish");
        out
    }

    fn image_output(png: &[u8], width: u32, height: u32) -> JobOutput {
        JobOutput::Image {
            width,
            height,
            size_bytes: png.len() as u64,
            sha256: hex::encode(Sha256::digest(png)),
            png_b64: Some(base64::engine::general_purpose::STANDARD.encode(png)),
        }
    }

    #[test]
    fn the_upscaled_png_is_valid_the_requested_size_and_matches_the_output() {
        let small = small_png();
        let output = to_requested_size(&image_output(&small, 32, 16), 64, 32)
            .expect("upscales")
            .expect("a new image");
        let JobOutput::Image {
            width,
            height,
            size_bytes,
            sha256,
            png_b64: Some(png_b64),
        } = output
        else {
            panic!("expected an inline image, got {output:?}");
        };
        assert_eq!((width, height), (64, 32));
        let png = base64::engine::general_purpose::STANDARD
            .decode(png_b64)
            .expect("base64");
        assert_eq!(size_bytes, png.len() as u64);
        assert_eq!(sha256, hex::encode(Sha256::digest(&png)));
        let decoded = decode(&png).expect("a valid PNG");
        assert_eq!((decoded.width, decoded.height), (64, 32));
        assert_eq!(decoded.color, png::ColorType::Rgb);
        assert_eq!(decoded.pixels.len(), 64 * 32 * 3);
        assert_eq!(
            decoded.texts,
            [(
                "parameters".to_owned(),
                PARAMETERS.replace("Size: 32x16", "Size: 64x32")
            )]
        );
    }

    #[test]
    fn images_of_the_right_size_and_other_outputs_pass_through() {
        let small = small_png();
        let same = image_output(&small, 32, 16);
        assert_eq!(to_requested_size(&same, 32, 16), Ok(None));
        let text = JobOutput::Text {
            text: "hi".to_owned(),
            usage: infermine_protocol::LlmUsage::default(),
            finish_reason: "stop".to_owned(),
            token_ids: vec![1],
        };
        assert_eq!(to_requested_size(&text, 64, 64), Ok(None));
        assert!(upscale_png(b"not a png", 64, 64).is_err());
    }
}
