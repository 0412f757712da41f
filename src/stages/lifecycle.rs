//! What the lifecycle stages share: the precision list and the device parameter.

use crate::spec::{ParamSpec, Ty, Value};

pub const PRECISIONS: &[&str] = &[
    "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k",
];

pub(super) fn device_param() -> ParamSpec {
    ParamSpec::setting(
        "device",
        Ty::Device,
        &["pipeline.device"],
        Some(Value::Device(crate::spec::Device::Cpu)),
        "where the stage runs",
    )
}
