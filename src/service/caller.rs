//! Who is calling, for the failed-validation guard. Behind a gateway the
//! peer address is the gateway's, shared by every client, so the caller
//! can be named by a request header instead (gRPC metadata or an HTTP
//! header, e.g. `x-forwarded-for`, whose `hop`-th entry from the right is
//! the address the trusted proxy in front of sluice saw). A domain's
//! `caller_entry` (a descriptor entry such as Envoy's `remote_address`)
//! wins over both for `ShouldRateLimit`.

use std::net::IpAddr;

/// Longest caller id taken from a header; a longer entry is ignored.
pub const MAX_CALLER_ID: usize = 256;

/// Where a caller's id comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallerSource {
    /// The header naming the caller, lowercase; `None`: the peer address.
    pub header: Option<String>,
    /// For a comma-separated list, which entry counted from the right
    /// (1 = the rightmost, the one the nearest proxy added).
    pub hop: usize,
}

impl Default for CallerSource {
    fn default() -> Self {
        CallerSource {
            header: None,
            hop: 1,
        }
    }
}

impl CallerSource {
    /// The configured header, if any.
    pub fn header(&self) -> Option<&str> {
        self.header.as_deref()
    }

    /// The caller's id: the header's entry at `hop` when the header is
    /// configured and has one (visible ASCII, at most
    /// [`MAX_CALLER_ID`] bytes), else the peer's address.
    pub fn caller_id(&self, header_value: Option<&[u8]>, peer: Option<IpAddr>) -> Option<String> {
        if self.header.is_some()
            && let Some(id) = header_value.and_then(|v| self.entry(v))
        {
            return Some(id);
        }
        peer.map(|p| p.to_string())
    }

    fn entry(&self, value: &[u8]) -> Option<String> {
        let text = std::str::from_utf8(value).ok()?;
        let entry = text.rsplit(',').nth(self.hop.max(1) - 1)?.trim();
        (!entry.is_empty()
            && entry.len() <= MAX_CALLER_ID
            && entry.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| entry.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(hop: usize) -> CallerSource {
        CallerSource {
            header: Some("x-forwarded-for".into()),
            hop,
        }
    }

    #[test]
    fn the_trusted_hop_of_a_list_names_the_caller() {
        let peer = Some(IpAddr::from([10, 0, 0, 1]));
        let v = b"203.0.113.9, 198.51.100.7, 192.0.2.4";
        assert_eq!(
            xff(1).caller_id(Some(v), peer).as_deref(),
            Some("192.0.2.4")
        );
        assert_eq!(
            xff(2).caller_id(Some(v), peer).as_deref(),
            Some("198.51.100.7")
        );
        // Fewer entries than hops: not through the trusted proxies.
        assert_eq!(xff(4).caller_id(Some(v), peer).as_deref(), Some("10.0.0.1"));
        assert_eq!(xff(1).caller_id(None, peer).as_deref(), Some("10.0.0.1"));
        assert_eq!(
            xff(1).caller_id(Some(b"a, "), peer).as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(
            xff(1)
                .caller_id(Some("x\u{7f}".as_bytes()), peer)
                .as_deref(),
            Some("10.0.0.1")
        );
        let long = vec![b'a'; MAX_CALLER_ID + 1];
        assert_eq!(
            xff(1).caller_id(Some(&long), peer).as_deref(),
            Some("10.0.0.1")
        );
        // No header configured: the peer, whatever the request says.
        assert_eq!(
            CallerSource::default().caller_id(Some(v), peer).as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(CallerSource::default().caller_id(None, None), None);
    }
}
