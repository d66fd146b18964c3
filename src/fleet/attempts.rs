//! Lost create attempts, fleet-wide: kie.ai calls back whichever replica
//! the load balancer picks, so the replica that lost an answer writes its
//! attempt token to Redis, and any replica can settle the `request_id`
//! from the callback.
//!
//! What is stored says nothing secret: the token (random), the request_id's
//! scope (a digest of the key, as in the idempotency store), the request_id
//! and the callback URL the attempt sent. The replica that reads it
//! re-reads the task with the gateway's own key before it trusts anything.

use std::time::Duration;

use redis::AsyncCommands;

use crate::create::attempts::{LostAttempt, Shared, SharedAttempts};
use crate::create::idempotency::IdempotencyKey;
use crate::redis_client::{FleetError, Redis};

#[derive(Clone)]
pub struct FleetAttempts {
    redis: Redis,
    /// As long as the request_id itself is remembered.
    ttl: Duration,
}

impl FleetAttempts {
    pub fn new(redis: Redis, ttl: Duration) -> Self {
        Self { redis, ttl }
    }

    fn key(&self, token: &str) -> String {
        // Tokens are hex: no braces, a group of their own.
        self.redis.keys().key("attempt", token)
    }

    /// Records a lost attempt under its token, for the idempotency TTL.
    async fn write(&self, token: &str, lost: &LostAttempt) -> Result<(), FleetError> {
        let key = self.key(token);
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let fields = [
            ("scope", lost.key.scope.as_str()),
            ("rid", lost.key.request_id.as_str()),
            ("url", lost.url.as_str()),
        ];
        self.redis
            .call(|mut c| async move {
                redis::pipe()
                    .atomic()
                    .hset_multiple(&key, &fields)
                    .ignore()
                    .pexpire(&key, ttl_ms)
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
    }

    /// The lost attempt of `token`, if any replica recorded one.
    async fn read(&self, token: &str) -> Result<Option<LostAttempt>, FleetError> {
        let key = self.key(token);
        let (scope, request_id, url): (Option<String>, Option<String>, Option<String>) = self
            .redis
            .call(|mut c| async move {
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg("scope")
                    .arg("rid")
                    .arg("url")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(match (scope, request_id, url) {
            (Some(scope), Some(request_id), Some(url)) => Some(LostAttempt {
                key: IdempotencyKey { scope, request_id },
                url,
            }),
            _ => None,
        })
    }

    /// The attempt's task is known: its token is done.
    async fn delete(&self, token: &str) -> Result<(), FleetError> {
        let key = self.key(token);
        self.redis
            .call(|mut c| async move { c.del::<_, ()>(&key).await })
            .await
    }
}

impl SharedAttempts for FleetAttempts {
    fn record(&self, token: String, lost: LostAttempt) -> Shared<()> {
        let this = self.clone();
        Box::pin(async move { Ok(this.write(&token, &lost).await?) })
    }

    fn lookup(&self, token: String) -> Shared<Option<LostAttempt>> {
        let this = self.clone();
        Box::pin(async move { Ok(this.read(&token).await?) })
    }

    fn forget(&self, token: String) -> Shared<()> {
        let this = self.clone();
        Box::pin(async move { Ok(this.delete(&token).await?) })
    }
}
