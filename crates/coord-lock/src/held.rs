//! What a lock guard and a permit have in common: a key of the holder's session in the queue,
//! released (fenced by its create revision) explicitly or, on drop, in the background.

use coord_core::queue::{release, release_in_background};
use coord_core::{Ownership, Session};
use tokio::sync::OwnedMutexGuard;

use crate::{Error, Result};

#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) session: Session,
    pub(crate) ownership: Ownership,
    /// The in-process slot of the key (`coord_core::queue::local_slot`), kept until the key is gone.
    local: Option<OwnedMutexGuard<()>>,
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
            released: false,
        }
    }

    pub(crate) fn key(&self) -> &str {
        self.ownership.key_str().unwrap_or_default()
    }

    /// Deletes the key if it is still this holder's; `NotHeld` if it was gone already.
    pub(crate) async fn release(&mut self) -> Result<()> {
        let deleted = release(self.session.client(), &self.ownership).await?;
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
            release_in_background(&self.session, self.ownership.clone(), self.local.take());
        }
    }
}
