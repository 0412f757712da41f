//! `--set` overrides and the settings blocks (`pipeline`, `economics`, `hardware`, `report`).

use super::*;

/// Settings each block accepts.
pub fn block_schema(block: &str) -> Option<Vec<ParamSpec>> {
    use spec::Dim;
    Some(match block {
        "pipeline" => vec![
            ParamSpec::default(
                "device",
                Ty::Device,
                Value::Device(Device::Cpu),
                "default device of every stage",
            ),
            ParamSpec::optional("results", Ty::Str, "folder for the Parquet tables"),
            ParamSpec::default("seed", Ty::int(0, i64::MAX), Value::Int(0), "default seed"),
            ParamSpec::optional(
                "threads",
                Ty::int(1, 4096),
                "CPU threads the executor may use",
            ),
            ParamSpec::default(
                "executor",
                Ty::Executor,
                Value::Executor(Executor::Local),
                "where stages run: `local` or `slurm(partition = …, gpus_per_stage = 1, time = …)`",
            ),
        ],
        "economics" => vec![
            ParamSpec::optional(
                "electricity",
                Ty::Quantity(Dim::EnergyPrice),
                "electricity price",
            ),
            ParamSpec::optional(
                "api_request",
                Ty::Quantity(Dim::Money),
                "hosted-API cost of one request",
            ),
            ParamSpec::optional(
                "cpu_power",
                Ty::Quantity(Dim::Power),
                "declared CPU power (estimated energy)",
            ),
            ParamSpec::optional(
                "gpu_power",
                Ty::Quantity(Dim::Power),
                "declared GPU power (estimated energy)",
            ),
        ],
        "hardware" => vec![
            ParamSpec::optional(
                "cpu_power",
                Ty::Quantity(Dim::Power),
                "declared CPU power (estimated energy)",
            ),
            ParamSpec::default(
                "meter",
                Ty::Enum(&["auto", "nvml", "rapl", "estimated"]),
                Value::Symbol("auto".into()),
                "energy meter",
            ),
            ParamSpec::optional(
                "idle_window",
                Ty::Quantity(Dim::Time),
                "idle baseline window",
            ),
            ParamSpec::optional(
                "sample_interval",
                Ty::Quantity(Dim::Time),
                "power sampling interval",
            ),
        ],
        "report" => vec![
            ParamSpec::optional(
                "baseline",
                Ty::Enum(spec::PRECISIONS),
                "reference precision for q_ret",
            ),
            ParamSpec::optional(
                "retention",
                Ty::Float {
                    min: 0.0,
                    max: 100.0,
                },
                "Q_ret (%) a variant must keep at 95 % confidence (q_ret_verdict; default 99, MLPerf's 99 or 99.9)",
            ),
            ParamSpec::optional(
                "metrics",
                Ty::List(Box::new(Ty::Enum(&[
                    "n_break", "ipw", "rho_sys", "c_tax", "q_ret",
                ]))),
                "metrics reported",
            ),
            ParamSpec::optional(
                "compare",
                Ty::Enum(&["edge_eval_paper"]),
                "set each variant beside the EDGE-EVAL paper's Tesla T4 row that matches it (paper.parquet)",
            ),
        ],
        _ => return None,
    })
}

impl Resolver {
    pub(super) fn apply_overrides(&mut self, overrides: &[String]) {
        for text in overrides {
            let file = self.map.add("--set".into(), None, text.clone());
            let Some(eq) = text.find('=') else {
                self.diags.push(
                    Diagnostic::at(
                        Span::new(file, 0, text.len()),
                        format!("--set `{text}` has no `=`"),
                        "expected NAME=VALUE",
                    )
                    .with_hint(
                        "e.g. --set samples=50 or --set economics.electricity=\"0.15 usd/kWh\"",
                    ),
                );
                continue;
            };
            let name = text[..eq].trim();
            let name_span = Span::new(file, 0, eq);
            let mut expr = match parse_expr(file, &text[eq + 1..]) {
                Ok(e) => e,
                Err(ds) => {
                    for mut d in ds.into_vec() {
                        if let Some(p) = &mut d.primary {
                            p.span.start += eq as u32 + 1;
                            p.span.end += eq as u32 + 1;
                        }
                        self.diags.push(d);
                    }
                    continue;
                }
            };
            shift(&mut expr, eq as i64 + 1);
            if let Some((block, key)) = name.split_once('.') {
                let Some(schema) = block_schema(block) else {
                    self.diags.push(
                        Diagnostic::at(
                            name_span,
                            format!("unknown block `{block}` in --set"),
                            "no such block",
                        )
                        .suggest(block, ["pipeline", "economics", "hardware", "report"])
                        .with_hint(
                            "settings are named BLOCK.KEY: pipeline, economics, hardware or report",
                        ),
                    );
                    continue;
                };
                if !schema.iter().any(|p| p.name == key) {
                    self.diags.push(
                        Diagnostic::at(
                            name_span,
                            format!("unknown setting `{name}` in --set"),
                            "no such setting",
                        )
                        .suggest(key, schema.iter().map(|p| p.name))
                        .with_hint(format!(
                            "`{block}` accepts: {}",
                            schema.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
                        )),
                    );
                    continue;
                }
                self.setting_exprs
                    .insert(name.to_string(), (expr, name_span));
            } else {
                match self.globals.get(name) {
                    Some((Global::Let(i), _)) => self.lets[*i].value = expr,
                    _ => {
                        let lets: Vec<&str> =
                            self.lets.iter().map(|l| l.name.name.as_str()).collect();
                        self.diags.push(
                            Diagnostic::at(
                                name_span,
                                format!("--set `{name}`: no `let {name}` in the pipeline"),
                                "nothing to override",
                            )
                            .suggest(name, lets.iter().copied())
                            .with_hint(if lets.is_empty() {
                                "only `let` values and BLOCK.KEY settings can be overridden"
                                    .to_string()
                            } else {
                                format!("overridable values: {}", lets.join(", "))
                            }),
                        );
                    }
                }
            }
        }
    }

    pub(super) fn settings(&mut self) {
        for block in ["pipeline", "economics", "hardware", "report"] {
            for spec in block_schema(block).expect("known block") {
                let key = format!("{block}.{}", spec.name);
                if let Some((expr, _)) = self.setting_exprs.get(&key).cloned() {
                    if let Some(v) = self.typed(&expr, &[], &spec, block) {
                        self.setting_values.insert(key, v);
                    }
                } else if let Default::Value(v) = &spec.default {
                    self.setting_values.insert(key, v.clone());
                }
            }
        }
    }
}
