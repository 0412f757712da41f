//! No input, however malformed, makes loading a pipeline panic or hang: random bytes, random
//! token soups built from the language's own vocabulary (which get past the parser and exercise
//! the resolver), very long lines, deep nesting and long `let` chains all end in diagnostics.

use std::time::{Duration, Instant};

mod common;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[(self.next() % xs.len() as u64) as usize]
    }
}

fn load_text(dir: &std::path::Path, name: &str, bytes: &[u8]) -> Result<(), String> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let t = Instant::now();
    let r = edge_eval::stages::load(&path, &[]);
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "loading {name} took {:?}",
        t.elapsed()
    );
    match r {
        Ok(_) => Ok(()),
        Err((d, map)) => {
            let text = d.render(&map);
            assert!(text.contains("error"), "{text}");
            Err(text)
        }
    }
}

#[test]
fn random_bytes_and_token_soups_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.gguf"), b"x").unwrap();
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    for i in 0..300 {
        let len = (rng.next() % 400) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let _ = load_text(dir.path(), &format!("bytes{i}.eep"), &bytes);
    }
    let vocab = [
        "pipeline",
        "p",
        "{",
        "}",
        "(",
        ")",
        "[",
        "]",
        ",",
        "=",
        "model",
        "task",
        "let",
        "for",
        "in",
        "import",
        "\"m.gguf\"",
        "\"x.eep\"",
        "path",
        "quantize",
        "finetune",
        "evaluate",
        "measure",
        "cold_load",
        "test_stage",
        "jsonl",
        "m",
        "t",
        "q",
        "v",
        "v[q]",
        "q4_0",
        "f16",
        "12",
        "0.5",
        "12 W",
        "1 usd/kWh",
        "true",
        "economics",
        "hardware",
        "report",
        "device",
        "cpu",
        "cuda(0)",
        "seed",
        "emit",
        "id",
        "\"s\"",
        "#c\n",
        "\n",
        "samples",
        "-3",
        "1e400",
        "99999999999999999999",
    ];
    let mut accepted = 0;
    for i in 0..600 {
        let n = 1 + (rng.next() % 40) as usize;
        let text: Vec<&str> = (0..n).map(|_| rng.pick(&vocab)).collect();
        if load_text(
            dir.path(),
            &format!("soup{i}.eep"),
            text.join(" ").as_bytes(),
        )
        .is_ok()
        {
            accepted += 1;
        }
    }
    // Most soups are invalid; the point is that none panicked.
    assert!(accepted < 600);
}

#[test]
fn huge_lines_deep_nesting_and_long_chains_end_in_diagnostics() {
    let dir = tempfile::tempdir().unwrap();
    let long = format!(
        "let x = \"{}\"\nlet y = [{}]\nbad bad",
        "a".repeat(10 << 20),
        "1,".repeat(200_000)
    );
    let err = load_text(dir.path(), "long.eep", long.as_bytes()).unwrap_err();
    assert!(
        err.len() < 2000,
        "the message stays short: {} bytes",
        err.len()
    );
    let deep = format!("let x = {}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(
        load_text(dir.path(), "deep.eep", deep.as_bytes())
            .unwrap_err()
            .contains("nested more than")
    );
    let mut chain = String::from("let a0 = 1\n");
    for i in 1..5000 {
        chain.push_str(&format!("let a{i} = a{}\n", i - 1));
    }
    chain.push_str("test_stage(emit = \"x\", sleep_ms = a4999)\n");
    assert!(
        load_text(dir.path(), "chain.eep", chain.as_bytes())
            .unwrap_err()
            .contains("more than 256 deep")
    );
    let mut big = String::from("for a in [");
    big.push_str(
        &(0..1000)
            .map(|i| format!("\"{i}\""))
            .collect::<Vec<_>>()
            .join(","),
    );
    big.push_str("], b in [");
    big.push_str(
        &(0..1000)
            .map(|i| format!("\"{i}\""))
            .collect::<Vec<_>>()
            .join(","),
    );
    big.push_str("] { test_stage(emit = a) }");
    assert!(
        load_text(dir.path(), "big.eep", big.as_bytes())
            .unwrap_err()
            .contains("more than 100000 stages")
    );
}

