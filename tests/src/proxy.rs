//! A TCP proxy between the browser and the relay that can cut the network, as a phone losing coverage does:
//! at the cut, open connections drop; during it, new connection attempts get no answer at all (they hang, as
//! packets into a dead network do, until the client gives up); when the network returns, the hanging attempts
//! are reset and new connections pass again.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

#[derive(Default)]
struct State {
    cut: bool,
    /// Copy tasks of connections that pass.
    links: Vec<AbortHandle>,
    /// Connection attempts the cut swallowed, held open in silence.
    swallowed: Vec<TcpStream>,
}

/// The proxy; stops when dropped.
pub struct Proxy {
    /// Where the browser connects.
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    accept: AbortHandle,
}

impl Proxy {
    /// Listens on an ephemeral port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                // One guard for the check and the registration: a link accepted during `cut` is cut with the rest.
                let mut s = shared.lock().expect("proxy state");
                if s.cut {
                    s.swallowed.push(client);
                    continue;
                }
                let link = tokio::spawn(async move {
                    if let Ok(mut relay) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut relay).await;
                    }
                });
                s.links.retain(|l| !l.is_finished());
                s.links.push(link.abort_handle());
            }
        })
        .abort_handle();
        Self { addr, state, accept }
    }

    /// The network goes: open connections drop, new ones get no answer.
    pub fn cut(&self) {
        let mut s = self.state.lock().expect("proxy state");
        s.cut = true;
        for link in &s.links {
            link.abort();
        }
        s.links.clear();
    }

    /// The network returns: what the cut swallowed is reset, new connections pass.
    pub fn restore(&self) {
        let mut s = self.state.lock().expect("proxy state");
        s.cut = false;
        for socket in s.swallowed.drain(..) {
            let _ = socket.set_zero_linger();
            drop(socket);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
