//! What the replicas of one gateway share through Redis
//! (`GATEWAY_REDIS_URL`), as implementations of the ports other rooms own:
//! the request_id store and the lost attempts (`create/`), kie.ai's
//! limits (`kie/`'s create window, `hub/`'s read budget), and the fleet's
//! membership they are shared by. Nothing but `startup.rs` depends on it.

pub mod attempts;
pub mod idempotency;
pub mod limits;
pub mod membership;

/// A script with `now` (Redis's clock, in ms) defined first.
pub(crate) fn script(body: &str) -> redis::Script {
    redis::Script::new(&format!("{}\n{body}", include_str!("lua/now.lua")))
}
