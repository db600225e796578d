//! Endpoint addresses as configured: `grpc://host:port`, `grpcs://host:port`, `host:port`.

use tonic::codegen::http::Uri;

use crate::error::{Error, Result};

/// Triton's default gRPC port, used when an address has none.
pub const DEFAULT_PORT: u16 = 8001;

/// A parsed endpoint address: `grpc://host:port` (plain), `grpcs://host:port` (TLS);
/// `http://` and `https://` mean the same, a bare `host:port` is plain, the port defaults to 8001.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Address {
    /// As configured, for messages.
    pub(crate) name: String,
    /// `http://host:port` or `https://host:port`, for the channel.
    pub(crate) uri: String,
    pub(crate) tls: bool,
}

/// Checks an endpoint address as [`crate::Pool::connect`] will read it (`grpc://host:port`,
/// `grpcs://host:port`, `host:port`), so that a configuration can be refused before anything
/// starts; the error says what is wrong.
pub fn check_endpoint(text: &str) -> Result<()> {
    Address::parse(text).map(|_| ())
}

impl Address {
    pub(crate) fn parse(text: &str) -> Result<Self> {
        let name = text.trim().to_string();
        let bad = |reason: &str| Error::config(format!("endpoint '{name}'"), reason);
        if name.is_empty() {
            return Err(bad("empty address"));
        }
        let (scheme, rest) = name.split_once("://").unwrap_or(("grpc", name.as_str()));
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "grpc" | "http" => false,
            "grpcs" | "https" => true,
            other => {
                return Err(bad(&format!(
                    "unknown scheme '{other}' (use grpc://host:port or grpcs://host:port)"
                )));
            }
        };
        let uri: Uri = format!("http://{rest}")
            .parse()
            .map_err(|e| bad(&format!("not a host:port address ({e})")))?;
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad("a gRPC endpoint is host:port, without a path or query"));
        }
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        if authority.contains('@') {
            return Err(bad("user information is not supported in an endpoint"));
        }
        // host, host:port, [v6], [v6]:port
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !authority.ends_with(']') => (host, Some(port)),
            _ => (authority, None),
        };
        if host.is_empty() || host == "[]" {
            return Err(bad("no host"));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| bad(&format!("port '{p}' is not 1-65535")))?,
        };
        let uri = format!("{}://{host}:{port}", if tls { "https" } else { "http" });
        Ok(Address { name, uri, tls })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let a = Address::parse("grpc://gpu1:8001").unwrap();
        assert_eq!((a.uri.as_str(), a.tls), ("http://gpu1:8001", false));
        let a = Address::parse(" gpu1 ").unwrap();
        assert_eq!(a.uri, "http://gpu1:8001");
        assert_eq!(a.name, "gpu1");
        let a = Address::parse("grpcs://[::1]:9000").unwrap();
        assert_eq!((a.uri.as_str(), a.tls), ("https://[::1]:9000", true));
        assert_eq!(
            Address::parse("127.0.0.1:18001").unwrap().uri,
            "http://127.0.0.1:18001"
        );
        for bad in [
            "",
            "ftp://x:1",
            "grpc://host:1/path",
            "grpc://:80",
            "grpc://h:99999",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad:?} accepted");
        }
        let e = Address::parse("tcp://x:1").unwrap_err().to_string();
        assert_eq!(
            e,
            "Triton configuration, endpoint 'tcp://x:1': unknown scheme 'tcp' (use grpc://host:port or grpcs://host:port)"
        );
    }
}
