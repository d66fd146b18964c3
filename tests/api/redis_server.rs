//! A `redis-server` of the test's own on a free loopback port, with no
//! persistence, that a test can stop and start again. Never the shared one
//! on 6379: every test owns its Redis.
//!
//! `start_tls` serves TLS only (rediss://), with certificates made by a CA
//! of the test's own ([`Pki`]), no external tool needed.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hailuo_gateway::config::{RedisSettings, RedisTlsFiles};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    tls: Option<Tls>,
    password: Option<String>,
}

/// How a TLS Redis is set up.
pub struct Tls {
    /// The CA that signed Redis's certificate (and the client's).
    pub pki: Pki,
    /// Redis asks for a client certificate signed by that CA (mutual TLS).
    pub auth_clients: bool,
}

impl RedisServer {
    pub async fn start() -> Self {
        Self::start_with(None, None).await
    }

    /// A Redis that speaks TLS only (no plain port), on certificates made
    /// now, asking for a password when `password` is set.
    pub async fn start_tls(auth_clients: bool, password: Option<&str>) -> Self {
        let tls = Tls {
            pki: Pki::generate(),
            auth_clients,
        };
        Self::start_with(Some(tls), password.map(str::to_owned)).await
    }

    async fn start_with(tls: Option<Tls>, password: Option<String>) -> Self {
        // A port the kernel just handed out, free again once dropped.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut server = Self {
            port,
            child: None,
            tls,
            password,
        };
        server.restart().await;
        server
    }

    /// Starts it (again, empty) on the same port.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut command = Command::new("redis-server");
        match &self.tls {
            None => command.args(["--port", &self.port.to_string()]),
            Some(tls) => {
                let path = |p: &PathBuf| p.to_str().expect("utf-8 path").to_owned();
                let auth = if tls.auth_clients { "yes" } else { "no" };
                command
                    .args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .args(["--tls-cert-file", &path(&tls.pki.server_cert)])
                    .args(["--tls-key-file", &path(&tls.pki.server_key)])
                    .args(["--tls-ca-cert-file", &path(&tls.pki.ca)])
                    .args(["--tls-auth-clients", auth])
            }
        };
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let child = command
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (scripts/test.sh installs it)");
        self.child = Some(child);
        let up = crate::helpers::wait_for(Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
        })
        .await;
        assert!(up, "redis-server did not listen on {}", self.port);
    }

    /// Stops it (SIGKILL: as abrupt as a crash) and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The CA and certificates of a TLS Redis.
    pub fn pki(&self) -> &Pki {
        &self.tls.as_ref().expect("a TLS Redis").pki
    }

    /// The URL a gateway uses (rediss:// for a TLS Redis, with the password
    /// if there is one).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        let auth = match &self.password {
            Some(password) => format!(":{password}@"),
            None => String::new(),
        };
        format!("{scheme}://{auth}127.0.0.1:{}/0", self.port)
    }

    /// Settings for a gateway: for a TLS Redis, its CA trusted and, if
    /// Redis asks for one, the client certificate presented.
    pub fn settings(&self) -> RedisSettings {
        let tls = match &self.tls {
            None => RedisTlsFiles::default(),
            Some(tls) => RedisTlsFiles {
                ca: Some(tls.pki.ca.clone()),
                client_cert: tls.auth_clients.then(|| tls.pki.client_cert.clone()),
                client_key: tls.auth_clients.then(|| tls.pki.client_key.clone()),
            },
        };
        RedisSettings {
            url: self.url().parse().expect("url"),
            prefix: "test-gateway".into(),
            tls,
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A CA of the test's own and the certificates it signed, as PEM files in
/// a directory removed on drop: Redis's (for 127.0.0.1) and a client's.
pub struct Pki {
    dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    pub fn generate() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("hailuo-gateway-pki-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("pki dir");
        let write = |name: &str, pem: String| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("write pem");
            path
        };

        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, format!("hailuo-gateway test CA {n}"));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("ca key"))
            .expect("ca cert");
        let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(names).expect("params");
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &ca).expect("signed");
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) =
            leaf(vec!["gateway".into()], ExtendedKeyUsagePurpose::ClientAuth);
        Self {
            ca: write("ca.pem", ca.pem()),
            server_cert: write("redis.pem", server_cert),
            server_key: write("redis.key", server_key),
            client_cert: write("client.pem", client_cert),
            client_key: write("client.key", client_key),
            dir,
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
