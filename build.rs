//! Compiles the public contract without a system `protoc`: `protox` parses the
//! protos, the descriptor set is kept for gRPC reflection, and
//! `tonic-prost-build` generates the messages, client and server.

use prost::Message;

const PROTOS: &[&str] = &["proto/hailuo/v1/video_generation.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Nothing on the compile_fds path emits this; without it edits to the
    // protos would not rebuild.
    println!("cargo:rerun-if-changed=proto");

    let fds = protox::compile(PROTOS, ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("hailuo_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Image bytes as `Bytes`: handed on to the upload without a copy.
        .bytes(".hailuo.v1")
        .compile_fds(fds)?;

    git_commit();
    Ok(())
}

/// `HAILUO_GATEWAY_GIT_COMMIT` for the build_info metric: the variable's
/// own value when set (a build without `.git`, such as a container's),
/// else the checkout's commit, else "unknown". Rebuilt when HEAD moves.
fn git_commit() {
    const VAR: &str = "HAILUO_GATEWAY_GIT_COMMIT";
    println!("cargo:rerun-if-env-changed={VAR}");
    let git = |args: &[&str]| -> Option<String> {
        let out = std::process::Command::new("git").args(args).output().ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
    };
    let commit = std::env::var(VAR)
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    // HEAD names the branch; the branch's ref (loose or packed) names the
    // commit. Only files that exist: a missing one would rerun every build.
    let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name])
            && std::path::Path::new(&path).exists()
        {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rustc-env={VAR}={commit}");
}
