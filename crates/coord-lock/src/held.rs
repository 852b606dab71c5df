//! What a lock guard and a permit have in common: a key of the holder's session in the queue,
//! released (fenced by its create revision) explicitly or, on drop, in the background.

use std::sync::Arc;

use coord_core::queue::{release, release_in_background};
use coord_core::{Ownership, Session};
use tokio::sync::OwnedMutexGuard;

use crate::handoff::{self, Handoff};
use crate::{Error, Result};

#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) session: Session,
    pub(crate) ownership: Ownership,
    /// The in-process slot of the key (`coord_core::queue::local_slot`), kept until the key is gone.
    local: Option<OwnedMutexGuard<()>>,
    /// A semaphore permit hands its place to the next waiter when released.
    handoff: Option<Arc<Handoff>>,
    released: bool,
}

impl Held {
    pub(crate) fn new(
        session: Session,
        ownership: Ownership,
        local: Option<OwnedMutexGuard<()>>,
    ) -> Held {
        Held {
            session,
            ownership,
            local,
            handoff: None,
            released: false,
        }
    }

    /// Releases hand the permit off to the next waiter (docs/design/semaphore.md §3).
    pub(crate) fn handing_off(mut self, handoff: Arc<Handoff>) -> Held {
        self.handoff = Some(handoff);
        self
    }

    pub(crate) fn key(&self) -> &str {
        self.ownership.key_str().unwrap_or_default()
    }

    /// Deletes the key if it is still this holder's; `NotHeld` if it was gone already.
    pub(crate) async fn release(&mut self) -> Result<()> {
        let client = self.session.client();
        let deleted = match &self.handoff {
            Some(handoff) => handoff::release(client, &self.ownership, handoff).await?,
            None => release(client, &self.ownership).await?,
        };
        self.released = true;
        self.local.take();
        if deleted {
            Ok(())
        } else {
            Err(Error::NotHeld {
                key: self.key().to_owned(),
            })
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.released {
            let (ownership, local) = (self.ownership.clone(), self.local.take());
            match self.handoff.take() {
                Some(handoff) => {
                    handoff::release_in_background(&self.session, ownership, local, handoff);
                }
                None => release_in_background(&self.session, ownership, local),
            }
        }
    }
}
