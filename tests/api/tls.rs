//! TLS on the gRPC listener: a client trusting the gateway's CA gets in and
//! a plaintext one does not; with client certificates on, only a valid one
//! from the client CA gets in and its identity reaches the handlers; a
//! rotated certificate reaches new connections while open ones go on; half
//! a TLS configuration stops the start.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hailuo_gateway::config::{Settings, TlsSettings};
use hailuo_gateway::pb::video_generation_client::VideoGenerationClient;
use hailuo_gateway::pb::{TaskState, WatchTaskResponse};
use hailuo_gateway::startup::Application;
use hailuo_gateway::tls::{ServerTls, peer_identity};
use parking_lot::Mutex;
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::sync::oneshot;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use wiremock::{MockServer, Request, Respond, ResponseTemplate};

use crate::binary::*;
use crate::helpers::*;

// === Certificates made by the test ===

/// A CA of the test's own.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("ca key"))
            .expect("ca cert");
        let pem = issuer.pem();
        Self { issuer, pem }
    }

    /// A leaf for these DNS names (and IPs) and URIs, valid now unless
    /// `expired`: its PEM certificate and key.
    fn leaf(
        &self,
        dns: &[&str],
        uris: &[&str],
        usage: ExtendedKeyUsagePurpose,
        expired: bool,
    ) -> Leaf {
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        for uri in uris {
            params
                .subject_alt_names
                .push(SanType::URI(Ia5String::try_from(*uri).expect("ia5")));
        }
        params.extended_key_usages = vec![usage];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    fn server(&self, name: &str) -> Leaf {
        self.leaf(
            &["localhost", "127.0.0.1", name],
            &[],
            ExtendedKeyUsagePurpose::ServerAuth,
            false,
        )
    }
}

struct Leaf {
    cert: String,
    key: String,
    der: Vec<u8>,
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("hailuo-gateway-tls-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        Self(dir)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// === Clients ===

/// A channel over TLS trusting `ca`, presenting `client` if given.
async fn tls_channel(
    addr: &str,
    ca: &str,
    client: Option<&Leaf>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some(client) = client {
        tls = tls.identity(Identity::from_pem(&client.cert, &client.key));
    }
    Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// Health's answer over a channel, or why the call failed.
async fn health(channel: Channel) -> Result<ServingStatus, tonic::Status> {
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(answer.into_inner().status())
}

/// Health over a new TLS connection: connected and answered, or not.
async fn health_over(addr: &str, ca: &str, client: Option<&Leaf>) -> Result<ServingStatus, String> {
    let channel = tls_channel(addr, ca, client)
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    health(channel).await.map_err(|e| format!("call: {e:?}"))
}

/// The leaf certificate a new handshake gets from the gateway.
async fn served_certificate(addr: &str, ca: &str) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.expect("ca pem")).expect("ca");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("handshake");
    let (_, session) = tls.get_ref();
    assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]), "ALPN h2");
    session.peer_certificates().expect("a certificate")[0].to_vec()
}

// === Gateways ===

/// A gateway in process with TLS on, its gRPC address and its stop.
async fn spawn_tls_gateway(settings: Settings) -> (String, oneshot::Sender<()>) {
    let app = Application::build(settings).await.expect("build app");
    let addr = app.grpc_addr().to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// Answers recordInfo "generating" until `done`, then "success".
struct Until {
    task_id: String,
    done: Arc<AtomicBool>,
}

impl Respond for Until {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let state = if self.done.load(Ordering::SeqCst) {
            "success"
        } else {
            "generating"
        };
        kie_ok(record(&self.task_id, state))
    }
}

