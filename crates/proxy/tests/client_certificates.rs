//! One set of client-certificate rules for both transports: one matrix of certificates, each
//! presented over TLS and over DTLS, must be accepted or refused alike.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

type Issuer = CertifiedIssuer<'static, KeyPair>;

fn ca_params(cn: &str, constraints: BasicConstraints) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(constraints);
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn new_root(cn: &str, constraints: BasicConstraints) -> Issuer {
    CertifiedIssuer::self_signed(
        ca_params(cn, constraints),
        KeyPair::generate().expect("key"),
    )
    .expect("root")
}

fn intermediate(cn: &str, by: &Issuer) -> Issuer {
    CertifiedIssuer::signed_by(
        ca_params(cn, BasicConstraints::Unconstrained),
        KeyPair::generate().expect("key"),
        by,
    )
    .expect("intermediate")
}

fn client_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

/// Writes a client's chain (leaf first) and key; returns the two paths.
fn write_client(dir: &Path, name: &str, chain: &[String], key: &KeyPair) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}-key.pem"));
    std::fs::write(&cert, chain.concat()).expect("write");
    std::fs::write(&key_path, key.serialize_pem()).expect("write");
    (cert, key_path)
}

fn leaf(
    dir: &Path,
    name: &str,
    params: CertificateParams,
    by: &Issuer,
    chain: &[String],
) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, by).expect("sign");
    let mut all = vec![cert.pem()];
    all.extend_from_slice(chain);
    write_client(dir, name, &all, &key)
}

struct Case {
    name: &'static str,
    cert: PathBuf,
    key: PathBuf,
    accepted: bool,
}

/// The matrix. `ca.pem` holds `root` and `strict` (a CA with path length 0).
fn matrix(dir: &Path) -> Vec<Case> {
    let root = new_root("matrix root", BasicConstraints::Unconstrained);
    let strict = new_root("matrix strict root", BasicConstraints::Constrained(0));
    std::fs::write(
        dir.join("ca.pem"),
        format!("{}{}", root.pem(), strict.pem()),
    )
    .expect("write");
    let server_key = KeyPair::generate().expect("key");
    let mut server =
        CertificateParams::new(vec![proto::DEFAULT_SERVER_NAME.to_owned()]).expect("params");
    server
        .distinguished_name
        .push(DnType::CommonName, proto::DEFAULT_SERVER_NAME);
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server.signed_by(&server_key, &root).expect("server");
    write_client(dir, "server", &[server_cert.pem()], &server_key);

    let inter = intermediate("matrix intermediate", &root);
    let strict_inter = intermediate("matrix intermediate under pathlen 0", &strict);
    let other = new_root("some other root", BasicConstraints::Unconstrained);

    let mut cases = Vec::new();
    let mut case = |name, (cert, key), accepted| {
        cases.push(Case {
            name,
            cert,
            key,
            accepted,
        })
    };
    case(
        "a leaf of the CA",
        leaf(dir, "ok", client_params("ok"), &root, &[]),
        true,
    );
    case(
        "a leaf of the pathlen-0 CA",
        leaf(dir, "ok-strict", client_params("ok2"), &strict, &[]),
        true,
    );
    // The CA itself, presented with its own key.
    let ca_key = KeyPair::generate().expect("key");
    let self_ca = ca_params("self CA", BasicConstraints::Unconstrained)
        .self_signed(&ca_key)
        .expect("self");
    std::fs::write(
        dir.join("ca.pem"),
        format!("{}{}{}", root.pem(), strict.pem(), self_ca.pem()),
    )
    .expect("write");
    case(
        "a CA of the CA file itself",
        write_client(dir, "self-ca", &[self_ca.pem()], &ca_key),
        false,
    );
    case(
        "a CA certificate issued by the CA",
        leaf(
            dir,
            "sub-ca",
            ca_params("sub CA", BasicConstraints::Unconstrained),
            &root,
            &[],
        ),
        false,
    );
    case(
        "a leaf through an intermediate",
        leaf(
            dir,
            "via-inter",
            client_params("via"),
            &inter,
            &[inter.pem()],
        ),
        false,
    );
    case(
        "a leaf through an intermediate under a pathlen-0 CA",
        leaf(
            dir,
            "via-strict",
            client_params("via2"),
            &strict_inter,
            &[strict_inter.pem()],
        ),
        false,
    );
    let mut server_only = client_params("server-only");
    server_only.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    case(
        "a leaf for server auth only",
        leaf(dir, "server-eku", server_only, &root, &[]),
        false,
    );
    let mut no_sign = client_params("no-sign");
    no_sign.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
    case(
        "a leaf whose key may not sign",
        leaf(dir, "no-sign", no_sign, &root, &[]),
        false,
    );
    let mut expired = client_params("expired");
    expired.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(30);
    expired.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    case(
        "an expired leaf",
        leaf(dir, "expired", expired, &root, &[]),
        false,
    );
    case(
        "a leaf of another CA",
        leaf(dir, "other", client_params("other"), &other, &[]),
        false,
    );
    cases
}

async fn tls_accepts(dir: &Path, case: &Case) -> bool {
    let creds = tls::ServerCredentials::load(tls::ServerPaths::new(
        dir.join("server.pem"),
        dir.join("server-key.pem"),
        dir.join("ca.pem"),
    ))
    .expect("server credentials");
    let config = tls::ServerConfig::builder(&creds)
        .build()
        .expect("server config");
    let acceptor = tls::Acceptor::new(&config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (tcp, peer) = listener.accept().await.expect("accept");
        acceptor.accept(tcp, peer).await.is_ok()
    });
    let client = tls::ClientConfigBuilder::new(
        &tls::CaCerts::from_pem_file(dir.join("ca.pem")).expect("ca"),
        &tls::Identity::from_pem_files(&case.cert, &case.key).expect("identity"),
    )
    .build()
    .expect("client config");
    let _stream = tls::connect_to(addr, &client).await;
    server.await.expect("server task")
}

async fn dtls_accepts(dir: &Path, case: &Case) -> bool {
    let config = dtls::ServerConfig::new(
        dtls::Identity::from_pem_files(dir.join("server.pem"), dir.join("server-key.pem"))
            .expect("identity"),
        dtls::CaCerts::from_pem_file(dir.join("ca.pem")).expect("ca"),
    );
    let mut listener = dtls::DtlsListener::bind("127.0.0.1:0".parse().expect("addr"), config)
        .await
        .expect("bind");
    let addr: SocketAddr = listener.local_addr();
    let handle = listener.handle();
    let client = dtls::ClientConfig::new(
        dtls::Identity::from_pem_files(&case.cert, &case.key).expect("identity"),
        dtls::CaCerts::from_pem_file(dir.join("ca.pem")).expect("ca"),
    );
    let connecting = tokio::spawn(async move { dtls::connect(addr, &client).await.is_ok() });
    // The server's verdict: a session accepted, or a failed handshake counted.
    let verdict = async {
        loop {
            if handle.stats().handshakes_failed > 0 {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let accepted = tokio::select! {
        session = listener.accept() => session.is_ok(),
        failed = verdict => failed,
    };
    connecting.abort();
    accepted
}

#[tokio::test]
async fn both_transports_accept_and_refuse_the_same_client_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut wrong = Vec::new();
    for case in matrix(dir.path()) {
        let tls = tls_accepts(dir.path(), &case).await;
        let dtls = dtls_accepts(dir.path(), &case).await;
        if tls != case.accepted || dtls != case.accepted {
            wrong.push(format!(
                "{}: want {}, TLS {}, DTLS {}",
                case.name, case.accepted, tls, dtls
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
