//! Hints between hosts through PostgreSQL: every write that readies jobs
//! sends `NOTIFY jobhost_ready` in its own transaction (the store does
//! that), and every host LISTENs here and turns each notification into a
//! local [`Dispatch::hint`]. A notification is delivered only if its
//! transaction commits, and PostgreSQL folds identical ones of a
//! transaction into one.
//!
//! Notifications sent while this connection was down are lost; a
//! reconnection therefore hints once by itself, and the workers' poll
//! interval bounds what any other loss can cost: a delay, never a job.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use super::Dispatch;
use crate::store::postgres::READY_CHANNEL;

/// How long to wait before listening again after a failure.
const RETRY: Duration = Duration::from_secs(1);

/// Listens until `stop`, hinting `dispatch` on every notification.
pub async fn listen(pool: PgPool, dispatch: Arc<Dispatch>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let listening = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(READY_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            listening = listening => match listening {
                Ok(listener) => listener,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot LISTEN for ready jobs; retrying (workers still poll)");
                    tokio::select! {
                        () = tokio::time::sleep(RETRY) => continue,
                        () = stop.cancelled() => return,
                    }
                }
            },
            () = stop.cancelled() => return,
        };
        // Jobs may have become ready while nobody here listened.
        dispatch.hint();
        loop {
            let received = tokio::select! {
                received = listener.try_recv() => received,
                () = stop.cancelled() => return,
            };
            match received {
                Ok(Some(_)) => dispatch.hint(),
                // The connection was lost; the next call reconnects. What
                // was sent meanwhile is lost: hint in its place.
                Ok(None) => dispatch.hint(),
                Err(e) => {
                    tracing::warn!(error = %e, "lost the LISTEN connection; reconnecting (workers still poll)");
                    break;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(RETRY) => {}
            () = stop.cancelled() => return,
        }
    }
}
