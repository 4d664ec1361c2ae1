//! The shutdown signal every task listens to.

use tokio::sync::watch;

/// Listens for the server's shutdown signal.
///
/// The signal is a `watch` channel flipped to `true` once: unlike a broadcast, a
/// listener created after the flip (a connection accepted in the same instant) still
/// sees it, and dropping the sender counts as the signal too.
#[derive(Clone, Debug)]
pub struct Shutdown {
    notify: watch::Receiver<bool>,
}

/// Sends the shutdown signal.
#[derive(Debug)]
pub struct Trigger {
    notify: watch::Sender<bool>,
}

impl Trigger {
    /// A trigger and nothing listening yet.
    pub fn new() -> Trigger {
        Trigger {
            notify: watch::channel(false).0,
        }
    }

    /// A new listener.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            notify: self.notify.subscribe(),
        }
    }

    /// Signals every listener, present and future.
    pub fn fire(&self) {
        self.notify.send_replace(true);
    }
}

impl Default for Trigger {
    fn default() -> Self {
        Trigger::new()
    }
}

impl Shutdown {
    /// Waits for the signal (returns at once if it was already given).
    pub async fn recv(&mut self) {
        // An error means the trigger is gone, which also means "shut down".
        let _ = self.notify.wait_for(|stop| *stop).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn late_listeners_see_the_signal() {
        let trigger = Trigger::new();
        let mut early = trigger.subscribe();
        trigger.fire();
        let mut late = trigger.subscribe();
        assert!(
            *late.notify.borrow(),
            "a late listener sees the signal at once"
        );
        early.recv().await;
        late.recv().await;
    }

    #[tokio::test]
    async fn a_dropped_trigger_counts_as_the_signal() {
        let trigger = Trigger::new();
        let mut listener = trigger.subscribe();
        drop(trigger);
        listener.recv().await;
    }
}
