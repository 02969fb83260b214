//! The plugin catalog on PostgreSQL (see [`crate::plugins::catalog`]):
//! tables `plugin_blobs` and `plugins`, on the store's pool.

use sqlx::PgPool;

use crate::plugins::{Catalog, Published};
use crate::runtime::digest_of;
use crate::store::StoreResult;

pub struct PgCatalog(pub PgPool);

/// Drops the `.wasm` files no type runs any more. A host still fetching one
/// finds it gone, and takes the newer entry on its next look.
async fn prune(tx: &mut sqlx::PgConnection) -> StoreResult<()> {
    sqlx::query(
        "DELETE FROM plugin_blobs b
         WHERE NOT EXISTS (SELECT 1 FROM plugins p WHERE p.digest = b.digest)",
    )
    .execute(tx)
    .await?;
    Ok(())
}

/// `updated_at` is informational: the database's clock.
const NOW: &str = "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint";

#[async_trait::async_trait]
impl Catalog for PgCatalog {
    async fn publish(
        &self,
        job_type: &str,
        wasm: &[u8],
        manifest: Option<&str>,
    ) -> StoreResult<i64> {
        let digest = digest_of(wasm);
        let mut tx = self.0.begin().await?;
        sqlx::query(
            "INSERT INTO plugin_blobs (digest, wasm) VALUES ($1, $2) ON CONFLICT (digest) DO NOTHING",
        )
        .bind(&digest)
        .bind(wasm)
        .execute(&mut *tx)
        .await?;
        let version: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "INSERT INTO plugins (job_type, digest, manifest, version, updated_at)
             VALUES ($1, $2, $3, nextval('plugin_versions'), {NOW})
             ON CONFLICT (job_type) DO UPDATE
             SET digest = EXCLUDED.digest, manifest = EXCLUDED.manifest,
                 -- drawn again under the row's lock, so the later of two
                 -- racing uploads also has the greater version
                 version = nextval('plugin_versions'), updated_at = EXCLUDED.updated_at
             RETURNING version"
        )))
        .bind(job_type)
        .bind(&digest)
        .bind(manifest)
        .fetch_one(&mut *tx)
        .await?;
        prune(&mut tx).await?;
        tx.commit().await?;
        Ok(version)
    }

    async fn unpublish(&self, job_type: &str) -> StoreResult<bool> {
        let mut tx = self.0.begin().await?;
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE plugins SET digest = NULL, manifest = NULL,
                    version = nextval('plugin_versions'), updated_at = {NOW}
             WHERE job_type = $1 AND digest IS NOT NULL"
        )))
        .bind(job_type)
        .execute(&mut *tx)
        .await?;
        prune(&mut tx).await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    async fn entries(&self) -> StoreResult<Vec<Published>> {
        let rows: Vec<(String, Option<String>, Option<String>, i64)> = sqlx::query_as(
            "SELECT job_type, digest, manifest, version FROM plugins ORDER BY job_type",
        )
        .fetch_all(&self.0)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(job_type, digest, manifest, version)| Published {
                job_type,
                digest,
                manifest,
                version,
            })
            .collect())
    }

    async fn wasm(&self, digest: &str) -> StoreResult<Option<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT wasm FROM plugin_blobs WHERE digest = $1")
                .bind(digest)
                .fetch_optional(&self.0)
                .await?,
        )
    }
}
