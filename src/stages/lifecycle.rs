//! The lifecycle stage still to be implemented: `finetune` (issue #6), plus what the stages share
//! (the precision list, the device parameter).
//!
//! Its parameters are declared here so that pipelines are checked, planned and cached now; until
//! fine-tuning lands `run` fails with a clear error, recorded like any other failure.

use super::{Role, Stage, StageCtx, StageOutput};
use crate::spec::{Output, ParamSpec, Ty, Value};
use anyhow::{Result, bail};
use std::collections::BTreeMap;

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

fn not_yet(kind: &str, issue: u32) -> Result<StageOutput> {
    bail!(
        "the `{kind}` stage is not available in this build of edge-eval yet (it arrives with \
         issue #{issue}); `check` and `plan` work, and every other stage's results are kept"
    )
}

pub struct Finetune;
impl Stage for Finetune {
    stage_meta!(
        "finetune",
        1,
        Role::Stage,
        Output::Model,
        "LoRA / QLoRA fine-tuning on a task's train split"
    );
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::required("model", Ty::Ref(Output::Model), "base model"),
            ParamSpec::required(
                "task",
                Ty::Ref(Output::Task),
                "task whose train split is used",
            ),
            ParamSpec::default(
                "method",
                Ty::Enum(&["lora", "qlora"]),
                Value::Symbol("lora".into()),
                "adaptation method",
            ),
            ParamSpec::default("rank", Ty::int(1, 4096), Value::Int(16), "LoRA rank r"),
            ParamSpec::default(
                "alpha",
                Ty::float(0.0, 1e6),
                Value::Float(16.0),
                "LoRA alpha",
            ),
            ParamSpec::default(
                "dropout",
                Ty::float(0.0, 0.99),
                Value::Float(0.05),
                "LoRA dropout",
            ),
            ParamSpec::default(
                "lr",
                Ty::float(0.0, 10.0),
                Value::Float(2e-4),
                "learning rate",
            ),
            ParamSpec::optional("epochs", Ty::int(1, 1000), "epochs over the train rows"),
            ParamSpec::optional(
                "steps",
                Ty::int(1, 10_000_000),
                "optimizer steps (instead of epochs)",
            ),
            ParamSpec::optional("rows", Ty::int(1, i64::MAX), "train rows used"),
            ParamSpec::default("batch", Ty::int(1, 4096), Value::Int(1), "batch size"),
            ParamSpec::default(
                "grad_accum",
                Ty::int(1, 4096),
                Value::Int(1),
                "gradient accumulation steps",
            ),
            ParamSpec::default(
                "max_seq",
                Ty::int(8, 1 << 20),
                Value::Int(512),
                "max sequence length",
            ),
            ParamSpec::setting(
                "seed",
                Ty::int(0, i64::MAX),
                &["pipeline.seed"],
                Some(Value::Int(0)),
                "seed",
            ),
            ParamSpec::default(
                "dtype",
                Ty::Enum(&["f32", "bf16", "f16"]),
                Value::Symbol("f32".into()),
                "adapter dtype",
            ),
            ParamSpec::default(
                "targets",
                Ty::List(Box::new(Ty::Enum(&[
                    "q", "k", "v", "o", "gate", "up", "down",
                ]))),
                Value::List(
                    ["q", "k", "v", "o", "gate", "up", "down"]
                        .iter()
                        .map(|s| Value::Symbol(s.to_string()))
                        .collect(),
                ),
                "projections that get adapters",
            ),
            device_param(),
        ]
    }
    fn measuring(&self, _: &BTreeMap<String, Value>) -> bool {
        true
    }
    fn run(&self, _: &StageCtx) -> Result<StageOutput> {
        not_yet(self.kind(), 6)
    }
}