#[tokio::test]
async fn over_tls_a_client_trusting_the_ca_gets_tasks_and_health_and_a_plaintext_one_gets_nothing()
{
    let upstream = MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("GET"))
        .and(wiremock::matchers::path(RECORD_PATH))
        .respond_with(kie_ok(record("t_tls", "success")))
        .mount(&upstream)
        .await;
    let dir = TempDir::new();
    let ca = Ca::new("gateway CA");
    let server = ca.server("gen-1.gateway.test");
    let mut settings = test_settings(&upstream.uri());
    settings.grpc_tls = Some(TlsSettings::new(
        dir.write("cert.pem", &server.cert),
        dir.write("key.pem", &server.key),
    ));
    let (addr, _stop) = spawn_tls_gateway(settings).await;

    let channel = tls_channel(&addr, &ca.pem, None)
        .await
        .expect("TLS connect");
    let task = VideoGenerationClient::new(channel.clone())
        .get_task(get_request("t_tls"))
        .await
        .expect("GetTask over TLS")
        .into_inner();
    assert_eq!(task.task.expect("task").state(), TaskState::Succeeded);
    assert_eq!(
        health(channel).await.expect("health"),
        ServingStatus::Serving
    );
    assert_eq!(served_certificate(&addr, &ca.pem).await, server.der);

    let plaintext = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .timeout(Duration::from_secs(5));
    let refused = match plaintext.connect().await {
        Err(_) => true,
        Ok(channel) => health(channel).await.is_err(),
    };
    assert!(refused, "plaintext gRPC must not reach a TLS listener");
    let other_ca = Ca::new("someone else's CA");
    assert!(
        health_over(&addr, &other_ca.pem, None).await.is_err(),
        "a client that does not trust the gateway's CA gets nothing"
    );
}

#[tokio::test]
async fn with_client_certificates_only_a_valid_one_from_the_client_ca_gets_in_and_its_identity_is_logged()
 {
    let upstream = MockServer::start().await;
    let dir = TempDir::new();
    let ca = Ca::new("gateway CA");
    let server = ca.server("gen-1.gateway.test");
    let clients = Ca::new("clients CA");
    let spiffe = "spiffe://example.org/ns/render/sa/farm";
    let good = clients.leaf(
        &["render-farm.internal"],
        &[spiffe],
        ExtendedKeyUsagePurpose::ClientAuth,
        false,
    );
    let expired = clients.leaf(
        &["old.internal"],
        &["spiffe://example.org/ns/render/sa/old"],
        ExtendedKeyUsagePurpose::ClientAuth,
        true,
    );
    let stranger = Ca::new("another CA").leaf(
        &["stranger.internal"],
        &["spiffe://example.org/ns/x/sa/stranger"],
        ExtendedKeyUsagePurpose::ClientAuth,
        false,
    );
    let cert = dir.write("cert.pem", &server.cert);
    let key = dir.write("key.pem", &server.key);
    let client_ca = dir.write("clients.pem", &clients.pem);
    let mut gateway = start_gateway_with(
        &upstream,
        &[
            ("GATEWAY_TLS_CERT_FILE", cert.to_str().expect("utf-8")),
            ("GATEWAY_TLS_KEY_FILE", key.to_str().expect("utf-8")),
            (
                "GATEWAY_TLS_CLIENT_CA_FILE",
                client_ca.to_str().expect("utf-8"),
            ),
            ("GATEWAY_LOG_FORMAT", "json"),
            ("RUST_LOG", "info,hailuo_gateway::tls=debug"),
        ],
    )
    .await;
    let addr = gateway
        .grpc_url
        .strip_prefix("http://")
        .expect("an address")
        .to_owned();

    for (who, client) in [
        ("no certificate", None),
        ("a certificate from another CA", Some(&stranger)),
        ("an expired certificate", Some(&expired)),
    ] {
        let refused = health_over(&addr, &ca.pem, client).await;
        assert!(refused.is_err(), "{who}: {refused:?}");
        let failed = next_log(&mut gateway, |e| e["message"] == "TLS handshake failed").await;
        assert_eq!(failed["level"], "DEBUG", "{who}: {failed}");
        assert!(
            failed["peer"]
                .as_str()
                .is_some_and(|p| p.starts_with("127.0.0.1:")),
            "{failed}"
        );
    }

    assert_eq!(
        health_over(&addr, &ca.pem, Some(&good)).await,
        Ok(ServingStatus::Serving)
    );
    let handshake = next_log(&mut gateway, |e| e["message"] == "TLS handshake").await;
    assert_eq!(handshake["identity"], spiffe, "{handshake}");
    let startup = gateway.startup_logs.join("\n");
    assert!(
        startup.contains("\"client_certificates\":true"),
        "{startup}"
    );
}

