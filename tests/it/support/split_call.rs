//! A `ShouldRateLimit` call over a raw HTTP/2 connection (the `h2`
//! crate), whose headers and message are sent at moments the test picks:
//! for calls open across SIGTERM, or held open to fill the concurrency
//! bound.

use std::time::Duration;

use prost::Message as _;

use sluice::grpc::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};

/// grpc-status and, for OK, the decoded response; or why there was no
/// answer.
pub type Answer = Result<(String, Option<RateLimitResponse>), String>;

/// A `ShouldRateLimit` call over a raw HTTP/2 connection whose headers are
/// sent (and known to have been read by sluice) before its message.
pub struct SplitCall {
    body: h2::SendStream<bytes::Bytes>,
    response: h2::client::ResponseFuture,
    _conn: tokio::task::JoinHandle<()>,
}

impl SplitCall {
    pub async fn open(addr: std::net::SocketAddr) -> SplitCall {
        SplitCall::open_with(addr, &[]).await
    }

    /// [`open`](Self::open) with extra request headers (e.g. `grpc-timeout`).
    pub async fn open_with(addr: std::net::SocketAddr, headers: &[(&str, &str)]) -> SplitCall {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (client, mut conn) = h2::client::handshake(tcp).await.unwrap();
        let mut ping = conn.ping_pong().unwrap();
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut client = client.ready().await.unwrap();
        let mut request = http::Request::builder()
            .method("POST")
            .uri(format!(
                "http://{addr}/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request.body(()).unwrap();
        let (response, body) = client.send_request(request, false).unwrap();
        // The server answers a PING only after reading every frame before
        // it: once the PONG is back, sluice has the call's headers.
        tokio::time::timeout(Duration::from_secs(5), ping.ping(h2::Ping::opaque()))
            .await
            .unwrap()
            .unwrap();
        SplitCall {
            body,
            response,
            _conn: conn,
        }
    }

    /// Sends the message and returns the call's answer (grpc-status and
    /// decoded response), or why there was none.
    pub async fn finish(mut self, msg: &RateLimitRequest) -> Answer {
        let encoded = msg.encode_to_vec();
        let mut framed = Vec::with_capacity(5 + encoded.len());
        framed.push(0);
        framed.extend_from_slice(&u32::try_from(encoded.len()).unwrap().to_be_bytes());
        framed.extend_from_slice(&encoded);
        self.body
            .send_data(framed.into(), true)
            .map_err(|e| format!("sending the message: {e}"))?;
        self.answer().await
    }

    /// Waits (10 s at most) for the call's answer without sending its
    /// message, as when the server gives up on it.
    pub async fn answer(self) -> Answer {
        let answer = async {
            let response = self
                .response
                .await
                .map_err(|e| format!("no response: {e}"))?;
            // A trailers-only answer (an error) carries grpc-status in the headers.
            if let Some(status) = response.headers().get("grpc-status") {
                return Ok((status.to_str().unwrap_or("").to_string(), None));
            }
            let mut body = response.into_body();
            let mut data = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.map_err(|e| format!("reading the body: {e}"))?;
                let _ = body.flow_control().release_capacity(chunk.len());
                data.extend_from_slice(&chunk);
            }
            let trailers = body
                .trailers()
                .await
                .map_err(|e| format!("reading trailers: {e}"))?
                .ok_or("no trailers")?;
            let status = trailers
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let decoded = (data.len() >= 5).then(|| RateLimitResponse::decode(&data[5..]).unwrap());
            Ok((status, decoded))
        };
        tokio::time::timeout(Duration::from_secs(10), answer)
            .await
            .map_err(|_| "no answer within 10 s".to_string())?
    }
}
