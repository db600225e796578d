//! TLS (with the `tls` feature): a server with a certificate of our own test CA.

use std::time::Duration;

use clipfilter_triton::{Error, Health, Pool, PoolConfig, Tensor, TlsConfig};

use crate::util::{self, TritonServer};

const MODEL: &str = "tiny-clip_image";

#[test]
fn grpcs_with_a_private_ca() {
    let certs = tempfile::tempdir().unwrap();
    util::certificates(certs.path());
    let repo = util::model_repository("tiny-clip", "image");
    let server = TritonServer::start_with(repo.path(), &[MODEL], &util::tls_args(certs.path()));
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