/// The next JSON log line of `gateway` that `wanted` accepts.
async fn next_log(gateway: &mut RunningGateway, wanted: impl Fn(&Value) -> bool) -> Value {
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(line) = gateway.logs.recv().await {
            if let Ok(entry) = serde_json::from_str::<Value>(&line)
                && wanted(&entry)
            {
                return entry;
            }
        }
        panic!("the gateway exited without the log line");
    })
    .await
    .expect("the log line in time")
}

#[tokio::test]
async fn handlers_see_the_spiffe_uri_of_the_client_certificate_else_its_first_dns_name() {
    let dir = TempDir::new();
    let ca = Ca::new("gateway CA");
    let server = ca.server("gen-1.gateway.test");
    let clients = Ca::new("clients CA");
    let mut settings = TlsSettings::new(
        dir.write("cert.pem", &server.cert),
        dir.write("key.pem", &server.key),
    );
    settings.client_ca_file = Some(dir.write("clients.pem", &clients.pem));
    let tls = ServerTls::load(&settings).expect("load");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    // The health service behind an interceptor that notes what a handler
    // would see.
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let noted = seen.clone();
    let (_, health_service) = tonic_health::server::health_reporter();
    let service = tonic::service::interceptor::InterceptedService::new(
        health_service,
        move |request: tonic::Request<()>| {
            noted
                .lock()
                .push(peer_identity(request.extensions()).map(str::to_owned));
            Ok(request)
        },
    );
    let incoming = hailuo_gateway::tls::incoming(listener, tls, shutdown.clone());
    tokio::spawn(
        Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned()),
    );

    let spiffe = "spiffe://example.org/ns/render/sa/farm";
    let both = clients.leaf(
        &["render-farm.internal"],
        &["https://not-spiffe.example/x", spiffe],
        ExtendedKeyUsagePurpose::ClientAuth,
        false,
    );
    let dns_only = clients.leaf(
        &["batch.internal", "batch-2.internal"],
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
        false,
    );
    health_over(&addr, &ca.pem, Some(&both))
        .await
        .expect("call");
    health_over(&addr, &ca.pem, Some(&dns_only))
        .await
        .expect("call");

    assert_eq!(
        *seen.lock(),
        vec![Some(spiffe.to_owned()), Some("batch.internal".to_owned())]
    );
}

/// Points `link` at `target` in one rename, as Kubernetes swaps a secret
/// volume's `..data`.
fn swap_symlink(link: &Path, target: &Path) {
    let next = link.with_extension("next");
    let _ = std::fs::remove_file(&next);
    std::os::unix::fs::symlink(target, &next).expect("symlink");
    std::fs::rename(&next, link).expect("rename over the link");
}

