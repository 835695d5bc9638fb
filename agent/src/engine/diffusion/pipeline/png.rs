//! The PNG file of a rendered image, with what produced it in a `parameters` text chunk in
//! the form AUTOMATIC1111's web UI writes (and image viewers and model hubs read):
//!
//! ```text
//! a lighthouse at dawn
//! Negative prompt: blurry
//! Steps: 30, Sampler: euler, CFG scale: 7.5, Seed: 42, Size: 512x512, Model: stable-diffusion-1.5
//! ```

use tch::{Kind, Tensor};

/// The text stored with an image.
#[derive(Debug, Clone, PartialEq)]
pub struct PngParameters<'a> {
    pub prompt: &'a str,
    pub negative_prompt: &'a str,
    pub steps: u32,
    pub sampler: &'a str,
    pub guidance_scale: f32,
    pub seed: u64,
    pub model: &'a str,
}

impl PngParameters<'_> {
    /// The chunk's text for an image of `width` × `height`.
    pub fn text(&self, width: u32, height: u32) -> String {
        let mut text = self.prompt.to_owned();
        if !self.negative_prompt.is_empty() {
            text.push_str("\nNegative prompt: ");
            text.push_str(self.negative_prompt);
        }
        text.push_str(&format!(
            "\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {width}x{height}, Model: {}",
            self.steps, self.sampler, self.guidance_scale, self.seed, self.model
        ));
        text
    }
}

/// Encodes `rgb` (`[height, width, 3]` u8 on the CPU) as an 8-bit RGB PNG with `parameters` as
/// an uncompressed international text chunk (UTF-8, so any prompt survives).
pub fn encode(rgb: &Tensor, parameters: &PngParameters) -> Result<Vec<u8>, String> {
    let size = rgb.size();
    if size.len() != 3 || size[2] != 3 || rgb.kind() != Kind::Uint8 {
        return Err(format!(
            "image has shape {size:?} and kind {:?}; expected [height, width, 3] u8",
            rgb.kind()
        ));
    }
    let (height, width) = (size[0] as u32, size[1] as u32);
    let pixels = Vec::<u8>::try_from(rgb.contiguous().view([-1]))
        .map_err(|e| format!("cannot read the pixels: {e}"))?;
    let mut out = Vec::new();
    let mut encoder = ::png::Encoder::new(&mut out, width, height);
    encoder.set_color(::png::ColorType::Rgb);
    encoder.set_depth(::png::BitDepth::Eight);
    encoder
        .add_itxt_chunk("parameters".to_owned(), parameters.text(width, height))
        .map_err(|e| format!("cannot add the parameters chunk: {e}"))?;
    let mut writer = encoder
        .write_header()
        .map_err(|e| format!("cannot write the PNG header: {e}"))?;
    writer
        .write_image_data(&pixels)
        .map_err(|e| format!("cannot write the PNG data: {e}"))?;
    writer
        .finish()
        .map_err(|e| format!("cannot finish the PNG: {e}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> PngParameters<'static> {
        PngParameters {
            prompt: "a lighthouse at dawn, 灯台",
            negative_prompt: "blurry",
            steps: 4,
            sampler: "euler",
            guidance_scale: 7.5,
            seed: 42,
            model: "tiny-sd15",
        }
    }

    #[test]
    fn pixels_and_parameters_survive_a_round_trip() {
        let rgb = Tensor::arange(8 * 16 * 3, (Kind::Int64, tch::Device::Cpu))
            .remainder(256)
            .to_kind(Kind::Uint8)
            .view([8, 16, 3]);
        let bytes = encode(&rgb, &params()).expect("succeeds");
        let decoder = ::png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().expect("succeeds");
        let mut buf = vec![0; reader.output_buffer_size().expect("succeeds")];
        let frame = reader.next_frame(&mut buf).expect("succeeds");
        assert_eq!((frame.width, frame.height), (16, 8));
        assert_eq!(frame.color_type, ::png::ColorType::Rgb);
        assert_eq!(buf, Vec::<u8>::try_from(rgb.view([-1])).expect("succeeds"));
        let text = &reader.info().utf8_text[0];
        assert_eq!(text.keyword, "parameters");
        assert_eq!(
            text.get_text().expect("succeeds"),
            "a lighthouse at dawn, 灯台\nNegative prompt: blurry\nSteps: 4, Sampler: euler, \
             CFG scale: 7.5, Seed: 42, Size: 16x8, Model: tiny-sd15"
        );
    }

    #[test]
    fn a_tensor_that_is_not_rgb8_is_refused() {
        let grey = Tensor::zeros([8, 8], (Kind::Uint8, tch::Device::Cpu));
        assert!(
            encode(&grey, &params())
                .expect_err("is refused")
                .contains("[height, width, 3]")
        );
    }
}
