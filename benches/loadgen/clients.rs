//! How the tool talks to its children: gRPC clients of the gateway, the
//! bare kie.ai path with reqwest, the simulator's control routes and the
//! gateway's `/metrics`, and the waits the scenarios share.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use bytes::Bytes;
use hailuo_gateway::kie::wire::CreateTaskBody;
use hailuo_gateway::pb::video_generation_client::VideoGenerationClient;
use hailuo_gateway::pb::{CreateTaskRequest, Resolution, VideoDuration};
use hailuo_gateway::simulator::Counts;
use hailuo_gateway::task::CreateTaskInput;
use serde::Deserialize;
use tonic::transport::{Channel, Endpoint};

use crate::processes::{Gateway, Simulator};
use crate::{API_KEY, IMAGE_URL};

pub async fn connect(url: &str) -> anyhow::Result<VideoGenerationClient<Channel>> {
    let channel = Endpoint::from_shared(url.to_owned())?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connect to {url}"))?;
    Ok(VideoGenerationClient::new(channel))
}

/// The connection window of [`connect_streams`], as the gateway's own.
const STREAMS_WINDOW: u32 = 16 * 1024 * 1024;

/// A connection for thousands of streams at once. h2 holds the small DATA
/// frames that their tasks have not read yet against a budget of half the
/// connection window and, past it, answers GOAWAY ENHANCE_YOUR_CALM
/// "too_many_data_frames", which ends every stream of the connection: with
/// the default 64 KiB window, about 300 messages waiting to be read (10,000
/// streams' first message, or a state change reaching them all at once, on
/// a busy machine) are enough. `LOADGEN_STREAM_WINDOW_KIB=0` keeps h2's
/// default window (to see it happen).
pub async fn connect_streams(url: &str) -> anyhow::Result<VideoGenerationClient<Channel>> {
    let window = match std::env::var("LOADGEN_STREAM_WINDOW_KIB") {
        Ok(kib) => kib.parse::<u32>().context("LOADGEN_STREAM_WINDOW_KIB")? * 1024,
        Err(_) => STREAMS_WINDOW,
    };
    let endpoint = Endpoint::from_shared(url.to_owned())?.tcp_nodelay(true);
    let endpoint = if window > 0 {
        endpoint.initial_connection_window_size(window)
    } else {
        endpoint
    };
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("connect to {url}"))?;
    Ok(VideoGenerationClient::new(channel))
}

pub fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(hailuo_gateway::http_client::builder()?
        // Like kie.ai's CDN, the simulator refuses requests without one.
        .user_agent("hailuo-loadgen/0.1")
        .tcp_nodelay(true)
        .no_proxy()
        .pool_idle_timeout(Duration::from_secs(90))
        .build()?)
}

pub fn create_request(prompt: &str) -> CreateTaskRequest {
    CreateTaskRequest {
        prompt: prompt.to_owned(),
        image_url: IMAGE_URL.to_owned(),
        duration: VideoDuration::VideoDuration6Seconds as i32,
        resolution: Resolution::Resolution768p as i32,
        ..Default::default()
    }
}

/// The createTask body the gateway sends for `create_request(prompt)`,
/// built by the gateway's own code so both paths send the same bytes.
pub fn direct_body(prompt: &str) -> anyhow::Result<Bytes> {
    let input = CreateTaskInput::try_from(create_request(prompt))
        .map_err(|e| anyhow!("invalid benchmark request: {e:?}"))?;
    Ok(serde_json::to_vec(&CreateTaskBody::new(&input, None))?.into())
}

#[derive(Deserialize)]
pub struct KieAnswer<T> {
    pub code: i64,
    pub data: Option<T>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedData {
    pub task_id: String,
}

#[derive(Deserialize)]
struct RecordData {
    state: String,
}

/// Upstream paths and a pooled client for the bare path.
pub struct Direct {
    http: reqwest::Client,
    create_url: reqwest::Url,
    record_url: reqwest::Url,
    sim_url: String,
    auth: reqwest::header::HeaderValue,
}

impl Direct {
    pub fn new(sim: &Simulator) -> anyhow::Result<Self> {
        let base = reqwest::Url::parse(&sim.url)?;
        Ok(Self {
            http: http_client()?,
            create_url: base.join("api/v1/jobs/createTask")?,
            record_url: base.join("api/v1/jobs/recordInfo")?,
            sim_url: sim.url.clone(),
            auth: reqwest::header::HeaderValue::from_str(&format!("Bearer {API_KEY}"))?,
        })
    }

    /// The bare path of a CreateTask: one POST, its JSON parsed.
    pub async fn create(&self, body: Bytes) -> anyhow::Result<String> {
        let request = self
            .http
            .post(self.create_url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        let data: CreatedData = self.kie(request, "createTask").await?;
        Ok(data.task_id)
    }

    pub async fn state(&self, task_id: &str) -> anyhow::Result<String> {
        let mut url = self.record_url.clone();
        url.query_pairs_mut().append_pair("taskId", task_id);
        let data: RecordData = self.kie(self.http.get(url), "recordInfo").await?;
        Ok(data.state)
    }

    /// Sends a kie.ai request with the key; `data` of a code-200 answer.
    async fn kie<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        endpoint: &str,
    ) -> anyhow::Result<T> {
        let answer = request
            .header(reqwest::header::AUTHORIZATION, self.auth.clone())
            .send()
            .await?
            .bytes()
            .await?;
        match serde_json::from_slice::<KieAnswer<T>>(&answer)? {
            KieAnswer {
                code: 200,
                data: Some(data),
            } => Ok(data),
            KieAnswer { code, .. } => bail!("{endpoint} answered code {code}"),
        }
    }

    pub async fn reset(&self) -> anyhow::Result<()> {
        self.sim_post("/sim/reset").await
    }

    pub async fn counts(&self) -> anyhow::Result<Counts> {
        let body = self
            .http
            .get(format!("{}/sim/counts", self.sim_url))
            .send()
            .await?
            .bytes()
            .await?;
        Ok(serde_json::from_slice(&body)?)
    }

    pub async fn complete(&self, task_id: &str) -> anyhow::Result<()> {
        self.sim_post(&format!("/sim/tasks/{task_id}/complete"))
            .await
    }

    /// POSTs to one of the simulator's control routes.
    async fn sim_post(&self, path: &str) -> anyhow::Result<()> {
        let status = self
            .http
            .post(format!("{}{path}", self.sim_url))
            .send()
            .await?
            .status();
        ensure!(status.is_success(), "{path} answered {status}");
        Ok(())
    }
}

pub async fn gauge(http: &reqwest::Client, gateway: &Gateway, name: &str) -> anyhow::Result<f64> {
    let text = http
        .get(format!("{}/metrics", gateway.admin_url))
        .send()
        .await?
        .text()
        .await?;
    let line = text
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .with_context(|| format!("{name} missing from /metrics"))?;
    Ok(line[name.len()..].trim().parse()?)
}

pub async fn wait_for(
    what: &str,
    limit: Duration,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    while !done() {
        ensure!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

pub async fn create_via_gateway(gateway: &Gateway, prompt: &str) -> anyhow::Result<String> {
    let mut client = connect(&gateway.grpc_url).await?;
    Ok(client
        .create_task(create_request(prompt))
        .await?
        .into_inner()
        .task_id)
}
