//! Slurm as a [`Scheduler`]: `sbatch` per stage (dependencies `afterok`, dependents of a failed
//! job cancelled by Slurm itself), `squeue` for the queue, `scancel` to cancel. A stage on
//! `cuda(N)` asks for `--gres=gpu:G` (G = `gpus_per_stage`): Slurm gives a job its GPUs to
//! itself, and the job finds them through `CUDA_VISIBLE_DEVICES`. A measuring stage on `cpu`
//! asks for the whole node (`--exclusive`), as a local run gives it the whole machine.

use super::Resources;
use super::batch::{JobState, Scheduler, Submission};
use anyhow::{Context, Result, bail};
use spec::{Device, SlurmOptions};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Slurm {
    pub options: SlurmOptions,
}

impl Slurm {
    /// Checks that the Slurm commands are here and talk to a controller.
    pub fn connect(options: SlurmOptions) -> Result<Slurm> {
        let out = Command::new("sinfo").args(["-h", "-o", "%P"]).output();
        match out {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "`sinfo` is not installed here: the slurm executor submits from a host with the \
                 Slurm client commands (sbatch, squeue, scancel) and a cache folder the nodes mount"
            ),
            Err(e) => Err(e).context("cannot run sinfo"),
            Ok(o) if !o.status.success() => bail!(
                "sinfo failed: {} (is the Slurm controller reachable? SLURM_CONF={})",
                String::from_utf8_lossy(&o.stderr).trim(),
                std::env::var("SLURM_CONF").unwrap_or_else(|_| "unset".into())
            ),
            Ok(_) => Ok(Slurm { options }),
        }
    }

    /// CPUs a stage asks for: its own thread count, or `cpus_per_stage` for one that uses all.
    fn cpus(&self, need: &Resources) -> usize {
        if need.threads == usize::MAX {
            self.options.cpus_per_stage as usize
        } else {
            need.threads.max(1)
        }
    }

    /// `sbatch` arguments for a job (without the command), and each task's log file.
    pub fn sbatch_args(&self, job: &Submission) -> (Vec<String>, Vec<PathBuf>) {
        let o = &self.options;
        let tasks = job.stage_ids.len();
        let first = job.stage_ids.first().copied().unwrap_or_default();
        let (name, output, logs) = if tasks == 1 {
            (
                format!("ee:{first}"),
                job.logs[0].clone(),
                job.logs.to_vec(),
            )
        } else {
            // One output pattern for the array (`%a` = task index) next to the stages' logs.
            let dir = job.logs[0].parent().unwrap_or(Path::new("."));
            let stem = job.logs[0]
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            let pattern = dir.join(format!("array{stem}-%a.log"));
            let logs = (0..tasks)
                .map(|k| dir.join(format!("array{stem}-{k}.log")))
                .collect();
            (format!("ee:{first} +{}", tasks - 1), pattern, logs)
        };
        let mut a = vec![
            "--parsable".to_string(),
            format!("--job-name={name}"),
            format!("--output={}", output.display()),
        ];
        let whole_node = job.measuring && job.need.device == Device::Cpu;
        if !whole_node {
            a.push(format!("--cpus-per-task={}", self.cpus(&job.need)));
        }
        if tasks > 1 {
            a.push(format!("--array=0-{}", tasks - 1));
        }
        if let Device::Cuda(_) = job.need.device
            && o.gpus_per_stage > 0
        {
            a.push(format!("--gres=gpu:{}", o.gpus_per_stage));
        }
        if whole_node {
            a.push("--exclusive".into());
        }
        if !job.after.is_empty() {
            a.push(format!("--dependency=afterok:{}", job.after.join(":")));
            a.push("--kill-on-invalid-dep=yes".into());
        }
        if let Some(p) = &o.partition {
            a.push(format!("--partition={p}"));
        }
        if let Some(t) = &o.time {
            a.push(format!("--time={t}"));
        }
        if let Some(acc) = &o.account {
            a.push(format!("--account={acc}"));
        }
        a.extend(o.sbatch_args.iter().cloned());
        (a, logs)
    }
}

