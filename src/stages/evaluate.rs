//! `evaluate(model, task, samples = N, reference = MODEL)`: generates an answer for each task
//! sample (greedy, batched), scores it, and writes one row per sample plus a summary row (mean,
//! standard error, 95 % bootstrap interval). With `reference`, it also runs the reference model
//! teacher-forced on each prompt + gold answer and reports token-level fidelity against it:
//! KL(P_ref ‖ P_model) per answer position (mean, p99) and top-1 agreement.
//!
//! Resumable: each finished batch of samples is appended to the stage's resume folder; an
//! interrupted evaluation continues from there on the next run (same cache key).

use super::device_param;
use super::{Column, Role, Stage, StageCtx, StageOutput};
use crate::tasks::Sample;
use anyhow::{Context, Result, bail};
use engine::row::TableRow;
use metrics::fidelity::Fidelity;
use metrics::{score, stats};
use runtime::generate::{
    GenOptions, StopReason, continuation_logits, generate_batch, generate_batch_scoring,
};
use runtime::llama::Llama;
use runtime::tokenizer::Tokenizer;
use serde_json::json;
use spec::{Output, ParamSpec, Ty, Value};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;

/// `evaluate`'s parameters as `run` reads them (defaults: [`Evaluate::params`]); `reference`
/// and `judge` are node indices when given.
#[derive(Debug, serde::Deserialize)]
struct Params {
    samples: Option<usize>,
    reference: Option<usize>,
    judge: Option<usize>,
    nli: Option<usize>,
    batch: usize,
}

pub struct Evaluate;

engine::table_row! {
    /// One scored sample (`row = "sample"`), or the summary of a stage's samples
    /// (`evaluate.parquet`).
    pub struct EvaluateRow {
        /// sample | summary
        row: String,
        /// record id (null in the summary)
        sample_id: Option<String>,
        /// exact_match | f1 | rouge_l | judge | nli_entail | nli_not_contradict
        scorer: String,
        /// 0–1 (null: the judge's reply was unparseable); summary: mean over scored samples
        score: Option<f64>,
        /// the judge model's raw reply (score = judge)
        judge_reply: Option<String>,
        /// the NLI classifier's label of (the record's context or document, the output):
        /// entailment | neutral | contradiction (score = nli_*)
        nli_label: Option<String>,
        /// summary: samples whose judgement could not be parsed (not counted as any score)
        unscored: Option<usize>,
        /// secondary score, as the paper reports beside its primary one: ROUGE-L F1 of the
        /// output against the references (0–1); summary: mean
        rouge_l: Option<f64>,
        /// standard error of the mean
        score_se: Option<f64>,
        /// 95 % bootstrap interval, low
        score_ci_lo: Option<f64>,
        /// 95 % bootstrap interval, high
        score_ci_hi: Option<f64>,
        /// samples scored (summary)
        samples: Option<usize>,
        /// blake3 of the prompt token ids
        prompt_digest: Option<String>,
        /// generated text
        output: Option<String>,
        /// prompt tokens
        prompt_tokens: Option<usize>,
        /// generated tokens
        output_tokens: Option<usize>,
        /// end_token | stop_string | max_tokens
        stop: Option<String>,
        /// mean KL(P_reference ‖ P_model) over answer positions (nats)
        kl_mean: Option<f64>,
        /// 99th percentile of the per-position KL (nats)
        kl_p99: Option<f64>,
        /// fraction of answer positions where both models' top token agree
        top1_agreement: Option<f64>,
        /// positions compared
        kl_positions: Option<usize>,
        internal {
            /// The per-position KL of a sample against the reference: feeds the summary (and
            /// an interrupted stage's resume log), emptied in the stored rows.
            kl_values: Vec<f64>,
            /// Positions of `kl_values` where both models' top token agree.
            top1_same: Option<usize>,
        }
    }
}

const RESUME_FILE: &str = "samples.jsonl";

