//! TLS (with the `tls` feature): a server with a certificate of our own test CA.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use clipfilter_triton::{Error, Health, Pool, PoolConfig, Tensor, TlsConfig};

use crate::util::{self, TritonServer};

const MODEL: &str = "tiny-clip_image";

/// A CA and a server certificate for `localhost` / 127.0.0.1 it signed, made with openssl.
fn certificates(dir: &Path) {
    let sh = format!(
        r#"set -e
cd '{}'
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=clipfilter-test-ca -keyout ca.key -out ca.pem
openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > san.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext -out server.pem
"#,
        dir.display()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(sh)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "making test certificates with openssl failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn grpcs_with_a_private_ca() {
    let certs = tempfile::tempdir().unwrap();
    certificates(certs.path());
    let repo = util::model_repository("tiny-clip", "image");
    let p = |f: &str| certs.path().join(f).display().to_string();
    let server = TritonServer::start_with(
        repo.path(),
        &[MODEL],
        &[
            "--grpc-use-ssl=true".into(),
            format!("--grpc-server-cert={}", p("server.pem")),
            format!("--grpc-server-key={}", p("server.key")),
            format!("--grpc-root-cert={}", p("ca.pem")),
        ],
    );
    let url = format!("grpcs://127.0.0.1:{}", server.grpc);
    let mut config = PoolConfig::new([url.clone()]).model(MODEL, None);
    config.timeout = Duration::from_secs(20);
    config.tls = Some(TlsConfig {
        ca_certificate: Some(certs.path().join("ca.pem")),
        domain: Some("localhost".into()),
        ..Default::default()
    });
    let pool = Pool::connect(config.clone()).unwrap();
    assert_eq!(
        pool.status()[0].health,
        Health::Ready,
        "{:?}",
        pool.status()
    );
    let input = Tensor::from_f32(
        "pixel_values",
        vec![1, 3, 224, 224],
        &vec![0.5; 3 * 224 * 224],
    )
    .unwrap();
    let out = pool.infer(MODEL, vec![input]).unwrap();
    assert_eq!(out[0].shape(), [1, 32]);

    // without our CA the server's certificate is refused: down, with the reason
    config.tls = None;
    let untrusted = Pool::connect(config.clone()).unwrap();
    let status = &untrusted.status()[0];
    assert_eq!(status.health, Health::Down, "{status:?}");
    let why = status.last_error.clone().unwrap_or_default();
    assert!(
        why.contains("cannot reach") && why.to_lowercase().contains("certificate"),
        "{why}"
    );

    // plain gRPC to a TLS port fails too, it does not hang
    let plain = PoolConfig::new([format!("grpc://127.0.0.1:{}", server.grpc)]);
    let plain = Pool::connect(plain).unwrap();
    assert_eq!(plain.ready_count(), 0);
    let e = plain
        .infer(MODEL, vec![Tensor::from_u8("x", vec![1], vec![0]).unwrap()])
        .unwrap_err();
    assert!(matches!(e, Error::NoReadyEndpoint { .. }), "{e:?}");
}
