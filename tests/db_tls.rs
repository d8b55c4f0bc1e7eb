//! TLS to PostgreSQL, against real clusters: a throwaway one with TLS on
//! (certificates from a CA made here) and the project cluster, which has TLS
//! off. Proves that `sslmode` is honoured, that the server certificate is
//! always verified, that failures say what is wrong without the password,
//! and that the pool and the migrations go through the same path.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use deskgate::db::{self, tls};
use deskgate::platform::secret::Secret;
use diesel::sql_types::Bool;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use support::{free_port, repo_root, run_script, service_env};

const PASSWORD: &str = "deskgate-dev-only";

/// A certificate authority of our own.
fn make_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A server certificate for 127.0.0.1 and localhost signed by `ca`; returns
/// (certificate PEM, key PEM).
fn make_server_cert(ca: &CertifiedIssuer<'static, KeyPair>) -> (String, String) {
    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A throwaway cluster with TLS on; stopped when dropped, even when an
/// assertion failed.
struct TlsCluster {
    script: PathBuf,
    data_dir: PathBuf,
    port: u16,
    /// The CA that signed the server certificate.
    ca: PathBuf,
    /// A CA that signed nothing the server has.
    other_ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl TlsCluster {
    fn start() -> Self {
        let script = PathBuf::from(service_env("DESKGATE_TEST_PG_SCRIPT"));
        let dir = tempfile::Builder::new()
            .prefix("deskgate-tls-pg-")
            .tempdir_in(repo_root().join("target"))
            .unwrap();
        let ca = make_ca("deskgate test CA");
        let (cert_pem, key_pem) = make_server_cert(&ca);
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let ca_path = write("ca.pem", &ca.pem());
        let other_ca_path = write("other-ca.pem", &make_ca("some other CA").pem());
        let cert = write("server.crt", &cert_pem);
        let key = write("server.key", &key_pem);
        let data_dir = dir.path().join("data");
        let port = free_port();
        run_script(
            &script,
            &[
                "start",
                data_dir.to_str().unwrap(),
                &port.to_string(),
                cert.to_str().unwrap(),
                key.to_str().unwrap(),
            ],
        );
        Self {
            script,
            data_dir,
            port,
            ca: ca_path,
            other_ca: other_ca_path,
            _dir: dir,
        }
    }

    /// The cluster's URL through `host` (which may be a name), plus `query`.
    fn url(&self, host: &str, query: &str) -> String {
        format!(
            "postgres://deskgate:{PASSWORD}@{host}:{}/deskgate{query}",
            self.port
        )
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        // Not run_script: a second panic while unwinding would abort.
        let stopped = Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .arg(&self.data_dir)
            .stdin(Stdio::null())
            .status();
        if !matches!(stopped, Ok(s) if s.success()) {
            eprintln!(
                "could not stop the TLS test cluster in {}",
                self.data_dir.display()
            );
        }
    }
}

/// `sslrootcert=<path>`, percent-encoded for a URL.
fn root_cert(path: &Path) -> String {
    let mut out = String::from("sslrootcert=");
    for b in path.to_str().unwrap().bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether this session is encrypted, as the server sees it.
async fn ssl_in_use(conn: &mut AsyncPgConnection) -> bool {
    diesel::select(diesel::dsl::sql::<Bool>(
        "(SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())",
    ))
    .get_result(conn)
    .await
    .unwrap()
}

async fn connects_with_ssl(url: &str) -> bool {
    let mut conn = tls::connect(url)
        .await
        .unwrap_or_else(|e| panic!("{url} must connect: {e}"));
    ssl_in_use(&mut conn).await
}

/// The error of a connection that must fail; checks it hides the password.
async fn refused(url: &str) -> String {
    let Err(err) = tls::connect(url).await else {
        panic!("{url} must not connect");
    };
    let text = err.to_string();
    assert!(!text.contains(PASSWORD), "the password leaked: {text}");
    assert!(
        !format!("{err:?}").contains(PASSWORD),
        "the password leaked: {err:?}"
    );
    text
}

// One cluster for every case: starting one costs seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_cluster_connections_are_verified_and_encrypted() {
    let cluster = TlsCluster::start();
    let ca = root_cert(&cluster.ca);

    // The CA that signed the server: encrypted, by IP and by name.
    assert!(connects_with_ssl(&cluster.url("127.0.0.1", &format!("?sslmode=require&{ca}"))).await);
    assert!(
        connects_with_ssl(&cluster.url("localhost", &format!("?sslmode=verify-full&{ca}"))).await
    );
    assert!(connects_with_ssl(&cluster.url("127.0.0.1", &format!("?sslmode=prefer&{ca}"))).await);

    // No sslmode: plain TCP, as before, even though the server offers TLS.
    assert!(!connects_with_ssl(&cluster.url("127.0.0.1", "")).await);
    assert!(!connects_with_ssl(&cluster.url("127.0.0.1", "?sslmode=disable")).await);

    // Without sslrootcert the OS roots are used, and they do not know our CA.
    let err = refused(&cluster.url("127.0.0.1", "?sslmode=require")).await;
    assert!(
        err.contains("certificate of the server at 127.0.0.1:")
            && err.contains("is not trusted")
            && err.contains("the OS root store")
            && err.contains("not signed by a trusted certificate authority"),
        "{err}"
    );
    // prefer does not fall back to plain text when the certificate is bad.
    let err = refused(&cluster.url("127.0.0.1", "?sslmode=prefer")).await;
    assert!(err.contains("is not trusted"), "{err}");
    // Another CA is no better.
    let other = root_cert(&cluster.other_ca);
    let err = refused(&cluster.url("127.0.0.1", &format!("?sslmode=require&{other}"))).await;
    assert!(
        err.contains("is not trusted")
            && err.contains(&format!("sslrootcert {}", cluster.other_ca.display())),
        "{err}"
    );

    // A host name the certificate does not carry: verify-ca accepts it (the
    // chain is good), verify-full and require do not.
    let wrong_name = |mode: &str| {
        cluster.url(
            "db.invalid",
            &format!("?hostaddr=127.0.0.1&sslmode={mode}&{ca}"),
        )
    };
    assert!(connects_with_ssl(&wrong_name("verify-ca")).await);
    for mode in ["verify-full", "require"] {
        let err = refused(&wrong_name(mode)).await;
        assert!(
            err.contains("db.invalid") && err.contains("not valid for the host name"),
            "{mode}: {err}"
        );
    }

    // A CA file that is not there is named.
    let missing = cluster.ca.with_file_name("missing.pem");
    let err = refused(&cluster.url(
        "127.0.0.1",
        &format!("?sslmode=require&{}", root_cert(&missing)),
    ))
    .await;
    assert!(
        err.starts_with(&format!("cannot read sslrootcert {}", missing.display())),
        "{err}"
    );

    // The pool and the migrations take the same path.
    let url = Secret::new(cluster.url("127.0.0.1", &format!("?sslmode=verify-full&{ca}")));
    let pool = db::pool(&url).expect("the pool builds");
    let mut conn = pool.get().await.expect("a pooled TLS connection");
    assert!(ssl_in_use(&mut conn).await);
    drop(conn);
    let applied = db::migrate(&url).await.expect("migrations run over TLS");
    assert!(!applied.is_empty(), "a fresh cluster gets every migration");

    let bad = Secret::new(cluster.url("127.0.0.1", "?sslmode=verify_full"));
    let Err(err) = db::pool(&bad) else {
        panic!("a bad sslmode must stop the pool");
    };
    let err = err.to_string();
    assert!(err.contains("unknown sslmode `verify_full`"), "{err}");
    let err = db::migrate(&Secret::new(cluster.url("127.0.0.1", "?sslmode=require")))
        .await
        .expect_err("an untrusted server gets no migrations")
        .to_string();
    assert!(err.contains("is not trusted"), "{err}");
    assert!(!err.contains(PASSWORD), "{err}");
}

#[tokio::test]
async fn require_against_a_server_without_tls_fails_clearly() {
    let project = service_env("DESKGATE_DATABASE_URL");
    assert!(
        !project.contains('?'),
        "expected a project URL without parameters: {project}"
    );
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, make_ca("unused CA").pem()).unwrap();
    let ca = root_cert(&ca_path);

    for mode in ["require", "verify-full"] {
        let err = refused(&format!("{project}?sslmode={mode}&{ca}")).await;
        assert!(
            err.contains("does not support TLS") && err.contains(&format!("sslmode={mode}")),
            "{err}"
        );
    }
    // prefer settles for plain text when the server has no TLS.
    assert!(!connects_with_ssl(&format!("{project}?sslmode=prefer&{ca}")).await);
    assert!(!connects_with_ssl(&project).await);
}