impl Stage for Evaluate {
    engine::stage_meta!(
        super::kind::EVALUATE,
        5,
        Role::Stage,
        Output::Record,
        "score a model on a task (and its fidelity against a reference model)"
    );
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::required("model", Ty::Ref(Output::Model), "model to evaluate"),
            ParamSpec::required("task", Ty::Ref(Output::Task), "task"),
            ParamSpec::optional(
                "samples",
                Ty::int(1, i64::MAX),
                "records evaluated, from the top of the file (default: all)",
            ),
            ParamSpec::optional(
                "reference",
                Ty::Ref(Output::Model),
                "model to measure token-level fidelity against (KL divergence, top-1 agreement)",
            ),
            ParamSpec::optional(
                "judge",
                Ty::Ref(Output::Model),
                "judge model for tasks with score = judge (fixed rubric, strict 1–5 parsing)",
            ),
            ParamSpec::optional(
                "nli",
                Ty::Ref(Output::Model),
                "NLI classifier for tasks with score = nli_entail | nli_not_contradict: a Hugging Face folder of a DeBERTa-v2/v3 sequence classifier (the paper's: MoritzLaurer/DeBERTa-v3-large-mnli-fever-anli-ling-wanli)",
            ),
            ParamSpec::default(
                "batch",
                Ty::int(1, 256),
                Value::Int(4),
                "samples generated together (results equal one at a time)",
            ),
            ParamSpec::setting(
                "seed",
                Ty::int(0, i64::MAX),
                &["pipeline.seed"],
                Some(Value::Int(0)),
                "seed",
            ),
            device_param(),
        ]
    }
    fn threads(&self, _: &BTreeMap<String, Value>) -> usize {
        usize::MAX
    }
    fn table(&self) -> Vec<Column> {
        EvaluateRow::columns()
    }
    fn internal_row_keys(&self) -> &'static [&'static str] {
        EvaluateRow::INTERNAL
    }
    fn explain_failure(&self, e: anyhow::Error, ctx: &StageCtx) -> anyhow::Error {
        super::explain_model_failure(e, ctx)
    }

    fn run(&self, ctx: &StageCtx) -> Result<StageOutput> {
        let dev = runtime::candle_device(ctx.device)?;
        if super::is_synthetic(ctx, "model") {
            bail!(
                "synthetic models have random weights: they are valid for speed, energy and \
                 memory, never for quality, so `evaluate` refuses them"
            );
        }
        let path = super::model_gguf(ctx, "model")?;
        let task = super::task_info(ctx, "task")?;
        let judged = task.scorer == "judge";
        let p: Params = ctx.typed()?;
        let judge = match (judged, p.judge) {
            (true, Some(_)) => Some(super::model_gguf(ctx, "judge")?),
            (true, _) => bail!(
                "the task is scored by `judge`: give the judge model, e.g. \
                 `evaluate(MODEL, TASK, judge = JUDGE_MODEL)`"
            ),
            (false, _) => None,
        };
        let nli = match (score::is_nli(&task.scorer), p.nli) {
            (true, Some(_)) => Some(super::model_files(ctx, "nli")?),
            (true, None) => bail!(
                "the task is scored by `{}`: give the NLI classifier, e.g. `model nli = \
                 hf(\"MoritzLaurer/DeBERTa-v3-large-mnli-fever-anli-ling-wanli\")` and \
                 `evaluate(MODEL, TASK, nli = nli)`",
                task.scorer
            ),
            (false, _) => None,
        };
        if !judged && nli.is_none() && score::score(&task.scorer, "", &[String::new()]).is_none() {
            bail!("scorer `{}` is not available in this build", task.scorer);
        }
        let mut samples = task.load(&task.eval)?;
        if let Some(n) = p.samples {
            samples.truncate(n);
        }
        let batch = p.batch;
        let reference = match p.reference {
            Some(_) => Some(super::model_gguf(ctx, "reference")?),
            None => None,
        };

        // Samples finished by an earlier, interrupted attempt.
        let resume_path = ctx.resume_dir.join(RESUME_FILE);
        let mut done: HashMap<String, EvaluateRow> = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(&resume_path) {
            for line in text.lines() {
                // A torn last line (killed mid-write) is simply redone.
                if let Ok(row) = serde_json::from_str::<EvaluateRow>(line)
                    && let Some(id) = row.sample_id.clone()
                {
                    done.insert(id, row);
                }
            }
        }
        let todo: Vec<&Sample> = samples
            .iter()
            .filter(|s| !done.contains_key(&s.id))
            .collect();
        ctx.progress.set_length(samples.len() as u64);
        ctx.progress
            .set_position((samples.len() - todo.len()) as u64);
        if !done.is_empty() {
            ctx.progress
                .message(&format!("resuming: {} samples already scored", done.len()));
        }

        if !todo.is_empty() {
            let (model, tok) = runtime::load_gguf_on(&path, &dev)?;
            // A model evaluated against itself (the baseline's own row): its logits once.
            let against_itself = reference.as_ref() == Some(&path);
            let reference = match &reference {
                Some(p) if !against_itself => Some(runtime::load_gguf_on(p, &dev)?),
                _ => None,
            };
            let judge = match &judge {
                Some(p) => Some(runtime::load_gguf_on(p, &dev)?),
                None => None,
            };
            let nli = match &nli {
                Some(files) => Some(runtime::nli::Nli::load(files, &dev)?),
                None => None,
            };
            let mut log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&resume_path)
                .with_context(|| format!("cannot write {}", resume_path.display()))?;
            let opts = GenOptions {
                max_tokens: task.max_tokens,
                ..Default::default()
            };
            let reference_model = reference.as_ref().map(|(m, t)| (m, t));
            for chunk in todo.chunks(batch) {
                ctx.check_cancelled()?;
                let prompts = chunk
                    .iter()
                    .map(|s| prompt_ids(&task, &tok, &model, s, task.max_tokens))
                    .collect::<Result<Vec<_>>>()?;
                // With a reference, the gold answers are scored in the prompts' own pass.
                let (gens, answer_logits) = match p.reference {
                    Some(_) => {
                        let answers = chunk
                            .iter()
                            .zip(&prompts)
                            .map(|(s, ids)| {
                                gold_answer(&model, &tok, reference_model, ids, &s.references[0])
                            })
                            .collect::<Result<Vec<_>>>()?;
                        let (g, l) =
                            generate_batch_scoring(&model, &tok, &prompts, &answers, &opts)?;
                        (g, l.into_iter().zip(answers).map(Some).collect())
                    }
                    None => (
                        generate_batch(&model, &tok, &prompts, &opts)?,
                        vec![None; chunk.len()],
                    ),
                };
                let judgements = match &judge {
                    Some((jm, jt)) => Some(judge_batch(jm, jt, &task, chunk, &gens)?),
                    None => None,
                };
                let rows = chunk.iter().zip(&prompts).zip(gens).zip(answer_logits);
                for (i, (((s, ids), g), scored)) in rows.enumerate() {
                    let (sc, judge_reply, nli_label) = match (&judgements, &nli) {
                        (Some(j), _) => (score::parse_judgement(&j[i]), Some(j[i].clone()), None),
                        (None, Some(nli)) => {
                            let premise = s.source.as_deref().with_context(|| {
                                format!("sample `{}` has no context or document for NLI", s.id)
                            })?;
                            let label = nli.infer(premise, g.text.trim())?.label;
                            (score::nli_score(&task.scorer, &label), None, Some(label))
                        }
                        (None, None) => (
                            score::score(&task.scorer, g.text.trim(), &s.references),
                            None,
                            None,
                        ),
                    };
                    let digest = blake3::hash(
                        &ids.iter()
                            .flat_map(|i| i.to_le_bytes())
                            .collect::<Vec<u8>>(),
                    );
                    let stop = match g.stop {
                        StopReason::EndToken => "end_token",
                        StopReason::StopString => "stop_string",
                        StopReason::MaxTokens => "max_tokens",
                    };
                    let mut row = EvaluateRow {
                        row: "sample".into(),
                        sample_id: Some(s.id.clone()),
                        scorer: task.scorer.clone(),
                        score: sc,
                        rouge_l: score::score("rouge_l", g.text.trim(), &s.references),
                        judge_reply,
                        nli_label,
                        prompt_digest: Some(digest.to_hex().to_string()),
                        output_tokens: Some(g.tokens.len()),
                        output: Some(g.text),
                        prompt_tokens: Some(g.prompt_tokens),
                        stop: Some(stop.into()),
                        ..Default::default()
                    };
                    if let Some((logits, answer)) = scored {
                        let f = fidelity(logits, reference_model, ids, &answer)?;
                        row.kl_mean = f.mean_kl();
                        row.kl_p99 = f.p99_kl();
                        row.top1_agreement = f.top1_agreement();
                        row.kl_positions = Some(f.positions());
                        row.top1_same = Some(f.top1_same);
                        // JSON (the resume log) has no infinity: an infinite per-position KL
                        // (a token the variant rules out) stays in this sample's mean only.
                        row.kl_values = f.kl.into_iter().filter(|x| x.is_finite()).collect();
                    }
                    writeln!(log, "{}", serde_json::to_string(&row)?)?;
                    done.insert(s.id.clone(), row);
                }
                log.flush()?;
                ctx.progress.set_position(done.len() as u64);
            }
        }

        let mut rows: Vec<EvaluateRow> =
            samples.iter().filter_map(|s| done.remove(&s.id)).collect();
        let summary = summary_row(&task.scorer, &rows);
        for r in &mut rows {
            // Per-position values feed the summary only; the table keeps the per-sample stats.
            r.kl_values.clear();
            r.top1_same = None;
        }
        let record = json!({
            "scorer": task.scorer,
            "mean": summary.score,
            "samples": rows.len(),
        });
        rows.push(summary);
        Ok(StageOutput {
            files: vec![],
            record,
            rows: rows.iter().map(TableRow::to_row).collect(),
        })
    }
}

