//! What the replicas of one gateway share through Redis
//! (`GATEWAY_REDIS_URL`), as implementations of the ports other rooms own:
//! the request_id store and the lost attempts (`create/`), kie.ai's
//! limits (`kie/`'s create window, `hub/`'s read budget), and the fleet's
//! membership they are shared by. Nothing but `startup.rs` depends on it.

pub mod attempts;
pub mod idempotency;
pub mod limits;
pub mod membership;
mod outbox;

use redis::{ErrorKind, RedisResult, Script, ServerErrorKind, Value};

use crate::redis_client::{FleetError, Redis};

/// A script with `now` (Redis's clock, in ms) defined first.
pub(crate) fn script(body: &str) -> Script {
    Script::new(&format!("{}\n{body}", include_str!("lua/now.lua")))
}

/// An `EVALSHA` of `script` on one key, for a pipeline; its arguments are
/// added by the caller.
pub(crate) fn evalsha(script: &Script, key: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(1).arg(key);
    cmd
}

/// Sends `pipe` (`EVALSHA`s of `scripts`, each safe to repeat) as one
/// write: one round trip, one answer, however many scripts it carries.
/// Each script's own answer or error comes back in order. Redis forgets
/// its scripts when it restarts: on NOSCRIPT they are loaded and the
/// pipeline is sent once more.
pub(crate) async fn run_scripts(
    redis: &Redis,
    pipe: &mut redis::Pipeline,
    scripts: &[&Script],
) -> Result<Vec<RedisResult<Value>>, FleetError> {
    let pipe = &*pipe.ignore_errors();
    let send = || {
        redis.call(|mut c| async move { pipe.query_async::<Vec<RedisResult<Value>>>(&mut c).await })
    };
    let answers = send().await?;
    let unknown = |a: &RedisResult<Value>| matches!(a, Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript));
    if !answers.iter().any(unknown) {
        return Ok(answers);
    }
    redis
        .call(|mut c| async move {
            for script in scripts {
                script.load_async(&mut c).await?;
            }
            Ok(())
        })
        .await?;
    send().await
}
