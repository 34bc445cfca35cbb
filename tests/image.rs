//! What the container image (deploy/Dockerfile) relies on, without a container engine: the
//! static binary its build stage makes, by the same command (deploy/build-static.sh), runs
//! `sluice validate` and `sluice run` in an empty root holding only itself and its config,
//! as the image's non-root user, resolves a name, and keeps pushed state in the image's
//! state directory.
//! Needs root (chroot); .ci/test builds the binary first so that this test finds it fresh.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use http::Request;
use support::*;

/// The image's user (`USER 65532:65532`).
const UID: u32 = 65532;

fn static_binary() -> PathBuf {
    let out = Command::new("deploy/build-static.sh")
        .env("CARGO_TARGET_DIR", "target/static")
        .output()
        .expect("deploy/build-static.sh runs");
    assert!(out.status.success(), "deploy/build-static.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Whether the ELF file names a program interpreter (a dynamic loader): a static binary does not.
fn has_interpreter(elf: &[u8]) -> bool {
    assert_eq!(&elf[..5], b"\x7fELF\x02", "a 64-bit ELF file");
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).any(|i| u32::from_le_bytes(elf[phoff + i * size..][..4].try_into().unwrap()) == 3)
    // PT_INTERP
}

/// The image's file system: the binary, its config, the state directory owned by its user.
fn root(binary: &Path, config: &str) -> PathBuf {
    let root = temp_dir("image-root");
    for dir in ["usr/local/bin", "etc/sluice", "var/lib/sluice"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::copy(binary, root.join("usr/local/bin/sluice")).unwrap();
    std::fs::write(root.join("etc/sluice/sluice.yaml"), config).unwrap();
    // What a container runtime writes into every container (with /etc/resolv.conf): names
    // resolve by glibc's own files and DNS lookups, linked in.
    std::fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    std::os::unix::fs::chown(root.join("var/lib/sluice"), Some(UID), Some(UID)).unwrap();
    root
}

fn chroot(root: &Path) -> Command {
    let mut command = Command::new("chroot");
    command.arg(format!("--userspec={UID}:{UID}")).arg(root).arg("/usr/local/bin/sluice");
    command
}

#[tokio::test(flavor = "multi_thread")]
async fn the_image_binary_is_static_and_serves_from_an_empty_root_as_a_non_root_user() {
    let is_root = std::fs::read_to_string("/proc/self/status").unwrap().lines().any(|l| l.starts_with("Uid:\t0\t"));
    assert!(is_root, "tests/image.rs needs root, for chroot (CI runs as root)");
    let binary = static_binary();
    assert!(!has_interpreter(&std::fs::read(&binary).unwrap()), "{} is linked dynamically", binary.display());
    assert!(has_interpreter(&std::fs::read(env!("CARGO_BIN_EXE_sluice")).unwrap()), "the check can tell");

    // The image's default config, with the test's ports and upstream, and a token to push with.
    let upstream = Upstream::start().await;
    let config = std::fs::read_to_string("config/sluice.yaml")
        .unwrap()
        .replace("0.0.0.0:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9901", "127.0.0.1:0")
        .replace("http://127.0.0.1:8000", &format!("http://localhost:{}", upstream.addr.port()))
        .replace(
            "(loopback only)\n",
            "(loopback only)\n  tokens: [{ name: op, role: operator, token: image-test-token }]\n",
        );
    let root = root(&binary, &config);

    let validated = chroot(&root).args(["validate", "--config", "/etc/sluice/sluice.yaml"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&validated.stdout).trim(), "ok", "{validated:?}");

    let mut command = chroot(&root);
    command.args(["--log-format", "json", "run", "--config", "/etc/sluice/sluice.yaml"]);
    let mut process = Process::spawn_command(command);
    let status = std::fs::read_to_string(format!("/proc/{}/status", process.child.id())).unwrap();
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap().split_whitespace().next().unwrap();
    assert_eq!(uid, UID.to_string(), "sluice runs as the image's user");

    let client = client();
    let (response, _) = get(&client, &format!("http://{}/anything", process.addr)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.last().uri.path(), "/anything");
    let (response, _) = get(&client, &process.admin_url("/readyz")).await;
    assert_eq!(response.status(), 200);

    // A push is kept in the state directory, written as the image's user.
    let push = Request::put(process.admin_url("/v1/routes/default/quota"))
        .header("authorization", "Bearer image-test-token")
        .header("content-type", "application/json")
        .body(full(r#"{"rate": 100, "per": "1s", "burst": 10}"#))
        .unwrap();
    let (response, body) = send(&client, push).await;
    assert_eq!(response.status(), 200, "{}", String::from_utf8_lossy(&body));
    let state: Vec<_> = std::fs::read_dir(root.join("var/lib/sluice")).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(!state.is_empty(), "nothing was written to the state directory");
    for file in &state {
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(file).unwrap()), UID, "{}", file.display());
    }
    process.signal("TERM");
    assert_eq!(process.wait(Duration::from_secs(10)), Some(0));
}
