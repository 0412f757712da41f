//! Cold loads in a fresh process (`cold_load(isolation = process)`, the default on a GPU).
//!
//! A device allocator keeps memory a dropped model freed (candle's CUDA pool does), so a second
//! load in the same process takes little or no new device memory, and NVML's figure for it says
//! nothing about the model. A child process (`edge-eval load-probe FILE --device D`) has nothing
//! loaded: it opens the device and reports `ready`, loads the model and runs one forward pass
//! when told `go`, reports `loaded` with what it holds, and exits when its stdin closes. The
//! parent measures around `go` … `loaded` only, so process start and device set-up stay outside
//! the window, as in an in-process load.
//!
//! Protocol, one JSON object per line on the child's stdout: `{"ready": {...}}`, then
//! `{"loaded": {...}}`; the parent writes `go` to its stdin, then closes it.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// What the child says once its device is open, before anything is loaded.
#[derive(Debug, Serialize, Deserialize)]
pub struct Ready {
    pub rss_bytes: u64,
}

/// What the child says after the load and the first forward pass.
#[derive(Debug, Serialize, Deserialize)]
pub struct Loaded {
    pub weight_bytes: u64,
    pub rss_bytes: u64,
    /// Peak RSS (VmHWM) since the mark was reset at `go`; None where the kernel refused the
    /// reset (the mark would include the device set-up before the load).
    pub peak_rss_bytes: Option<u64>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Message {
    Ready(Ready),
    Loaded(Loaded),
}

fn say(m: &Message) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, m)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// The child's side (`edge-eval load-probe`).
pub fn child(path: &Path, device: spec::Device) -> Result<()> {
    let dev = runtime::candle_device(device)?;
    say(&Message::Ready(Ready {
        rss_bytes: meter::memory::rss_bytes()?,
    }))?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    if line.trim() != "go" {
        // The parent went away before the load: nothing to do.
        return Ok(());
    }
    let peak_reset = meter::memory::reset_peak();
    let (model, tok) = runtime::load_model_on(path, &dev)?;
    runtime::generate::first_token(&model, tok.as_ref())?;
    say(&Message::Loaded(Loaded {
        weight_bytes: model.weight_bytes,
        rss_bytes: meter::memory::rss_bytes()?,
        peak_rss_bytes: peak_reset.then(meter::memory::peak_rss_bytes).transpose()?,
    }))?;
    // Hold the model until the parent has read the device's memory, then exit.
    line.clear();
    let _ = std::io::stdin().read_line(&mut line);
    drop(model);
    Ok(())
}

/// The parent's handle on one child.
pub struct Probe {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    stderr: Option<std::thread::JoinHandle<String>>,
    pub ready: Ready,
}

impl Probe {
    /// Starts a child for `path` on `device` and waits until its device is open.
    pub fn spawn(path: &Path, device: spec::Device) -> Result<Probe> {
        let exe = std::env::current_exe().context("cannot find this program to start a child")?;
        let mut child = Command::new(exe)
            .arg("load-probe")
            .arg(path)
            .arg("--device")
            .arg(device.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start the load-probe child process")?;
        let stdout = BufReader::new(child.stdout.take().context("child stdout")?);
        // Drained on a thread so a chatty child never blocks on a full pipe.
        let mut err = child.stderr.take().context("child stderr")?;
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut err, &mut s);
            s
        });
        let mut probe = Probe {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr: Some(stderr),
            ready: Ready { rss_bytes: 0 },
        };
        match probe.next()? {
            Message::Ready(r) => probe.ready = r,
            Message::Loaded(_) => bail!("the load-probe child answered out of order"),
        }
        Ok(probe)
    }

    /// Tells the child to load; returns once the model is loaded and one forward pass is done.
    pub fn load(&mut self) -> Result<Loaded> {
        let stdin = self.stdin.as_mut().context("child stdin closed")?;
        stdin.write_all(b"go\n")?;
        stdin.flush()?;
        match self.next()? {
            Message::Loaded(l) => Ok(l),
            Message::Ready(_) => bail!("the load-probe child answered out of order"),
        }
    }

    fn next(&mut self) -> Result<Message> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        if line.is_empty() {
            // The child ended: its error is on stderr.
            let status = self.child.wait()?;
            let err = self
                .stderr
                .take()
                .and_then(|t| t.join().ok())
                .unwrap_or_default();
            let tail: Vec<&str> = err.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "the load in a child process failed ({status}):\n{}",
                tail.join("\n")
            );
        }
        serde_json::from_str(&line)
            .with_context(|| format!("unreadable line from the load-probe child: {line:?}"))
    }
}

impl Drop for Probe {
    /// Closing stdin lets the child exit; it is waited for so none is left behind.
    fn drop(&mut self) {
        drop(self.stdin.take());
        if self.child.try_wait().ok().flatten().is_none() {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while self.child.try_wait().ok().flatten().is_none() {
                if std::time::Instant::now() > deadline {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
}
