//! Scenario 7, uploads (issue 13): `upload_clients` clients at once, each
//! on its own connection, each uploading an image of `upload_bytes` round
//! after round, through the gateway's UploadImage in 64 KiB chunks (with
//! each `GATEWAY_MAX_CONCURRENT_UPLOADS` setting of the plan), against the
//! same multipart uploads posted directly to the simulator's upload host
//! with reqwest, interleaved in one run. Every path of every repetition
//! gets a fresh simulator (and gateway), so that each peak RSS (VmHWM) is
//! that path's alone.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use bytes::Bytes;
use hailuo_gateway::kie::Multipart;
use hailuo_gateway::pb::upload_image_request::Content;
use hailuo_gateway::pb::video_generation_client::VideoGenerationClient;
use hailuo_gateway::pb::{UploadImageMetadata, UploadImageRequest};
use serde::Deserialize;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::API_KEY;
use crate::clients::{KieAnswer, connect, http_client};
use crate::figures::{Figures, quantile};
use crate::plan::Plan;
use crate::processes::{
    Gateway, GatewayOptions, Simulator, cpu_of, load_average, start_gateway_with,
    start_simulator_with,
};

/// The chunk size of an UploadImage stream.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// The simulator keeps this many bytes of uploaded files (three 10 MiB
/// images; the oldest goes first), so that its memory stays bounded however
/// many rounds run.
pub const SIM_STORAGE_BYTES: u64 = 32 * 1024 * 1024;
const MIB: f64 = 1024.0 * 1024.0;
/// The HTTP/2 stream window of the gateway's gRPC server (hyper's default;
/// the gateway raises only the connection window): what a client waiting
/// for an upload slot can send before the gateway reads its stream.
const STREAM_WINDOW_MIB: f64 = 1.0;

/// The target for the gateway's peak RSS growth, in MiB: twice what the
/// design lets it hold, which is one image per upload slot in use and one
/// stream window per client waiting for a slot. Twice, because an image's
/// buffer grows by doubling (its last growth holds 8 MiB and 10 MiB at
/// once), and h2 keeps a waiting stream's frames as slices of its larger
/// read buffers.
pub fn memory_bound_mib(plan: &Plan, slots: usize) -> f64 {
    let held = slots.min(plan.upload_clients) as f64;
    let waiting = plan.upload_clients.saturating_sub(slots) as f64;
    2.0 * (held * plan.upload_bytes as f64 / MIB + waiting * STREAM_WINDOW_MIB)
}

/// Where the images go.
#[derive(Clone, Copy)]
pub enum UploadPath {
    /// Multipart POSTs to the simulator's upload host.
    Direct,
    /// UploadImage through a gateway with this many upload slots.
    Gateway { slots: usize },
}

impl UploadPath {
    pub fn all(plan: &Plan) -> Vec<Self> {
        let mut paths = vec![Self::Direct];
        paths.extend(
            plan.upload_slots
                .iter()
                .map(|&slots| Self::Gateway { slots }),
        );
        paths
    }

    pub fn name(self) -> String {
        match self {
            Self::Direct => "direct".into(),
            Self::Gateway { slots } => format!("gateway_slots{slots}"),
        }
    }
}

pub async fn uploads(plan: &Plan, figures: &mut Figures, logs: &Path) -> anyhow::Result<()> {
    eprintln!("== 7. uploads: concurrent image uploads, through the gateway and direct");
    let image = image(plan.upload_bytes);
    let paths = UploadPath::all(plan);
    for rep in 0..plan.reps {
        figures.push("load/uploads", load_average());
        let mut order = paths.clone();
        order.rotate_left(rep % paths.len());
        for path in order {
            let run = one_path(plan, path, &image, logs).await?;
            record(plan, figures, path, &run);
        }
        for &slots in &plan.upload_slots {
            let name = UploadPath::Gateway { slots }.name();
            let last = |path: &str, what: &str| {
                let key = format!("uploads/{path}/{what}");
                figures.get(&key).last().copied().unwrap_or(f64::NAN)
            };
            let throughput = last(&name, "mib_per_s") / last("direct", "mib_per_s");
            let added_p50 = last(&name, "p50_ms") - last("direct", "p50_ms");
            figures.push(format!("uploads/{name}/throughput_vs_direct"), throughput);
            figures.push(format!("uploads/{name}/added_p50_ms"), added_p50);
        }
    }
    Ok(())
}

