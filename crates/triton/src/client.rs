//! One endpoint: its address, its gRPC channel and the KServe v2 calls on it (async; the pool
//! drives them from its own runtime). Every call has a deadline; every answer is checked before
//! it becomes a [`Tensor`] or [`ModelMetadata`].

use std::future::Future;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::address::Address;
use crate::config::{PoolConfig, TlsConfig};
use crate::error::{Error, Result};
use crate::metadata::{ModelMetadata, TensorSpec};
use crate::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use crate::proto::inference::{
    InferTensorContents, ModelInferRequest, ModelInferResponse, ModelMetadataRequest,
    ModelReadyRequest, ServerLiveRequest, ServerReadyRequest, model_infer_request,
};
use crate::tensor::{DataType, Tensor};

/// The client of one endpoint. Cheap to clone (the channel is shared).
#[derive(Clone)]
pub(crate) struct Client {
    pub(crate) address: Address,
    grpc: GrpcInferenceServiceClient<Channel>,
}

impl Client {
    /// A client whose channel connects lazily (at the first call, and again after a failure).
    /// Must be called within the pool's runtime (the channel spawns its worker there).
    pub(crate) fn new(address: Address, config: &PoolConfig) -> Result<Self> {
        let bad = |reason: String| Error::config(format!("endpoint '{}'", address.name), reason);
        let mut endpoint = Endpoint::from_shared(address.uri.clone())
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true);
        if address.tls {
            endpoint = with_tls(endpoint, &address, config.tls.as_ref())?;
        } else if config.tls.is_some() {
            return Err(bad(
                "TLS settings are given but this endpoint is plain grpc:// (use grpcs://)".into(),
            ));
        }
        let channel = endpoint.connect_lazy();
        let grpc = GrpcInferenceServiceClient::new(channel)
            .max_decoding_message_size(config.max_message_bytes)
            .max_encoding_message_size(config.max_message_bytes);
        Ok(Client { address, grpc })
    }

    pub(crate) fn name(&self) -> &str {
        &self.address.name
    }

    /// Runs one call with a deadline (sent to the server as grpc-timeout too) and maps failures
    /// to typed errors naming this endpoint.
    async fn call<T, F, Fut>(
        &self,
        operation: &'static str,
        model: Option<&str>,
        timeout: Duration,
        call: F,
    ) -> Result<T>
    where
        F: FnOnce(GrpcInferenceServiceClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        match tokio::time::timeout(timeout, call(self.grpc.clone())).await {
            Err(_) => Err(Error::Timeout {
                endpoint: self.address.name.clone(),
                model: model.map(str::to_string),
                operation,
                timeout,
            }),
            Ok(Err(status)) => Err(self.status_error(operation, model, status, timeout)),
            Ok(Ok(response)) => Ok(response.into_inner()),
        }
    }

    fn status_error(
        &self,
        operation: &'static str,
        model: Option<&str>,
        status: tonic::Status,
        timeout: Duration,
    ) -> Error {
        let endpoint = self.address.name.clone();
        let model = model.map(str::to_string);
        // A connection that cannot be made or broke comes back as Unavailable with the transport
        // error as its source; a server's own Unavailable has none.
        if status.code() == tonic::Code::Unavailable
            && let Some(source) = std::error::Error::source(&status)
        {
            return Error::Unreachable {
                endpoint,
                model,
                operation,
                cause: error_chain(source),
            };
        }
        // The channel enforces the request's grpc-timeout itself and reports it as Cancelled.
        let expired = status.code() == tonic::Code::Cancelled
            && (std::error::Error::source(&status)
                .is_some_and(|s| s.downcast_ref::<tonic::TimeoutExpired>().is_some())
                || status.message() == tonic::TimeoutExpired(()).to_string());
        if expired || status.code() == tonic::Code::DeadlineExceeded {
            return Error::Timeout {
                endpoint,
                model,
                operation,
                timeout,
            };
        }
        Error::Status {
            endpoint,
            model,
            operation,
            code: status.code(),
            message: status.message().to_string(),
        }
    }

    fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(timeout);
        request
    }

    pub(crate) async fn server_live(&self, timeout: Duration) -> Result<bool> {
        let r = self
            .call("server live", None, timeout, |mut c| async move {
                c.server_live(Self::request(ServerLiveRequest {}, timeout))
                    .await
            })
            .await?;
        Ok(r.live)
    }

    pub(crate) async fn server_ready(&self, timeout: Duration) -> Result<bool> {
        let r = self
            .call("server ready", None, timeout, |mut c| async move {
                c.server_ready(Self::request(ServerReadyRequest {}, timeout))
                    .await
            })
            .await?;
        Ok(r.ready)
    }

    pub(crate) async fn model_ready(&self, model: &str, timeout: Duration) -> Result<bool> {
        let message = ModelReadyRequest {
            name: model.to_string(),
            version: String::new(),
        };
        let r = self
            .call("model ready", Some(model), timeout, |mut c| async move {
                c.model_ready(Self::request(message, timeout)).await
            })
            .await?;
        Ok(r.ready)
    }

    pub(crate) async fn model_metadata(
        &self,
        model: &str,
        timeout: Duration,
    ) -> Result<ModelMetadata> {
        let message = ModelMetadataRequest {
            name: model.to_string(),
            version: String::new(),
        };
        let r = self
            .call("model metadata", Some(model), timeout, |mut c| async move {
                c.model_metadata(Self::request(message, timeout)).await
            })
            .await?;
        let spec =
            |t: crate::proto::inference::model_metadata_response::TensorMetadata| TensorSpec {
                name: t.name,
                datatype: t.datatype,
                shape: t.shape,
            };
        Ok(ModelMetadata {
            name: r.name,
            versions: r.versions,
            platform: r.platform,
            inputs: r.inputs.into_iter().map(spec).collect(),
            outputs: r.outputs.into_iter().map(spec).collect(),
        })
    }

    /// One inference: inputs travel as `raw_input_contents`; every output the model has comes back.
    pub(crate) async fn infer(
        &self,
        model: &str,
        inputs: Vec<Tensor>,
        timeout: Duration,
    ) -> Result<Vec<Tensor>> {
        let mut message = ModelInferRequest {
            model_name: model.to_string(),
            ..Default::default()
        };
        for tensor in inputs {
            let (name, datatype, shape, data) = tensor.into_parts();
            message.inputs.push(model_infer_request::InferInputTensor {
                name,
                datatype: datatype.as_str().to_string(),
                shape: shape.iter().map(|&d| d as i64).collect(),
                ..Default::default()
            });
            message.raw_input_contents.push(data);
        }
        let response = self
            .call("infer", Some(model), timeout, |mut c| async move {
                c.model_infer(Self::request(message, timeout)).await
            })
            .await?;
        self.outputs(model, response)
    }

    /// The response's outputs as checked tensors (raw contents, or typed contents from servers
    /// that send those).
    fn outputs(&self, model: &str, response: ModelInferResponse) -> Result<Vec<Tensor>> {
        let bad = |reason: String| Error::BadResponse {
            endpoint: self.address.name.clone(),
            model: model.to_string(),
            reason,
        };
        let raw = response.raw_output_contents;
        if !raw.is_empty() && raw.len() != response.outputs.len() {
            return Err(bad(format!(
                "{} outputs but {} raw output buffers",
                response.outputs.len(),
                raw.len()
            )));
        }
        let mut tensors = Vec::with_capacity(response.outputs.len());
        for (i, output) in response.outputs.into_iter().enumerate() {
            let datatype = DataType::parse(&output.datatype).ok_or_else(|| {
                bad(format!(
                    "output '{}' has data type '{}', which this client does not read",
                    output.name, output.datatype
                ))
            })?;
            let shape = output
                .shape
                .iter()
                .map(|&d| usize::try_from(d))
                .collect::<std::result::Result<Vec<usize>, _>>()
                .map_err(|_| {
                    bad(format!(
                        "output '{}' has a negative dimension in shape {:?}",
                        output.name, output.shape
                    ))
                })?;
            let data = match raw.get(i) {
                Some(bytes) => bytes.clone(),
                None => {
                    let contents = output.contents.unwrap_or_default();
                    typed_contents(datatype, &contents).ok_or_else(|| {
                        bad(format!(
                            "output '{}' has neither raw nor {} contents",
                            output.name, datatype
                        ))
                    })?
                }
            };
            let tensor =
                Tensor::new(output.name, datatype, shape, data).map_err(|e| bad(e.to_string()))?;
            tensors.push(tensor);
        }
        Ok(tensors)
    }
}