#[tokio::test]
async fn a_rotated_certificate_reaches_new_connections_while_open_ones_go_on_and_a_bad_pair_is_not_taken()
 {
    let upstream = MockServer::start().await;
    let done = Arc::new(AtomicBool::new(false));
    wiremock::Mock::given(wiremock::matchers::method("GET"))
        .and(wiremock::matchers::path(RECORD_PATH))
        .respond_with(Until {
            task_id: "t_rotate".into(),
            done: done.clone(),
        })
        .mount(&upstream)
        .await;
    let dir = TempDir::new();
    let ca = Ca::new("gateway CA");
    let first = ca.server("gen-1.gateway.test");
    let second = ca.server("gen-2.gateway.test");
    // Each generation in a directory of its own, removed with `dir`.
    let generation = |name: &str, leaf: &Leaf, key: &str| {
        let path = dir.0.join(name);
        std::fs::create_dir_all(&path).expect("dir");
        std::fs::write(path.join("cert.pem"), &leaf.cert).expect("cert");
        std::fs::write(path.join("key.pem"), key).expect("key");
        path
    };
    let current = dir.0.join("current");
    swap_symlink(&current, &generation("gen-1", &first, &first.key));
    let mut settings = test_settings(&upstream.uri());
    let mut tls = TlsSettings::new(current.join("cert.pem"), current.join("key.pem"));
    tls.reload_interval = Duration::from_millis(100);
    settings.grpc_tls = Some(tls);
    let (addr, _stop) = spawn_tls_gateway(settings).await;
    assert_eq!(served_certificate(&addr, &ca.pem).await, first.der);

    // A watch open on the first certificate's connection.
    let channel = tls_channel(&addr, &ca.pem, None).await.expect("connect");
    let mut client = VideoGenerationClient::new(channel);
    let mut stream = client
        .watch_task(watch_request("t_rotate"))
        .await
        .expect("watch")
        .into_inner();
    let first_message: WatchTaskResponse = next_message(&mut stream).await;
    assert_eq!(state_of(&first_message.task), TaskState::Generating);

    swap_symlink(&current, &generation("gen-2", &second, &second.key));
    let rotated = wait_for(Duration::from_secs(5), || async {
        served_certificate(&addr, &ca.pem).await == second.der
    })
    .await;
    assert!(rotated, "a new connection gets the new certificate");

    // The open connection goes on: the same stream sees the task end.
    done.store(true, Ordering::SeqCst);
    let (rest, ended) = drain(&mut stream).await;
    assert!(ended.is_ok(), "{ended:?}");
    assert_eq!(last_task(&rest).state(), TaskState::Succeeded);
    // And takes new calls.
    client
        .get_task(get_request("t_rotate"))
        .await
        .expect("a new call on the open connection");

    // A certificate with someone else's key is not taken.
    let third = ca.server("gen-3.gateway.test");
    swap_symlink(&current, &generation("gen-3", &third, &first.key));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        served_certificate(&addr, &ca.pem).await,
        second.der,
        "a bad pair keeps the last good certificate"
    );
}

#[tokio::test]
async fn half_a_tls_configuration_or_a_mismatched_pair_stops_the_start_with_one_line() {
    let dir = TempDir::new();
    let ca = Ca::new("gateway CA");
    let server = ca.server("gen-1.gateway.test");
    let other = ca.server("gen-2.gateway.test");
    let cert = dir.write("cert.pem", &server.cert);
    let key = dir.write("key.pem", &server.key);
    let other_key = dir.write("other.key", &other.key);
    let path = |p: &Path| p.to_str().expect("utf-8").to_owned();
    // A gateway that starts anyway would serve forever: killed after 20 s.
    let run = async |env: Vec<(&str, String)>| {
        let child = tokio::process::Command::new(BIN)
            .env_clear()
            .env("KIE_API_KEY", TEST_KEY)
            .env("GATEWAY_GRPC_ADDR", "127.0.0.1:0")
            .env("GATEWAY_HTTP_ADDR", "127.0.0.1:0")
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run the gateway");
        tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
            .await
            .expect("the gateway exits at once")
            .expect("its output")
    };

    for (env, wanted) in [
        (
            vec![("GATEWAY_TLS_CERT_FILE", path(&cert))],
            "GATEWAY_TLS_CERT_FILE is set without GATEWAY_TLS_KEY_FILE",
        ),
        (
            vec![("GATEWAY_TLS_KEY_FILE", path(&key))],
            "GATEWAY_TLS_KEY_FILE is set without GATEWAY_TLS_CERT_FILE",
        ),
        (
            vec![("GATEWAY_TLS_CLIENT_CA_FILE", path(&cert))],
            "GATEWAY_TLS_CLIENT_CA_FILE needs GATEWAY_TLS_CERT_FILE",
        ),
    ] {
        let output = run(env).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(wanted), "{stderr}");
    }

    let output = run(vec![
        ("GATEWAY_TLS_CERT_FILE", path(&cert)),
        ("GATEWAY_TLS_KEY_FILE", path(&other_key)),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("do not make a pair"), "{stderr}");
    assert!(
        !stderr.contains("PRIVATE KEY"),
        "no key material in the message: {stderr}"
    );
}

