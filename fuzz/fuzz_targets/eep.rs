//! The `.eep` parser and resolver on arbitrary text: every input ends in a pipeline or in
//! diagnostics that render — never a panic, a hang or unbounded memory.
#![no_main]

use lang::{Role, Signature, Signatures};
use libfuzzer_sys::fuzz_target;
use spec::{Dim, Format, Output, ParamSpec, Ty, Value};
use std::sync::LazyLock;

/// Stage kinds shaped like edge-eval's own (sources, a quantizer, a trainer, measurers), so that
/// calls, references, units, lists and settings all reach binding.
static SIGNATURES: LazyLock<Signatures> = LazyLock::new(|| {
    let sig = |kind, role, output, params| Signature {
        kind,
        role,
        output,
        summary: "",
        params,
    };
    let model = || ParamSpec::required("model", Ty::Ref(Output::Model), "");
    let task = || ParamSpec::required("task", Ty::Ref(Output::Task), "");
    let device = || {
        ParamSpec::setting(
            "device",
            Ty::Device,
            &["pipeline.device"],
            Some(Value::Device(spec::Device::Cpu)),
            "",
        )
    };
    Signatures::new(vec![
        sig(
            "path",
            Role::Source,
            Output::Model,
            vec![ParamSpec::required("path", Ty::Str, "")],
        ),
        sig(
            "pip",
            Role::Source,
            Output::Model,
            vec![
                ParamSpec::required("package", Ty::Text(Format::PinnedRequirement), ""),
                ParamSpec::required("file", Ty::Str, ""),
                ParamSpec::required("sha256", Ty::Text(Format::Sha256), ""),
                ParamSpec::optional(
                    "parts",
                    Ty::List(Box::new(Ty::Text(Format::PinnedRequirement))),
                    "",
                ),
            ],
        ),
        sig(
            "synthetic",
            Role::Source,
            Output::Model,
            vec![
                ParamSpec::required("arch", Ty::Str, ""),
                ParamSpec::default("seed", Ty::int(0, i64::MAX), Value::Int(0), ""),
            ],
        ),
        sig(
            "jsonl",
            Role::Source,
            Output::Task,
            vec![
                ParamSpec::required("path", Ty::Str, ""),
                ParamSpec::required(
                    "kind",
                    Ty::Enum(&["extractive_qa", "summarize", "chat"]),
                    "",
                ),
                ParamSpec::optional("max_tokens", Ty::int(1, 4096), ""),
            ],
        ),
        sig(
            "quantize",
            Role::Stage,
            Output::Model,
            vec![
                model(),
                ParamSpec::required("precision", Ty::Enum(spec::PRECISIONS), ""),
                device(),
            ],
        ),
        sig(
            "finetune",
            Role::Stage,
            Output::Model,
            vec![
                model(),
                task(),
                ParamSpec::default("rank", Ty::int(1, 4096), Value::Int(16), ""),
                ParamSpec::optional("steps", Ty::int(1, 1_000_000), ""),
                device(),
            ],
        ),
        sig(
            "measure",
            Role::Stage,
            Output::Record,
            vec![
                model(),
                task(),
                ParamSpec::default(
                    "batch",
                    Ty::OneOrList(Box::new(Ty::int(1, 4096))),
                    Value::List(vec![Value::Int(1)]),
                    "",
                ),
                ParamSpec::setting(
                    "idle_window",
                    Ty::Quantity(Dim::Time),
                    &["hardware.idle_window"],
                    None,
                    "",
                ),
                device(),
            ],
        ),
        sig(
            "test_stage",
            Role::Stage,
            Output::Record,
            vec![
                ParamSpec::optional("input", Ty::AnyRef, ""),
                ParamSpec::optional("emit", Ty::Str, ""),
            ],
        ),
    ])
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Imports of the fuzzer's own files would read whatever lies around: resolve what the text
    // itself says, and `--set` overrides parsed by the same code.
    match lang::load_text("fuzz.eep", text, &["x=1".into()], &SIGNATURES) {
        Ok(_) => {}
        Err((diags, map)) => {
            let _ = diags.render(&map);
        }
    }
});