/// One path's figures, pushed and printed.
fn record(plan: &Plan, figures: &mut Figures, path: UploadPath, run: &PathRun) {
    let name = path.name();
    let key = |what: &str| format!("uploads/{name}/{what}");
    let uploads = run.latencies_ms.len() as f64;
    let secs = run.took.as_secs_f64();
    let mib_per_s = uploads * plan.upload_bytes as f64 / MIB / secs;
    let (p50, p99) = (
        quantile(&run.latencies_ms, 0.50),
        quantile(&run.latencies_ms, 0.99),
    );
    let sim_growth_mib = run.sim_growth_kib as f64 / 1024.0;
    figures.push(key("completed"), uploads);
    figures.push(key("errors"), run.errors as f64);
    figures.push(key("resource_exhausted"), run.resource_exhausted as f64);
    figures.push(key("uploads_per_s"), uploads / secs);
    figures.push(key("mib_per_s"), mib_per_s);
    figures.push(key("p50_ms"), p50);
    figures.push(key("p99_ms"), p99);
    figures.push(key("sim_growth_mib"), sim_growth_mib);
    let per_upload_ms = |cpu: Duration| cpu.as_secs_f64() * 1e3 / uploads;
    figures.push(key("cpu_sim_ms"), per_upload_ms(run.cpu.sim));
    figures.push(key("cpu_load_tool_ms"), per_upload_ms(run.cpu.load_tool));
    let mut gateway_line = String::new();
    if let (UploadPath::Gateway { slots }, Some(memory), Some(cpu)) =
        (path, &run.gateway, run.cpu.gateway)
    {
        let base_mib = memory.base_kib as f64 / 1024.0;
        let growth_mib = memory.peak_kib.saturating_sub(memory.base_kib) as f64 / 1024.0;
        let held = slots.min(plan.upload_clients) as f64;
        figures.push(key("cpu_gateway_ms"), per_upload_ms(cpu));
        figures.push(key("gateway_base_mib"), base_mib);
        figures.push(key("gateway_growth_mib"), growth_mib);
        figures.push(key("gateway_mib_per_upload_held"), growth_mib / held);
        gateway_line = format!(", gateway peak +{growth_mib:.0} MiB (from {base_mib:.0} MiB)");
    }
    eprintln!(
        "  {name:16} {uploads} uploads in {secs:.2} s: {:.1} uploads/s, {mib_per_s:.0} MiB/s, p50 {p50:.0} ms, p99 {p99:.0} ms, {} errors ({} RESOURCE_EXHAUSTED); simulator peak +{sim_growth_mib:.0} MiB{gateway_line}",
        uploads / secs,
        run.errors,
        run.resource_exhausted,
    );
}

/// A PNG by its magic bytes (all the gateway and the simulator read of
/// it), then filler, `len` bytes in all.
fn image(len: usize) -> Bytes {
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";
    let mut bytes = PNG.to_vec();
    bytes.extend((0..len.saturating_sub(PNG.len())).map(|i| (i % 251) as u8));
    bytes.into()
}

/// What one path's run measured.
struct PathRun {
    /// Per upload that succeeded, milliseconds from its start to its answer.
    latencies_ms: Vec<f64>,
    /// Uploads that failed, whatever the cause.
    errors: usize,
    /// Of those, the gateway's RESOURCE_EXHAUSTED (no upload slot in time).
    resource_exhausted: usize,
    took: Duration,
    /// CPU time spent over the run.
    cpu: Cpu,
    /// The simulator's VmHWM less its VmRSS before the run.
    sim_growth_kib: u64,
    gateway: Option<GatewayMemory>,
}

/// CPU time (utime + stime) of each process of a path.
struct Cpu {
    gateway: Option<Duration>,
    sim: Duration,
    load_tool: Duration,
}

