//! Any JSON a consumer may send as a job's params, for each kind of model: parsing never
//! panics, and params that parse survive the trip through the database's JSON unchanged.
#![no_main]

use infermine_protocol::{JobParams, ModelKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    for kind in [ModelKind::Llm, ModelKind::Image, ModelKind::Synthetic] {
        if let Ok(params) = JobParams::from_json(kind, value.clone()) {
            assert_eq!(params.kind(), kind);
            let stored = serde_json::to_string(&params).expect("params encode");
            let back: JobParams = serde_json::from_str(&stored).expect("stored params decode");
            assert_eq!(back, params, "params survive the database");
        }
    }
});