/// Typed `contents` of an output as little-endian bytes (for servers that do not send raw ones).
fn typed_contents(datatype: DataType, c: &InferTensorContents) -> Option<bytes::Bytes> {
    fn le<T: Copy, const N: usize>(values: &[T], to: impl Fn(T) -> [u8; N]) -> Vec<u8> {
        values.iter().flat_map(|&v| to(v)).collect()
    }
    let data = match datatype {
        DataType::Fp32 if !c.fp32_contents.is_empty() => le(&c.fp32_contents, f32::to_le_bytes),
        DataType::Fp64 if !c.fp64_contents.is_empty() => le(&c.fp64_contents, f64::to_le_bytes),
        DataType::Int64 if !c.int64_contents.is_empty() => le(&c.int64_contents, i64::to_le_bytes),
        DataType::Int32 if !c.int_contents.is_empty() => le(&c.int_contents, i32::to_le_bytes),
        _ => return None,
    };
    Some(data.into())
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

#[cfg(feature = "tls")]
fn with_tls(endpoint: Endpoint, address: &Address, tls: Option<&TlsConfig>) -> Result<Endpoint> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let bad = |reason: String| Error::config(format!("endpoint '{}' TLS", address.name), reason);
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|cause| Error::Io {
            path: path.to_path_buf(),
            cause,
        })
    };
    let mut config = ClientTlsConfig::new().with_native_roots();
    if let Some(tls) = tls {
        if let Some(ca) = &tls.ca_certificate {
            config = config.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        match (&tls.client_certificate, &tls.client_key) {
            (Some(cert), Some(key)) => {
                config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            (None, None) => {}
            _ => {
                return Err(bad(
                    "client_certificate and client_key go together (mutual TLS needs both)".into(),
                ));
            }
        }
        if let Some(domain) = &tls.domain {
            config = config.domain_name(domain.clone());
        }
    }
    endpoint
        .tls_config(config)
        .map_err(|e| bad(error_chain(&e)))
}

#[cfg(not(feature = "tls"))]
fn with_tls(_endpoint: Endpoint, address: &Address, _tls: Option<&TlsConfig>) -> Result<Endpoint> {
    Err(Error::TlsUnsupported {
        endpoint: address.name.clone(),
    })
}
