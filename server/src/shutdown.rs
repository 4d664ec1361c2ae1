//! The shutdown signal every task listens to.

use tokio::sync::broadcast;

/// Listens for the server's shutdown signal.
///
/// Shutdown is signalled with a `broadcast` channel: every task holds a receiver, and
/// one send (or dropping the sender) reaches all of them. Once seen, the signal stays
/// seen.
#[derive(Debug)]
pub struct Shutdown {
    is_shutdown: bool,
    notify: broadcast::Receiver<()>,
}

impl Shutdown {
    /// Wraps a receiver of the shutdown channel.
    pub fn new(notify: broadcast::Receiver<()>) -> Shutdown {
        Shutdown {
            is_shutdown: false,
            notify,
        }
    }

    /// Whether the signal has been received.
    pub fn is_shutdown(&self) -> bool {
        self.is_shutdown
    }

    /// Waits for the signal (returns at once if it was already seen).
    pub async fn recv(&mut self) {
        if self.is_shutdown {
            return;
        }
        // Lagged and closed both mean "shut down": only one value is ever sent.
        let _ = self.notify.recv().await;
        self.is_shutdown = true;
    }
}
