use super::*;

#[test]
fn sampler_names_round_trip() {
    for kind in SamplerKind::ALL {
        assert_eq!(kind.name().parse::<SamplerKind>().ok(), Some(kind));
        assert_eq!(kind.to_string(), kind.name());
    }
}

#[test]
fn unknown_sampler_lists_the_accepted_names() {
    let error = "k_lms"
        .parse::<SamplerKind>()
        .expect_err("k_lms is not a sampler");
    assert_eq!(
        error.to_string(),
        "unknown sampler `k_lms`; use one of: euler, euler_a, dpmpp_2m_karras, ddim"
    );
}

#[test]
fn sampler_names_are_case_sensitive() {
    assert!("Euler".parse::<SamplerKind>().is_err());
}

#[test]
fn numpy_linspace_keeps_the_endpoints() {
    assert_eq!(
        tables::linspace(0.0, 999.0, 4),
        vec![0.0, 333.0, 666.0, 999.0]
    );
    assert_eq!(tables::linspace(1.0, 0.5, 1), vec![1.0]);
}

#[test]
fn interp_hits_table_entries_exactly() {
    let table = [1.0_f32, 2.0, 4.0];
    assert_eq!(tables::interp(1.0, &table), 2.0);
    assert_eq!(tables::interp(1.5, &table), 3.0);
    assert_eq!(tables::interp(7.0, &table), 4.0);
}

#[test]
fn spacing_defaults_follow_each_diffusers_class() {
    let sd15 = ScheduleConfig::sd15();
    assert_eq!(
        sd15.spacing_for(SamplerKind::Euler),
        TimestepSpacing::Linspace
    );
    assert_eq!(
        sd15.spacing_for(SamplerKind::Ddim),
        TimestepSpacing::Leading
    );
    let sdxl = ScheduleConfig::sdxl();
    assert_eq!(
        sdxl.spacing_for(SamplerKind::Euler),
        TimestepSpacing::Leading
    );
}