/// `'…'` for sh, with embedded quotes escaped.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Scheduler for Slurm {
    fn name(&self) -> &'static str {
        "Slurm"
    }

    fn placement(&self, need: &Resources) -> String {
        let mut parts = vec![];
        if need.exclusive && need.device == Device::Cpu {
            parts.push("whole node".to_string());
        } else {
            parts.push(format!("{} CPU", self.cpus(need)));
        }
        if let Device::Cuda(_) = need.device {
            parts.push(format!("{} GPU", self.options.gpus_per_stage));
        }
        let partition = self
            .options
            .partition
            .as_ref()
            .map(|p| format!(" on {p}"))
            .unwrap_or_default();
        format!("slurm{partition} ({})", parts.join(", "))
    }

    fn submit(&mut self, job: &Submission) -> Result<Vec<(String, PathBuf)>> {
        let wrap = format!(
            "exec {}",
            job.command
                .iter()
                .map(|c| sh_quote(c))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let (args, logs) = self.sbatch_args(job);
        let out = Command::new("sbatch")
            .args(args)
            .arg(format!("--wrap={wrap}"))
            .output()
            .context("cannot run sbatch")?;
        if !out.status.success() {
            bail!("sbatch: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        // `--parsable` prints "id" or "id;cluster".
        let text = String::from_utf8_lossy(&out.stdout);
        let id = text
            .trim()
            .split(';')
            .next()
            .unwrap_or_default()
            .to_string();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
            bail!("sbatch printed no job id (stdout: {:?})", text.trim());
        }
        // An array's tasks are `ID_K` to squeue, scancel and dependencies.
        Ok(if logs.len() == 1 {
            vec![(id, logs[0].clone())]
        } else {
            logs.into_iter()
                .enumerate()
                .map(|(k, log)| (format!("{id}_{k}"), log))
                .collect()
        })
    }

    fn states(&mut self, ids: &[String]) -> Result<BTreeMap<String, JobState>> {
        if ids.is_empty() {
            return Ok(BTreeMap::new());
        }
        // All of this user's jobs in every state (finished ones stay listed for MinJobAge), one
        // line per array task (-r); asking for ids Slurm has already forgotten would fail.
        let out = Command::new("squeue")
            .args(["-h", "--me", "-r", "-t", "all", "-o", "%i|%T|%r"])
            .output()
            .context("cannot run squeue")?;
        if !out.status.success() {
            bail!("squeue: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let wanted: std::collections::BTreeSet<&str> = ids.iter().map(String::as_str).collect();
        Ok(parse_squeue(&String::from_utf8_lossy(&out.stdout))
            .into_iter()
            .filter(|(id, _)| wanted.contains(id.as_str()))
            .collect())
    }

    fn cancel(&mut self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let out = Command::new("scancel")
            .args(ids)
            .output()
            .context("cannot run scancel")?;
        if !out.status.success() {
            bail!("scancel: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }
}

/// `squeue -o "%i|%T|%r"` lines → job states.
fn parse_squeue(text: &str) -> BTreeMap<String, JobState> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.trim().split('|');
            let (id, state, reason) = (f.next()?, f.next()?, f.next().unwrap_or(""));
            let st = match state {
                "PENDING" | "CONFIGURING" | "REQUEUED" | "REQUEUE_HOLD" | "RESIZING"
                | "SUSPENDED" => JobState::Queued(reason.to_string()),
                "RUNNING" | "COMPLETING" | "STAGE_OUT" | "SIGNALING" => JobState::Running,
                _ => JobState::Ended {
                    state: state.to_string(),
                    reason: reason.to_string(),
                },
            };
            Some((id.to_string(), st))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeue_states_are_read() {
        let q = parse_squeue(
            "12|PENDING|Dependency\n13|RUNNING|None\n14|FAILED|NonZeroExitCode\n15|CANCELLED|DependencyNeverSatisfied\n",
        );
        assert_eq!(q["12"], JobState::Queued("Dependency".into()));
        assert_eq!(q["13"], JobState::Running);
        assert_eq!(
            q["14"],
            JobState::Ended {
                state: "FAILED".into(),
                reason: "NonZeroExitCode".into()
            }
        );
        assert_eq!(q.len(), 4);
    }

    #[test]
    fn gpu_stages_ask_for_gpus_and_cpu_measurements_for_the_node() {
        let s = Slurm {
            options: SlurmOptions {
                partition: Some("gpu".into()),
                time: Some("04:00:00".into()),
                ..SlurmOptions::default()
            },
        };
        let logs = [PathBuf::from("/c/jobs/r/3.log")];
        let job = |device, measuring, after: Vec<String>| Submission {
            stage_ids: vec!["m[q4_0]"],
            command: vec![],
            after,
            need: Resources {
                threads: 2,
                device,
                exclusive: measuring,
            },
            measuring,
            logs: &logs,
        };
        let (gpu, _) = s.sbatch_args(&job(Device::Cuda(1), true, vec!["7".into(), "8_2".into()]));
        for want in [
            "--gres=gpu:1",
            "--cpus-per-task=2",
            "--dependency=afterok:7:8_2",
            "--kill-on-invalid-dep=yes",
            "--partition=gpu",
            "--time=04:00:00",
            "--output=/c/jobs/r/3.log",
        ] {
            assert!(
                gpu.contains(&want.to_string()),
                "{want} missing from {gpu:?}"
            );
        }
        assert!(!gpu.contains(&"--exclusive".to_string()));
        assert!(!gpu.iter().any(|a| a.starts_with("--array")));
        let (cpu, _) = s.sbatch_args(&job(Device::Cpu, true, vec![]));
        assert!(cpu.contains(&"--exclusive".to_string()));
        assert!(
            !cpu.iter()
                .any(|a| a.starts_with("--gres") || a.starts_with("--dependency"))
        );
    }

    #[test]
    fn alike_stages_are_one_array_with_a_log_per_task() {
        let s = Slurm {
            options: SlurmOptions::default(),
        };
        let logs = [
            PathBuf::from("/c/jobs/r/3.log"),
            PathBuf::from("/c/jobs/r/4.log"),
            PathBuf::from("/c/jobs/r/9.log"),
        ];
        let job = Submission {
            stage_ids: vec!["q[a]", "q[b]", "q[c]"],
            command: vec![],
            after: vec![],
            need: Resources {
                threads: usize::MAX, // "all it is given": cpus_per_stage
                device: Device::Cpu,
                exclusive: false,
            },
            measuring: false,
            logs: &logs,
        };
        let (args, task_logs) = s.sbatch_args(&job);
        assert!(args.contains(&"--array=0-2".to_string()), "{args:?}");
        assert!(args.contains(&"--cpus-per-task=4".to_string()), "{args:?}");
        assert!(
            args.contains(&"--output=/c/jobs/r/array3-%a.log".to_string()),
            "{args:?}"
        );
        assert!(
            args.contains(&"--job-name=ee:q[a] +2".to_string()),
            "{args:?}"
        );
        assert_eq!(task_logs[2], Path::new("/c/jobs/r/array3-2.log"));
    }

    #[test]
    fn commands_are_quoted_for_the_shell() {
        assert_eq!(sh_quote("/a b/it's"), r"'/a b/it'\''s'");
    }
}