impl Cpu {
    fn since(&self, before: &Cpu) -> Cpu {
        Cpu {
            gateway: self
                .gateway
                .zip(before.gateway)
                .map(|(after, before)| after.saturating_sub(before)),
            sim: self.sim.saturating_sub(before.sim),
            load_tool: self.load_tool.saturating_sub(before.load_tool),
        }
    }
}

struct GatewayMemory {
    /// VmRSS after a small warm-up upload, before the run.
    base_kib: u64,
    /// VmHWM after the run.
    peak_kib: u64,
}

/// One path's run: a fresh simulator (and gateway), one small warm-up
/// upload (connections made, code paths touched), the baseline RSS, then
/// every client's rounds.
async fn one_path(
    plan: &Plan,
    path: UploadPath,
    image: &Bytes,
    logs: &Path,
) -> anyhow::Result<PathRun> {
    let storage = SIM_STORAGE_BYTES.to_string();
    let sim = start_simulator_with(plan, &[("SIM_FILE_STORAGE_BYTES", &storage)]).await?;
    let gateway = match path {
        UploadPath::Direct => None,
        UploadPath::Gateway { slots } => {
            let slots = slots.to_string();
            let env = [("GATEWAY_MAX_CONCURRENT_UPLOADS", slots.as_str())];
            Some(start_gateway_with(&sim, GatewayOptions::POLLING, logs, &env).await?)
        }
    };
    let uploader = Uploader::new(plan, &sim, gateway.as_ref()).await?;
    let warm_up = uploader.upload(0, &self::image(1024)).await;
    ensure!(warm_up.is_ok(), "the warm-up upload failed: {warm_up:?}");
    let sim_base = sim.proc.rss_kib()?;
    let gateway_base = gateway.as_ref().map(|g| g.proc.rss_kib()).transpose()?;
    let cpu = |gateway: Option<&Gateway>| -> anyhow::Result<Cpu> {
        Ok(Cpu {
            gateway: gateway.map(|g| g.proc.cpu()).transpose()?,
            sim: sim.proc.cpu()?,
            load_tool: cpu_of("self")?,
        })
    };
    let cpu_before = cpu(gateway.as_ref())?;
    let started = Instant::now();
    let mut clients = JoinSet::new();
    for client in 0..plan.upload_clients {
        let uploader = uploader.clone();
        let image = image.clone();
        let rounds = plan.upload_rounds;
        clients.spawn(async move {
            let mut outcomes = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                let began = Instant::now();
                let outcome = uploader.upload(client, &image).await;
                outcomes.push(outcome.map(|()| began.elapsed().as_secs_f64() * 1e3));
            }
            outcomes
        });
    }
    let mut latencies_ms = Vec::new();
    let (mut errors, mut resource_exhausted) = (0, 0);
    while let Some(outcomes) = clients.join_next().await {
        for outcome in outcomes? {
            match outcome {
                Ok(ms) => latencies_ms.push(ms),
                Err(failure) => {
                    errors += 1;
                    if failure == Failure::Code(tonic::Code::ResourceExhausted) {
                        resource_exhausted += 1;
                    }
                }
            }
        }
    }
    let took = started.elapsed();
    let cpu_after = cpu(gateway.as_ref())?;
    latencies_ms.sort_by(f64::total_cmp);
    let run = PathRun {
        latencies_ms,
        errors,
        resource_exhausted,
        took,
        cpu: cpu_after.since(&cpu_before),
        sim_growth_kib: sim.proc.peak_rss_kib()?.saturating_sub(sim_base),
        gateway: match (&gateway, gateway_base) {
            (Some(g), Some(base_kib)) => Some(GatewayMemory {
                base_kib,
                peak_kib: g.proc.peak_rss_kib()?,
            }),
            _ => None,
        },
    };
    drop(uploader);
    if let Some(gateway) = gateway {
        gateway.proc.stop().await;
    }
    sim.proc.stop().await;
    Ok(run)
}

/// Why an upload failed.
#[derive(Debug, PartialEq)]
enum Failure {
    /// The gateway's gRPC status.
    Code(tonic::Code),
    /// Anything else (the direct path's answer, a size that disagrees).
    Other(String),
}