/// The judge model's replies (greedy, a few tokens) to the fixed rubric for each sample.
fn judge_batch(
    judge: &Llama,
    tok: &Tokenizer,
    task: &super::TaskInfo,
    samples: &[&Sample],
    gens: &[runtime::generate::Generation],
) -> Result<Vec<String>> {
    let mut prompts = vec![];
    for (s, g) in samples.iter().zip(gens) {
        let input: Vec<&str> = s.messages.iter().map(|m| m.content.as_str()).collect();
        let text = score::JUDGE_RUBRIC
            .replace("{input}", &input.join("\n\n"))
            .replace("{reference}", &s.references[0])
            .replace("{candidate}", g.text.trim());
        let msg = runtime::tokenizer::Message {
            role: "user".into(),
            content: text,
        };
        // Through the judge's chat template, with what the task pins (its date).
        prompts.push(tok.chat_ids_with(&[msg], &task.template_vars())?);
    }
    let opts = GenOptions {
        max_tokens: 4,
        ..Default::default()
    };
    Ok(generate_batch(judge, tok, &prompts, &opts)?
        .into_iter()
        .map(|g| g.text)
        .collect())
}

/// The prompt of a sample, checked against the context.
fn prompt_ids(
    task: &super::TaskInfo,
    tok: &Tokenizer,
    model: &Llama,
    s: &Sample,
    max_tokens: usize,
) -> Result<Vec<u32>> {
    let ids = task.prompt_ids(tok, &s.messages)?;
    if ids.len() + max_tokens > model.cfg.context {
        bail!(
            "sample `{}` needs {} prompt + {max_tokens} generated tokens, more than the model's \
             context of {}",
            s.id,
            ids.len(),
            model.cfg.context
        );
    }
    Ok(ids)
}

