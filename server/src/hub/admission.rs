//! Admission: client ids, resume tokens, live sessions, and the kick of a session
//! whose client id another connection resumed.

use std::sync::{Arc, MutexGuard, PoisonError};

use hashbrown::HashMap;
use rollcall_engine::ClientId;
use tokio::sync::Notify;

use super::Hub;
use crate::error::Result;
use crate::fanout::Subscription;
use crate::identity::Identity;
use crate::protocol::{ErrorCode, Rejection};

/// A live WebSocket session, by client id.
#[derive(Debug)]
pub(super) struct Session {
    connection: u64,
    kick: Arc<Notify>,
}

/// Client ids, resume tokens and live sessions, behind their own lock.
pub(super) struct Admission {
    pub(super) identity: Identity,
    pub(super) sessions: HashMap<ClientId, Session>,
    pub(super) next_connection: u64,
}

/// What a new session gets.
#[derive(Debug)]
pub struct Admitted {
    /// The session's client id.
    pub client: ClientId,
    /// Its resume token.
    pub resume_token: String,
    /// Whether the client id came from a valid resume token.
    pub resumed: bool,
    /// The resume token presented was not valid (a fresh id was assigned).
    pub resume_rejected: bool,
    /// Unique per connection, to tell sessions of the same client apart.
    pub connection: u64,
    /// Notified when another connection resumes the same client id.
    pub kick: Arc<Notify>,
}

impl Hub {
    pub(super) fn admission(&self) -> MutexGuard<'_, Admission> {
        self.admission
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a session: resumes the client id of a valid `resume` token (closing any
    /// other connection holding it) or assigns a new one.
    pub fn admit(&self, resume: Option<&str>, user: Option<&str>) -> Result<Admitted> {
        let mut admission = self.admission();
        let admission = &mut *admission;
        let resumed_id = resume.and_then(|token| admission.identity.verify(token, user));
        let resume_rejected = resume.is_some() && resumed_id.is_none();
        let client = match resumed_id {
            Some(id) => id,
            None => admission.identity.allocate(&self.journal)?,
        };
        let connection = admission.next_connection;
        admission.next_connection += 1;
        let kick = Arc::new(Notify::new());
        if let Some(old) = admission.sessions.insert(
            client,
            Session {
                connection,
                kick: kick.clone(),
            },
        ) {
            old.kick.notify_one();
        }
        let resume_token = admission.identity.token(client, user);
        Ok(Admitted {
            client,
            resume_token,
            resumed: resumed_id.is_some(),
            resume_rejected,
            connection,
            kick,
        })
    }

    /// Ends a session: its subscriptions stop; its entries stay until their TTL.
    pub fn depart(&self, client: ClientId, connection: u64, subscriptions: &[Arc<Subscription>]) {
        for subscription in subscriptions {
            self.lock(&subscription.room)
                .remove_subscriber(subscription);
        }
        let mut admission = self.admission();
        if admission
            .sessions
            .get(&client)
            .is_some_and(|s| s.connection == connection)
        {
            admission.sessions.remove(&client);
        }
    }

    /// A fresh client id (for REST heartbeats without one).
    pub fn allocate_client(&self) -> Result<ClientId> {
        self.admission().identity.allocate(&self.journal)
    }

    /// Reserves a client id chosen over REST, so that the server never gives it to
    /// another client (see [`Identity::reserve`]).
    pub fn reserve_client(&self, client: ClientId) -> Result<(), Rejection> {
        let reserved = self.admission().identity.reserve(client, &self.journal);
        match reserved {
            Ok(true) => Ok(()),
            Ok(false) => Err(Rejection::new(
                ErrorCode::BadRequest,
                format!(
                    "clientId {client} is past the ids this server can reserve: choose one \
                     below {}, or omit clientId and the server assigns one",
                    crate::identity::MAX_CHOSEN_COUNTER
                ),
            )),
            Err(e) => Err(Rejection::new(
                ErrorCode::Internal,
                format!("cannot reserve the client id: {e}"),
            )),
        }
    }
}