/// mTLS with a callers file: a certificate whose identity a caller entry
/// names is that caller with no token (its name in the metrics, its quota
/// counted); any other valid certificate still needs a token.
#[tokio::test]
async fn a_client_certificate_named_by_a_callers_entry_is_that_caller_without_a_token() {
    use hailuo_gateway::pb::GetQuotaRequest;
    use tonic::Code;

    use crate::callers::*;

    let sim = Sim::start().await;
    let dir = TempDir::new();
    let ca = Ca::new("gateway CA");
    let server = ca.server("gen-1.gateway.test");
    let clients = Ca::new("clients CA");
    let spiffe = "spiffe://example.org/ns/render/sa/farm";
    let farm = clients.leaf(
        &["farm.internal"],
        &[spiffe],
        ExtendedKeyUsagePurpose::ClientAuth,
        false,
    );
    let other = clients.leaf(
        &["other.internal"],
        &["spiffe://example.org/ns/other/sa/app"],
        ExtendedKeyUsagePurpose::ClientAuth,
        false,
    );
    let file = CallersFile::new(&format!(
        "{}{}",
        caller_entry(
            "render-farm",
            RENDER_TOKEN,
            &format!("cert_identity = {spiffe:?}\ncreates_per_day = 1")
        ),
        caller_entry("editorial", EDIT_TOKEN, "")
    ));
    let mut settings = sim.settings(Some(file.path.clone()));
    let mut tls = TlsSettings::new(
        dir.write("cert.pem", &server.cert),
        dir.write("key.pem", &server.key),
    );
    tls.client_ca_file = Some(dir.write("clients.pem", &clients.pem));
    settings.grpc_tls = Some(tls);
    let app = Application::build(settings).await.expect("build app");
    let (addr, admin) = (app.grpc_addr().to_string(), app.admin_addr());
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));

    let mut as_farm = VideoGenerationClient::new(
        tls_channel(&addr, &ca.pem, Some(&farm))
            .await
            .expect("farm"),
    );
    as_farm
        .create_task(sim_request("cat"))
        .await
        .expect("the certificate is render-farm");
    let quota = as_farm
        .get_quota(GetQuotaRequest {})
        .await
        .expect("quota")
        .into_inner();
    assert_eq!(quota.caller, "render-farm");
    let over = as_farm
        .create_task(sim_request("dog"))
        .await
        .expect_err("render-farm's quota applies");
    assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");
    assert_eq!(sim.creates(), 1);

    let other_channel = tls_channel(&addr, &ca.pem, Some(&other))
        .await
        .expect("other");
    let refused = VideoGenerationClient::new(other_channel.clone())
        .create_task(sim_request("cow"))
        .await
        .expect_err("a certificate no caller names is no caller");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert_eq!(error_info(&refused).reason, "CALLER_UNAUTHENTICATED");
    assert_eq!(sim.creates(), 1);
    // With a token, the same connection is the token's caller.
    VideoGenerationClient::new(other_channel)
        .create_task(with_token(sim_request("cow"), EDIT_TOKEN))
        .await
        .expect("editorial by token");

    let metrics = http_client()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for series in [
        r#"hailuo_gateway_rpcs_total{method="CreateTask",caller="render-farm",code="OK"} 1"#,
        r#"hailuo_gateway_rpcs_total{method="CreateTask",caller="render-farm",code="RESOURCE_EXHAUSTED"} 1"#,
        r#"hailuo_gateway_rpcs_total{method="GetQuota",caller="render-farm",code="OK"} 1"#,
        r#"hailuo_gateway_rpcs_total{method="CreateTask",caller="anonymous",code="UNAUTHENTICATED"} 1"#,
        r#"hailuo_gateway_rpcs_total{method="CreateTask",caller="editorial",code="OK"} 1"#,
    ] {
        assert!(metrics.contains(series), "{series} not in:\n{metrics}");
    }
}