/// The gold answer's tokens, as many as fit the context after `prompt` (of the model and of
/// its reference, which must share its vocabulary).
fn gold_answer(
    model: &Llama,
    tok: &Tokenizer,
    reference: Option<(&Llama, &Tokenizer)>,
    prompt: &[u32],
    answer: &str,
) -> Result<Vec<u32>> {
    let mut answer_ids = tok.encode_plain(answer)?;
    let mut context = model.cfg.context;
    if let Some((r, rt)) = reference {
        if r.cfg.vocab != model.cfg.vocab || rt.encode_plain(answer)? != answer_ids {
            bail!(
                "the reference model has another vocabulary: token-level KL needs the same \
                 tokenizer"
            );
        }
        context = context.min(r.cfg.context);
    }
    answer_ids.truncate(context.saturating_sub(prompt.len()));
    Ok(answer_ids)
}

/// Teacher-forced fidelity on prompt + gold answer at the positions that predict answer tokens:
/// the model's logits there (`logits`, from its generation pass) against the reference's, from
/// a pass of the reference's own. `reference` None: the model is its own reference (the same
/// file), so its logits serve both.
fn fidelity(
    logits: Vec<Vec<f32>>,
    reference: Option<(&Llama, &Tokenizer)>,
    prompt: &[u32],
    answer: &[u32],
) -> Result<Fidelity> {
    let other = match reference {
        Some((r, _)) => Some(continuation_logits(r, prompt, answer)?),
        None => None,
    };
    let b = other.as_ref().unwrap_or(&logits);
    let mut f = Fidelity::default();
    for (p, q) in b.iter().zip(&logits) {
        f.add(p, q);
    }
    Ok(f)
}

