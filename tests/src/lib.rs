//! Support for Soundline's integration and end-to-end tests: where the real broker is, and fresh topics on it.
//!
//! The broker is the one `scripts/kafka.sh` starts; `make test` starts it and exports its address as
//! `SOUNDLINE_TEST_KAFKA` (and `SOUNDLINE_TEST_KAFKA_SASL` + credentials for the SASL listener). A test that needs
//! Kafka and does not find it **fails** with a line saying how to get one: it never passes by skipping.
//!
//! Like rskafka's own suite, every test works on its own randomly named topic, so tests run in parallel on one
//! broker without seeing each other's records.
#![deny(unsafe_code)]

pub mod balancer;
pub mod broker;
pub mod cluster;
pub mod page;
pub mod proxy;
pub mod recorder;
pub mod relay;
pub mod resilient;
pub mod subscriber;

use std::sync::Arc;
use std::time::Duration;

use rskafka::BackoffConfig;
use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};

/// Wall-clock time, ms since the epoch.
pub fn now_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// Address of the test broker's PLAINTEXT listener.
///
/// # Panics
///
/// When `SOUNDLINE_TEST_KAFKA` is not set: the tests need a real broker (`make test` starts one).
pub fn kafka_bootstrap() -> String {
    require_env("SOUNDLINE_TEST_KAFKA")
}

/// The SASL_PLAINTEXT listener's address and its user and password.
///
/// # Panics
///
/// When the broker was not started with `scripts/kafka.sh start --sasl` (as `make test` does).
pub fn kafka_sasl() -> (String, String, String) {
    (
        require_env("SOUNDLINE_TEST_KAFKA_SASL"),
        require_env("SOUNDLINE_TEST_KAFKA_USER"),
        require_env("SOUNDLINE_TEST_KAFKA_PASSWORD"),
    )
}

fn require_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: these tests need the real Kafka broker that `make test` starts \
             (or run `scripts/kafka.sh start --sasl` and export the lines `scripts/kafka.sh env` prints)"
        ),
    }
}

/// A topic name no other test uses.
pub fn random_topic(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// An rskafka client on the test broker's PLAINTEXT listener.
pub async fn client() -> Arc<Client> {
    let bootstrap = kafka_bootstrap();
    let client = ClientBuilder::new(vec![bootstrap.clone()])
        .build()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test broker at {bootstrap}: {e}"));
    Arc::new(client)
}

/// An rskafka client on the SASL listener, with the given mechanism (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`).
pub async fn sasl_client(mechanism: &str, password: Option<&str>) -> Result<Client, rskafka::client::error::Error> {
    let (addr, user, real_password) = kafka_sasl();
    let credentials = Credentials::new(user, password.unwrap_or(&real_password).to_owned());
    let sasl = match mechanism {
        "PLAIN" => SaslConfig::Plain(credentials),
        "SCRAM-SHA-256" => SaslConfig::ScramSha256(credentials),
        "SCRAM-SHA-512" => SaslConfig::ScramSha512(credentials),
        other => panic!("unknown SASL mechanism {other}"),
    };
    // rskafka retries a failed connection forever by default; a wrong password must fail, not hang.
    let backoff = BackoffConfig { deadline: Some(Duration::from_secs(2)), ..BackoffConfig::default() };
    ClientBuilder::new(vec![addr]).sasl_config(sasl).backoff_config(backoff).build().await
}

/// Creates `topic` with `partitions` partitions and waits until every partition has a leader.
pub async fn create_topic(client: &Client, topic: &str, partitions: i32) {
    let controller = client.controller_client().expect("controller client");
    controller.create_topic(topic, partitions, 1, 5_000).await.unwrap_or_else(|e| panic!("create topic {topic}: {e}"));
    for partition in 0..partitions {
        tokio::time::timeout(
            Duration::from_secs(30),
            client.partition_client(topic, partition, rskafka::client::partition::UnknownTopicHandling::Retry),
        )
        .await
        .unwrap_or_else(|_| panic!("partition {topic}/{partition} got no leader within 30 s"))
        .unwrap_or_else(|e| panic!("partition client {topic}/{partition}: {e}"));
    }
}

/// Every record of `topic` (all `partitions`), as (partition, offset, record), in partition then offset order.
pub async fn read_all(client: &Client, topic: &str, partitions: i32) -> Vec<(i32, i64, rskafka::record::Record)> {
    let mut out = Vec::new();
    for partition in 0..partitions {
        let pc = client
            .partition_client(topic, partition, rskafka::client::partition::UnknownTopicHandling::Retry)
            .await
            .expect("partition client");
        let end = pc.get_offset(rskafka::client::partition::OffsetAt::Latest).await.expect("latest offset");
        let mut offset = pc.get_offset(rskafka::client::partition::OffsetAt::Earliest).await.expect("earliest offset");
        while offset < end {
            let (records, _) = pc.fetch_records(offset, 1..10_000_000, 1_000).await.expect("fetch");
            for r in records {
                offset = r.offset + 1;
                out.push((partition, r.offset, r.record));
            }
        }
    }
    out
}

/// Opens a WebSocket to `url` with extra request headers (`Sec-WebSocket-Protocol`, `Authorization`, ...).
///
/// # Errors
///
/// The handshake failed (for a refusal: `Error::Http` with the relay's status and body).
pub async fn ws_connect(
    url: &str,
    headers: &[(&str, &str)],
) -> Result<WsStream, Box<tokio_tungstenite::tungstenite::Error>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
    let mut request = url.into_client_request().map_err(Box::new)?;
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("header name");
        request.headers_mut().append(name, HeaderValue::from_str(value).expect("header value"));
    }
    tokio_tungstenite::connect_async(request).await.map(|(ws, _)| ws).map_err(Box::new)
}

/// A test client's WebSocket to the relay.
pub type WsStream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What a client read from the relay.
pub type WsRead = Result<tokio_tungstenite::tungstenite::Message, tokio_tungstenite::tungstenite::Error>;

/// Sends `msg` the way a browser's `WebSocket.send` does: it goes out while what the relay says is read, and
/// the reads are returned (up to and including a close frame or a read error) for the caller to go through first.
///
/// A client that only writes can miss the relay's answer to a message the relay refuses part-way: for one over
/// `max_message_bytes` the relay answers (error, close frame) as soon as the header names the size, and reads no
/// more of it, so the client's write blocks on a full socket until the relay's linger ends and the connection
/// is reset, the answer unread. A send cut short by the relay's close is not an error here: what was read says
/// what happened.
pub async fn send_while_reading(
    ws: &mut WsStream,
    msg: tokio_tungstenite::tungstenite::Message,
) -> std::collections::VecDeque<WsRead> {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    let (mut sink, mut stream) = ws.split();
    let mut read = std::collections::VecDeque::new();
    let send = sink.send(msg);
    tokio::pin!(send);
    loop {
        tokio::select! {
            _ = &mut send => break,
            next = stream.next() => match next {
                Some(Ok(m)) => {
                    let closed = matches!(m, Message::Close(_));
                    read.push_back(Ok(m));
                    if closed {
                        break;
                    }
                }
                Some(Err(e)) => {
                    read.push_back(Err(e));
                    break;
                }
                None => break,
            },
        }
    }
    read
}
