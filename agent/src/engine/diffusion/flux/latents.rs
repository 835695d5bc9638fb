//! The latent bookkeeping of diffusers 0.42.1's `FluxPipeline`
//! (`src/diffusers/pipelines/flux/pipeline_flux.py`): the latent size for an image size, 2×2
//! packing of latents into tokens (`_pack_latents`) and back (`_unpack_latents`), and the
//! position ids of image tokens (`_prepare_latent_image_ids`) and text tokens (zeros).

use tch::{Device, Kind, Tensor};

use super::FluxError;

/// The latent height and width for an image of `height` × `width` pixels: `2 · ⌊px / (2 ·
/// vae_scale_factor)⌋`, as `FluxPipeline.prepare_latents` rounds down to even sizes (8 is
/// FLUX.1's `vae_scale_factor`).
pub fn latent_size(height: i64, width: i64, vae_scale_factor: i64) -> (i64, i64) {
    let even = |px: i64| 2 * (px / (2 * vae_scale_factor));
    (even(height), even(width))
}

/// `_pack_latents`: `[batch, channels, height, width]` latents as `[batch, (height/2) ·
/// (width/2), channels · 4]` tokens, one per 2×2 patch, row-major, each patch channel-major.
pub fn pack_latents(latents: &Tensor) -> Result<Tensor, FluxError> {
    let size = latents.size();
    let &[batch, channels, height, width] = size.as_slice() else {
        return Err(FluxError::Input(format!(
            "latents have shape {size:?}; pass [batch, channels, height, width]"
        )));
    };
    if height % 2 != 0 || width % 2 != 0 {
        return Err(FluxError::Input(format!(
            "latents are {height}×{width}; Flux packs 2×2 patches, so both must be even (see \
             latent_size)"
        )));
    }
    Ok(latents
        .reshape([batch, channels, height / 2, 2, width / 2, 2])
        .permute([0, 2, 4, 1, 3, 5])
        .reshape([batch, (height / 2) * (width / 2), channels * 4]))
}

/// `_unpack_latents`, the inverse of [`pack_latents`]: `[batch, tokens, channels · 4]` back to
/// `[batch, channels, height, width]`, `height` and `width` the latent size.
pub fn unpack_latents(packed: &Tensor, height: i64, width: i64) -> Result<Tensor, FluxError> {
    let size = packed.size();
    let tokens = (height / 2) * (width / 2);
    let fits = matches!(size.as_slice(), &[_, t, c] if t == tokens && c % 4 == 0);
    if !fits || height % 2 != 0 || width % 2 != 0 || height <= 0 || width <= 0 {
        return Err(FluxError::Input(format!(
            "packed latents have shape {size:?}, which do not unpack to {height}×{width}; pass \
             [batch, {tokens}, 4 · channels] and the even latent size they were packed from"
        )));
    }
    let (batch, width4) = (size[0], size[2]);
    Ok(packed
        .reshape([batch, height / 2, width / 2, width4 / 4, 2, 2])
        .permute([0, 3, 1, 4, 2, 5])
        .reshape([batch, width4 / 4, height, width]))
}

/// `_prepare_latent_image_ids`: the position ids `[height · width, 3]` (f32, CPU) of the packed
/// image tokens, `(0, row, column)` row-major. `height` and `width` are the packed grid, half
/// the latent size.
pub fn latent_image_ids(height: i64, width: i64) -> Tensor {
    let options = (Kind::Float, Device::Cpu);
    let rows = Tensor::arange(height, options)
        .unsqueeze(1)
        .expand([height, width], false);
    let columns = Tensor::arange(width, options)
        .unsqueeze(0)
        .expand([height, width], false);
    Tensor::stack(
        &[Tensor::zeros([height, width], options), rows, columns],
        -1,
    )
    .reshape([height * width, 3])
}

/// The position ids `[tokens, 3]` (f32, CPU) of the text tokens: all zeros, as
/// `FluxPipeline.encode_prompt` makes them.
pub fn text_ids(tokens: i64) -> Tensor {
    Tensor::zeros([tokens, 3], (Kind::Float, Device::Cpu))
}
