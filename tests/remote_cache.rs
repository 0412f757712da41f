//! The remote cache tier: two "hosts" (two local caches) share one remote. What one computed is
//! a hit on the other, pulled in and checked; a damaged remote object is never used.
//! Backends: a shared folder (`file://`, always built) and, with the `s3` feature, an
//! S3-compatible server (moto, from PyPI, started on 127.0.0.1; `.ci/run` installs it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

const PIPELINE: &str = r#"
pipeline shared { results = "out" }
for x in ["a", "b"] {
  base[x] = test_stage(emit = x)
  test_stage(base[x], emit = "+", id = "derived")
}
"#;

/// Runs the pipeline on "host" `host` (its own local cache) against `remote`; id → status.
fn run_on(
    dir: &Path,
    host: &str,
    remote: &str,
    env: &[(&str, String)],
) -> BTreeMap<String, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_edge-eval"))
        .current_dir(dir)
        .env("EDGE_EVAL_CACHE", dir.join(format!("cache-{host}")))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(["--remote-cache", remote, "run", "p.eep", "--json"])
        .output()
        .unwrap();
    let json = common::run_json(&out);
    assert!(
        out.status.success(),
        "{json}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::statuses(&json)
}

fn all(statuses: &BTreeMap<String, String>, want: &str) -> bool {
    statuses.len() == 4 && statuses.values().all(|s| s == want)
}

/// Host A computes and pushes; host B, with an empty local cache, runs nothing.
fn shared_between_two_hosts(dir: &Path, remote: &str, env: &[(&str, String)]) {
    std::fs::write(dir.join("p.eep"), PIPELINE).unwrap();
    assert!(all(&run_on(dir, "a", remote, env), "ran"));
    let b = run_on(dir, "b", remote, env);
    assert!(all(&b, "cached"), "host b: {b:?}");
    // B now holds the results itself: verified (rehashed) and usable without the remote.
    let verify = Command::new(env!("CARGO_BIN_EXE_edge-eval"))
        .args([
            "--cache",
            dir.join("cache-b").to_str().unwrap(),
            "cache",
            "verify",
        ])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let objects = common::files_under(&dir.join("cache-b/objects"));
    assert_eq!(objects.len(), 4, "{objects:?}"); // "a", "+a", "b", "+b"
}

#[test]
fn a_shared_folder_serves_one_hosts_results_to_another() {
    let tmp = tempfile::tempdir().unwrap();
    let remote_dir = tmp.path().join("remote");
    let remote = format!("file://{}", remote_dir.display());
    shared_between_two_hosts(tmp.path(), &remote, &[]);
    // The remote has the local layout: manifests and objects.
    let remote_files = common::files_under(&remote_dir);
    assert!(
        remote_files
            .iter()
            .any(|p| p.to_string_lossy().contains("/actions/"))
    );

    // A damaged remote object is detected on pull: host c recomputes instead of using it.
    let objects: Vec<PathBuf> = remote_files
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("/objects/"))
        .collect();
    for o in &objects {
        let mut perms = std::fs::metadata(o).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        std::fs::set_permissions(o, perms).unwrap();
        let mut bytes = std::fs::read(o).unwrap();
        bytes[0] ^= 0xff;
        std::fs::write(o, bytes).unwrap();
    }
    let c = run_on(tmp.path(), "c", &remote, &[]);
    assert!(all(&c, "ran"), "host c used damaged objects: {c:?}");
    // …and its push replaced them: the next host finds good results.
    let d = run_on(tmp.path(), "d", &remote, &[]);
    assert!(all(&d, "cached"), "host d: {d:?}");
}

#[test]
fn an_unreachable_or_unknown_remote_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("p.eep"), PIPELINE).unwrap();
    for (url, says) in [
        ("ftp://host/x", "unsupported URL"),
        ("file://relative/x", "absolute path"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_edge-eval"))
            .current_dir(tmp.path())
            .args(["--remote-cache", url, "run", "p.eep"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(says), "{url}: {stderr}");
    }
}

#[cfg(feature = "s3")]
#[test]
fn an_s3_compatible_server_serves_one_hosts_results_to_another() {
    use std::net::TcpListener;
    let have_moto = Command::new("python3")
        .args(["-c", "import moto.server, boto3"])
        .status()
        .is_ok_and(|s| s.success());
    if !have_moto {
        assert!(
            std::env::var("CI").is_err(),
            "under CI: moto is not installed (pip install 'moto[server]')"
        );
        eprintln!("skipping: moto is not installed (pip install 'moto[server]')");
        return;
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    struct Server(std::process::Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Server(
        Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let endpoint = format!("http://127.0.0.1:{port}");
    let env = [
        ("AWS_ENDPOINT", endpoint.clone()),
        ("AWS_ALLOW_HTTP", "true".to_string()),
        ("AWS_ACCESS_KEY_ID", "testing".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
    ];
    let make_bucket = format!(
        "import boto3, time\n\
         for _ in range(300):\n\
         \x20   try:\n\
         \x20       boto3.client('s3', endpoint_url='{endpoint}', region_name='us-east-1', \
         aws_access_key_id='testing', aws_secret_access_key='testing').create_bucket(Bucket='edge-eval-cache'); break\n\
         \x20   except Exception:\n\
         \x20       time.sleep(0.1)\n\
         else:\n\
         \x20   raise SystemExit('moto did not start')\n"
    );
    let made = Command::new("python3")
        .args(["-c", &make_bucket])
        .status()
        .unwrap();
    assert!(made.success());
    let tmp = tempfile::tempdir().unwrap();
    shared_between_two_hosts(tmp.path(), "s3://edge-eval-cache/study", &env);
}