/// Mean, standard error and bootstrap interval of the sample scores; fidelity pooled over every
/// answer position of every sample.
fn summary_row(scorer: &str, rows: &[EvaluateRow]) -> EvaluateRow {
    let scores: Vec<f64> = rows.iter().filter_map(|r| r.score).collect();
    let ci = stats::mean_interval(&scores);
    let mut f = Fidelity::default();
    for r in rows {
        f.kl.extend(&r.kl_values);
        f.top1_same += r.top1_same.unwrap_or(0);
    }
    let compared = f.positions() > 0;
    EvaluateRow {
        row: "summary".into(),
        scorer: scorer.into(),
        samples: Some(scores.len()),
        unscored: Some(rows.len() - scores.len()),
        score: stats::mean(&scores),
        rouge_l: stats::mean(&rows.iter().filter_map(|r| r.rouge_l).collect::<Vec<_>>()),
        score_se: stats::std_error(&scores),
        score_ci_lo: ci.map(|c| c.0),
        score_ci_hi: ci.map(|c| c.1),
        kl_mean: f.mean_kl().filter(|_| compared),
        kl_p99: f.p99_kl().filter(|_| compared),
        top1_agreement: f.top1_agreement(),
        kl_positions: compared.then(|| f.positions()),
        output_tokens: Some(rows.iter().filter_map(|r| r.output_tokens).sum()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_parameters_fit_the_declared_ones_and_their_defaults() {
        let mut params = engine::stage::default_params(&Evaluate.params());
        let p: Params = engine::stage::typed_params(&params).unwrap();
        assert_eq!(
            (p.samples, p.reference, p.judge, p.nli, p.batch),
            (None, None, None, None, 4)
        );
        params.insert("reference".into(), Value::Node(3));
        params.insert("samples".into(), Value::Int(20));
        let p: Params = engine::stage::typed_params(&params).unwrap();
        assert_eq!((p.samples, p.reference), (Some(20), Some(3)));
    }
}