#[test]
fn importing_a_device_or_a_fifo_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.eep");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    for (target, why) in [
        ("/dev/zero", "not a regular file"),
        ("pipe.eep", "not a regular file"),
    ] {
        let text = format!("pipeline p {{ seed = 1 }}\nimport \"{target}\"\n");
        let err = load_text(dir.path(), "main.eep", text.as_bytes()).unwrap_err();
        assert!(err.contains(why), "{target}: {err}");
    }
}

#[test]
fn a_closed_stdout_or_a_non_utf8_argument_is_no_panic() {
    use std::os::unix::ffi::OsStrExt;
    use std::process::{Command, Stdio};
    let bin = env!("CARGO_BIN_EXE_edge-eval");
    // The reader goes away before the listing is written.
    let mut child = Command::new(bin)
        .arg("stages")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(out.status.code(), Some(101), "{stderr}");
    let out = Command::new(bin)
        .arg("check")
        .arg(std::ffi::OsStr::from_bytes(b"\xff.eep"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not valid UTF-8"), "{stderr}");
}

/// A run whose stdout is closed (or full) when it prints its result fails with a message that
/// says where the results are, not a panic, and keeps what it computed.
#[test]
fn a_run_that_cannot_print_its_result_says_so_and_keeps_it() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.eep"),
        "pipeline p { results = \"results\" }\na = test_stage(emit = \"x\")\n",
    )
    .unwrap();
    let run = |stdout: Stdio| {
        Command::new(env!("CARGO_BIN_EXE_edge-eval"))
            .current_dir(dir.path())
            .args(["run", "--json", "--quiet", "p.eep"])
            .stdout(stdout)
            .stderr(Stdio::piped())
            .output()
            .unwrap()
    };
    let full = std::fs::File::options()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = run(full.into());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("could not print the run's result"),
        "{stderr}"
    );
    // The stage's result was kept: the next run finds it cached.
    let again = common::statuses(&common::run_json(&run(Stdio::piped())));
    assert_eq!(again["a"], "cached", "{again:?}");
}

#[test]
fn rust_backtrace_does_not_put_library_backtraces_into_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut gguf = b"GGUF\x03\x00\x00\x00".to_vec();
    gguf.extend([0xAB; 48]); // an absurd tensor count: candle's reader fails
    std::fs::write(dir.path().join("bad.gguf"), gguf).unwrap();
    std::fs::write(
        dir.path().join("p.eep"),
        "pipeline bt { results = \"out\" }\nmodel m = path(\"bad.gguf\")\nq = quantize(m, f16)\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edge-eval"))
        .current_dir(dir.path())
        .env("EDGE_EVAL_CACHE", dir.path().join("cache"))
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LIB_BACKTRACE")
        .args(["run", "p.eep", "--quiet"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not a readable GGUF file"), "{stderr}");
    assert!(!stderr.contains("candle_core::error"), "{stderr}");
}

#[test]
fn thousands_of_errors_are_shown_fifty_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("pipeline p { seed = 1 }\n");
    for i in 0..4000 {
        text.push_str(&format!("x = test_stage(emit = \"{i}\")\n"));
    }
    let err = load_text(dir.path(), "dup.eep", text.as_bytes()).unwrap_err();
    assert_eq!(
        err.matches("two stages get the id `x`").count(),
        50,
        "capped"
    );
    assert!(
        err.contains("… and 3949 more errors"),
        "{}",
        &err[err.len() - 200..]
    );
    assert!(
        err.ends_with("3999 errors found; nothing was run\n"),
        "{}",
        &err[err.len() - 200..]
    );
}

/// Found by `fuzz/` (target `eep`): a model whose source kind is unknown, used in a loop,
/// indexed past the nodes (a panic in the resolver).
#[test]
fn a_model_with_an_unknown_source_used_in_a_loop_is_a_diagnostic() {
    let dir = tempfile::tempdir().unwrap();
    let text = "pipeline p { seed = 1 }\nmodel local = inpath(\"x.gguf\")\n\
                for m in [local] { small[m] = quantize(m, q4_0) }\n";
    let err = load_text(dir.path(), "p.eep", text.as_bytes()).unwrap_err();
    assert!(err.contains("unknown model source `inpath`"), "{err}");
}
