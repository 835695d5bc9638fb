//! The original LDM names of the UNet, as SD 1.5 and SDXL single-file checkpoints keep them
//! under `model.diffusion_model.`. The mapping is the inverse of diffusers 0.42.1
//! `convert_ldm_unet_checkpoint` (`src/diffusers/loaders/single_file_utils.py`):
//! `DIFFUSERS_TO_LDM_MAPPING["unet"]` (`time_embed.{0,2}` ↔ `time_embedding.linear_{1,2}`,
//! `label_emb.0.{0,2}` ↔ `add_embedding.linear_{1,2}`, `input_blocks.0.0` ↔ `conv_in`,
//! `out.{0,2}` ↔ `conv_norm_out` / `conv_out`); down level `i`, layer `j` is
//! `input_blocks.{1 + i·(L+1) + j}` (`.0` the resnet, `.1` the transformer, `.0.op` the
//! downsampler in slot `j = L`); the mid block is `middle_block.{0,1,2}` (resnet, transformer,
//! resnet); up level `i`, layer `j` is `output_blocks.{i·(L+1) + j}` with the upsampler in the
//! last layer as `.1.conv`, or `.2.conv` after a transformer. Resnet parts follow
//! `update_unet_resnet_ldm_to_diffusers` (`in_layers.{0,2}` ↔ `norm1` / `conv1`,
//! `out_layers.{0,3}` ↔ `norm2` / `conv2`, `emb_layers.1` ↔ `time_emb_proj`, `skip_connection`
//! ↔ `conv_shortcut`); transformer names are the same in both layouts.
//! `scripts/fixtures/diffusion_unet.py` runs that diffusers function on its fixtures to confirm
//! the inverse it writes.

/// Renames diffusers UNet tensor names to LDM ones for one config.
#[derive(Debug)]
pub(crate) struct LdmNames {
    /// Resnets per down level (`L`), the same for all levels in LDM checkpoints.
    pub(super) layers: usize,
    /// Whether up level `i` has transformers (moving its upsampler from `.1` to `.2`).
    pub(super) up_attention: Vec<bool>,
}

impl LdmNames {
    /// The LDM name of diffusers' `name`, or `name` itself where no rule applies.
    pub(crate) fn rename(&self, name: &str) -> String {
        self.try_rename(name).unwrap_or_else(|| name.to_owned())
    }

    fn try_rename(&self, name: &str) -> Option<String> {
        let top = [
            ("time_embedding.linear_1.", "time_embed.0."),
            ("time_embedding.linear_2.", "time_embed.2."),
            ("add_embedding.linear_1.", "label_emb.0.0."),
            ("add_embedding.linear_2.", "label_emb.0.2."),
            ("conv_in.", "input_blocks.0.0."),
            ("conv_norm_out.", "out.0."),
            ("conv_out.", "out.2."),
        ];
        if let Some((from, to)) = top.iter().find(|(from, _)| name.starts_with(from)) {
            return Some(format!("{to}{}", &name[from.len()..]));
        }
        if let Some(mid) = name.strip_prefix("mid_block.") {
            let parts: Vec<&str> = mid.splitn(3, '.').collect();
            let &[kind, item, rest] = parts.as_slice() else {
                return None;
            };
            let item = item.parse::<usize>().ok()?;
            return match kind {
                "resnets" => Some(format!("middle_block.{}.{}", 2 * item, resnet(rest))),
                "attentions" => Some(format!("middle_block.{}.{rest}", 1 + item)),
                _ => None,
            };
        }
        let span = self.layers + 1;
        let parts: Vec<&str> = name.splitn(5, '.').collect();
        let (group, index, kind, item) = match parts.as_slice() {
            [group, index, kind, item, _] => (*group, index.parse::<usize>().ok()?, *kind, *item),
            _ => return None,
        };
        let rest = parts[4];
        let item = item.parse::<usize>().ok()?;
        let (block, part) = match (group, kind) {
            ("down_blocks", "resnets") => (
                format!("input_blocks.{}", 1 + index * span + item),
                format!("0.{}", resnet(rest)),
            ),
            ("down_blocks", "attentions") => (
                format!("input_blocks.{}", 1 + index * span + item),
                format!("1.{rest}"),
            ),
            ("down_blocks", "downsamplers") => (
                format!("input_blocks.{}", 1 + index * span + self.layers),
                format!(
                    "0.{}",
                    rest.strip_prefix("conv.").map(|r| format!("op.{r}"))?
                ),
            ),
            ("up_blocks", "resnets") => (
                format!("output_blocks.{}", index * span + item),
                format!("0.{}", resnet(rest)),
            ),
            ("up_blocks", "attentions") => (
                format!("output_blocks.{}", index * span + item),
                format!("1.{rest}"),
            ),
            ("up_blocks", "upsamplers") => {
                let slot = if *self.up_attention.get(index)? { 2 } else { 1 };
                (
                    format!("output_blocks.{}", index * span + self.layers),
                    format!("{slot}.{rest}"),
                )
            }
            _ => return None,
        };
        Some(format!("{block}.{part}"))
    }
}

/// A resnet part's LDM name (`norm1.weight` → `in_layers.0.weight`).
fn resnet(rest: &str) -> String {
    let parts = [
        ("norm1.", "in_layers.0."),
        ("conv1.", "in_layers.2."),
        ("norm2.", "out_layers.0."),
        ("conv2.", "out_layers.3."),
        ("time_emb_proj.", "emb_layers.1."),
        ("conv_shortcut.", "skip_connection."),
    ];
    match parts.iter().find(|(from, _)| rest.starts_with(from)) {
        Some((from, to)) => format!("{to}{}", &rest[from.len()..]),
        None => rest.to_owned(),
    }
}
