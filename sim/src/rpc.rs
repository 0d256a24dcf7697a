//! Request/response over madsim's simulated network, with loss injected per link.
//!
//! Messages are passed as values (madsim's raw payloads), not serialized: the simulated network
//! already delays, reorders across links and drops them, and the nodes share no memory except
//! through it. Every call has a timeout; a lost request or response looks to the caller exactly like
//! a slow peer, as it does in production.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use madsim::net::Endpoint;

use crate::swarm::Link;
use crate::world::world;

/// The well-known request tags, one per service. Response tags are drawn above them.
pub const STORE_SERVICE: u64 = 1;
pub const BROKER_SERVICE: u64 = 2;
pub const APP_SERVICE: u64 = 3;

pub fn store_addr() -> SocketAddr {
    "10.0.0.1:5432".parse().expect("valid address")
}

pub fn broker_addr() -> SocketAddr {
    "10.0.0.2:9092".parse().expect("valid address")
}

/// The first app node's address.
pub fn app_addr() -> SocketAddr {
    app_addr_of(0)
}

/// App node `index`'s address (10.0.0.3, .4, .5).
pub fn app_addr_of(index: usize) -> SocketAddr {
    let host = u8::try_from(3 + index).expect("few apps");
    SocketAddr::from(([10, 0, 0, host], 3000))
}

pub fn client_addr(index: usize) -> SocketAddr {
    let host = u8::try_from(index + 1).expect("few clients");
    SocketAddr::from(([10, 0, 1, host], 4000))
}

/// A request on the wire: where to send the answer, and on which link it travels.
struct Envelope<T> {
    response_tag: u64,
    link: Link,
    body: T,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    #[error("timed out")]
    Timeout,
    #[error("network down")]
    Down,
}

/// Sends `request` to the service `tag` at `to` and waits up to `timeout` for the answer.
pub async fn call<Request, Response>(
    endpoint: &Endpoint,
    to: SocketAddr,
    tag: u64,
    link: Link,
    what: &str,
    request: Request,
    timeout: Duration,
) -> Result<Response, RpcError>
where
    Request: Any + Send + Sync,
    Response: Any + Send + Sync,
{
    let response_tag = 1_000 + madsim::rand::random::<u64>() / 2;
    if world().drop_request(link, what) {
        tokio::time::sleep(timeout).await;
        return Err(RpcError::Timeout);
    }
    let envelope = Envelope { response_tag, link, body: request };
    endpoint.send_to_raw(to, tag, Box::new(envelope)).await.map_err(|_| RpcError::Down)?;
    match tokio::time::timeout(timeout, endpoint.recv_from_raw(response_tag)).await {
        Ok(Ok((payload, _from))) => Ok(*payload.downcast::<Response>().expect("the response type of the request")),
        Ok(Err(_)) => Err(RpcError::Down),
        Err(_elapsed) => Err(RpcError::Timeout),
    }
}

/// Serves the service `tag` on `endpoint`: each request is handled on its own task (killed with
/// the node); a `None` answer, or a lost response, sends nothing back.
pub async fn serve<Request, Response, Handler, Answer>(endpoint: Arc<Endpoint>, tag: u64, handler: Handler)
where
    Request: Any + Send + Sync,
    Response: Any + Send + Sync,
    Handler: Fn(Request) -> Answer + Send + Sync + 'static,
    Answer: std::future::Future<Output = Option<Response>> + Send + 'static,
{
    loop {
        let Ok((payload, from)) = endpoint.recv_from_raw(tag).await else {
            return;
        };
        let envelope = *payload.downcast::<Envelope<Request>>().expect("the request type of the service");
        let answer = handler(envelope.body);
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let Some(response) = answer.await else {
                return;
            };
            if world().drop_response(envelope.link, "response") {
                return;
            }
            let _ = endpoint.send_to_raw(from, envelope.response_tag, Box::new(response)).await;
        });
    }
}
