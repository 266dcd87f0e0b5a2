//! The doors: who may connect ([`auth`]: static bearer tokens and HS256 JWTs, from the page's subprotocol or
//! an `Authorization` header) and how much ([`limits`]: connections per client, message and byte rates, hello and
//! idle timeouts, keepalive pings). The router asks them before it upgrades a connection; the endpoints use the
//! limits while it lives.

pub mod auth;
pub mod limits;
