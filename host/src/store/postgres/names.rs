//! The ids of the history's names (workers' actors, plugin versions; see
//! [`crate::store::history`]) this host has used. A name new to the store
//! is added in a statement of its own, committed before any event refers
//! to it; another host adding the same name at once is found, not
//! duplicated (`ON CONFLICT DO NOTHING`, then read back). Ids never change,
//! so what a host has learnt stays true.

use std::collections::HashMap;
use std::sync::Mutex;

use sqlx::PgPool;

use crate::store::StoreResult;
use crate::store::history::Name;

#[derive(Debug, Default)]
pub(super) struct Names(Mutex<HashMap<Name, i32>>);

impl Names {
    pub(super) async fn id(&self, pool: &PgPool, name: Name) -> StoreResult<i32> {
        if let Some(&id) = self.0.lock().expect("names lock").get(&name) {
            return Ok(id);
        }
        let select = name.select_sql();
        let mut id: Option<i32> = sqlx::query_scalar(select)
            .bind(name.text())
            .fetch_optional(pool)
            .await?;
        if id.is_none() {
            id = sqlx::query_scalar(name.insert_sql())
                .bind(name.text())
                .fetch_optional(pool)
                .await?;
        }
        let id = match id {
            Some(id) => id,
            // Another host added it between the two statements.
            None => {
                sqlx::query_scalar(select)
                    .bind(name.text())
                    .fetch_one(pool)
                    .await?
            }
        };
        self.0.lock().expect("names lock").insert(name, id);
        Ok(id)
    }
}