/// One client per connection of the path under test.
#[derive(Clone)]
enum Uploader {
    Direct(std::sync::Arc<DirectUpload>),
    Gateway(Vec<VideoGenerationClient<Channel>>),
}

impl Uploader {
    async fn new(plan: &Plan, sim: &Simulator, gateway: Option<&Gateway>) -> anyhow::Result<Self> {
        let Some(gateway) = gateway else {
            return Ok(Self::Direct(std::sync::Arc::new(DirectUpload::new(sim)?)));
        };
        let mut clients = Vec::new();
        for _ in 0..plan.upload_clients {
            clients.push(connect(&gateway.grpc_url).await?);
        }
        Ok(Self::Gateway(clients))
    }

    /// Uploads `image` as client `client`.
    async fn upload(&self, client: usize, image: &Bytes) -> Result<(), Failure> {
        let size = match self {
            Self::Direct(direct) => direct.upload(image).await?,
            Self::Gateway(clients) => {
                let answer = clients[client]
                    .clone()
                    .upload_image(upload_stream(image))
                    .await
                    .map_err(|status| Failure::Code(status.code()))?;
                answer.into_inner().size_bytes as usize
            }
        };
        if size == image.len() {
            Ok(())
        } else {
            Err(Failure::Other(format!(
                "{size} bytes stored of {}",
                image.len()
            )))
        }
    }
}

/// An UploadImage stream: metadata, then the image in `CHUNK_BYTES`
/// chunks (slices of one buffer, not copies).
fn upload_stream(image: &Bytes) -> impl tokio_stream::Stream<Item = UploadImageRequest> + use<> {
    let metadata = UploadImageRequest {
        content: Some(Content::Metadata(UploadImageMetadata {
            file_name: "loadgen.png".into(),
            content_type: "image/png".into(),
        })),
    };
    let image = image.clone();
    let chunks = (0..image.len()).step_by(CHUNK_BYTES).map(move |at| {
        let end = (at + CHUNK_BYTES).min(image.len());
        UploadImageRequest {
            content: Some(Content::Chunk(image.slice(at..end))),
        }
    });
    tokio_stream::iter(std::iter::once(metadata).chain(chunks))
}

/// kie.ai's file-stream upload, posted the way the gateway posts it.
struct DirectUpload {
    http: reqwest::Client,
    url: reqwest::Url,
    auth: reqwest::header::HeaderValue,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Uploaded {
    file_size: usize,
}

impl DirectUpload {
    fn new(sim: &Simulator) -> anyhow::Result<Self> {
        let base = reqwest::Url::parse(&sim.upload_url).context("the upload host's URL")?;
        Ok(Self {
            http: http_client()?,
            url: base.join("api/file-stream-upload")?,
            auth: reqwest::header::HeaderValue::from_str(&format!("Bearer {API_KEY}"))?,
        })
    }

    /// One upload under a fresh random name; the size kie.ai stored.
    async fn upload(&self, image: &Bytes) -> Result<usize, Failure> {
        let file_name = format!("{:032x}.png", rand::random::<u128>());
        // The gateway's own form: the image sent from the buffer without a copy.
        let form = Multipart::upload("loadgen", &file_name, "image/png", image.clone());
        let answer = self
            .http
            .post(self.url.clone())
            .header(reqwest::header::AUTHORIZATION, self.auth.clone())
            .header(reqwest::header::CONTENT_TYPE, form.content_type())
            .header(reqwest::header::CONTENT_LENGTH, form.content_length())
            .body(reqwest::Body::wrap(form))
            .send()
            .await
            .map_err(|e| Failure::Other(e.to_string()))?
            .bytes()
            .await
            .map_err(|e| Failure::Other(e.to_string()))?;
        match serde_json::from_slice::<KieAnswer<Uploaded>>(&answer) {
            Ok(KieAnswer {
                code: 200,
                data: Some(uploaded),
            }) => Ok(uploaded.file_size),
            Ok(KieAnswer { code, .. }) => Err(Failure::Other(format!("code {code}"))),
            Err(e) => Err(Failure::Other(e.to_string())),
        }
    }
}
