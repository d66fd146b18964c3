//! Per-caller quotas: creates per minute and per UTC day, credits per UTC
//! day, in fixed windows. A create takes a `Hold` before anything goes
//! upstream (the model's price counted against the credits); the hold is
//! released when kie.ai certainly made no task, and kept otherwise. A hold
//! whose task kie.ai made is bound to the task id (`Hold::bind`); when the
//! hub first reads the task's end, `QuotaBook::settle` corrects the credits
//! to kie.ai's `creditsConsumed` (0 or absent on a failure: all handed
//! back), once: the binding is taken out as it is read (GETDEL in Redis,
//! so exactly one replica settles).
//!
//! With Redis the counters are the fleet's (`<prefix>:quota:{<caller>}`,
//! one Lua script in Redis's clock); when Redis cannot be reached a caller
//! with quotas is refused (fails closed), one without any never asks it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use redis::Script;

use super::Caller;
use crate::error::{GatewayError, QuotaExceeded as Exceeded};
use crate::redis_client::Redis;

const MINUTE_MS: u64 = 60_000;
const DAY_MS: u64 = 86_400_000;

/// The credits a create is expected to cost: kie.ai's price list as the
/// simulator knows it (Hailuo 02 standard), by duration and resolution.
pub fn price(duration: &str, resolution: &str) -> f64 {
    match (duration, resolution) {
        ("6", "512P") => 12.0,
        ("10", "512P") => 20.0,
        ("6", _) => 30.0,
        _ => 50.0,
    }
}

/// One caller's counters in the current windows (the Lua script's rules).
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    minute: u64,
    creates_minute: u64,
    day: u64,
    creates_day: u64,
    credits_day: f64,
}

impl Usage {
    /// Resets what belongs to windows that have passed.
    fn at(mut self, now_ms: u64) -> Self {
        let (minute, day) = (now_ms / MINUTE_MS, now_ms / DAY_MS);
        if self.minute != minute {
            self.minute = minute;
            self.creates_minute = 0;
        }
        if self.day != day {
            self.day = day;
            self.creates_day = 0;
            self.credits_day = 0.0;
        }
        self
    }
}

/// Where a caller stands, for GetQuota.
#[derive(Clone, Copy, Debug)]
pub struct Standing {
    pub now_ms: u64,
    pub creates_minute: u64,
    pub creates_day: u64,
    pub credits_day: f64,
}

impl Standing {
    pub fn minute_resets_ms(&self) -> u64 {
        (self.now_ms / MINUTE_MS + 1) * MINUTE_MS
    }

    pub fn day_resets_ms(&self) -> u64 {
        (self.now_ms / DAY_MS + 1) * DAY_MS
    }
}

/// The quota counters of every caller: this process's, or the fleet's.
pub struct QuotaBook {
    redis: Option<Redis>,
    script: Script,
    local: Mutex<HashMap<Arc<str>, Usage>>,
    /// Without Redis: holds bound to their task, until the task ends.
    bound: Mutex<HashMap<String, Bound>>,
}

/// A kept hold, waiting for its task's end.
#[derive(Clone, Debug)]
struct Bound {
    caller: Arc<str>,
    day: u64,
    credits: f64,
}

/// Bindings of tasks never seen ending are dropped after this (their
/// credits stay counted, on the caller's side of the quota).
const BOUND_TTL_MS: u64 = 2 * DAY_MS;
const BOUND_LOCAL_MAX: usize = 100_000;

impl QuotaBook {
    pub fn new(redis: Option<Redis>) -> Arc<Self> {
        Arc::new(Self {
            redis,
            script: Script::new(include_str!("lua/quota.lua")),
            local: Mutex::new(HashMap::new()),
            bound: Mutex::new(HashMap::new()),
        })
    }

    fn key(redis: &Redis, caller: &str) -> String {
        // Names are [A-Za-z0-9._-]: no brace can end the hash tag early.
        redis.keys().key("quota", caller)
    }

    /// Counts one create against `caller`'s quotas, or says which is used
    /// up. `None`: the caller has no quotas, nothing is counted.
    pub async fn reserve(
        self: &Arc<Self>,
        caller: &Caller,
        price: f64,
    ) -> Result<Option<Hold>, GatewayError> {
        let q = caller.quotas;
        if !q.any() {
            return Ok(None);
        }
        let exceeded = |quota: &'static str, limit: String, frees_in_ms: u64| {
            GatewayError::QuotaExceeded(Exceeded {
                caller: caller.name.clone(),
                quota,
                limit,
                frees_in: Duration::from_millis(frees_in_ms.max(1)),
            })
        };
        let (minute, day) = match &self.redis {
            Some(redis) => {
                let limit = |v: Option<u64>| v.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX));
                let answer = redis
                    .run_script::<Vec<String>>(
                        self.script
                            .key(Self::key(redis, &caller.name))
                            .arg("reserve")
                            .arg(limit(q.creates_per_minute))
                            .arg(limit(q.creates_per_day))
                            .arg(q.credits_per_day.unwrap_or(-1.0))
                            .arg(price),
                    )
                    .await
                    .map_err(|e| {
                        tracing::warn!(error = %e, caller = &*caller.name, "quota store unreachable: create refused");
                        GatewayError::QuotaUnavailable
                    })?;
                let num = |i: usize| answer.get(i).and_then(|v| v.parse::<u64>().ok());
                match (answer.first().map(String::as_str), num(1), num(2)) {
                    (Some("0"), Some(minute), Some(day)) => (minute, day),
                    (Some(which), Some(frees), _) => {
                        return Err(match which {
                            "1" => {
                                exceeded("creates_per_minute", fmt_u(q.creates_per_minute), frees)
                            }
                            "2" => exceeded("creates_per_day", fmt_u(q.creates_per_day), frees),
                            _ => exceeded("credits_per_day", fmt_f(q.credits_per_day), frees),
                        });
                    }
                    _ => return Err(GatewayError::QuotaUnavailable),
                }
            }
            None => {
                let now = now_ms();
                let mut book = self.local.lock();
                let usage = book.entry(caller.name.clone()).or_default();
                let u = usage.at(now);
                let to_minute = (u.minute + 1) * MINUTE_MS - now;
                let to_day = (u.day + 1) * DAY_MS - now;
                if q.creates_per_minute
                    .is_some_and(|l| u.creates_minute + 1 > l)
                {
                    return Err(exceeded(
                        "creates_per_minute",
                        fmt_u(q.creates_per_minute),
                        to_minute,
                    ));
                }
                if q.creates_per_day.is_some_and(|l| u.creates_day + 1 > l) {
                    return Err(exceeded(
                        "creates_per_day",
                        fmt_u(q.creates_per_day),
                        to_day,
                    ));
                }
                if q.credits_per_day.is_some_and(|l| u.credits_day + price > l) {
                    return Err(exceeded(
                        "credits_per_day",
                        fmt_f(q.credits_per_day),
                        to_day,
                    ));
                }
                *usage = Usage {
                    creates_minute: u.creates_minute + 1,
                    creates_day: u.creates_day + 1,
                    credits_day: u.credits_day + price,
                    ..u
                };
                (u.minute, u.day)
            }
        };
        Ok(Some(Hold {
            book: self.clone(),
            caller: caller.name.clone(),
            minute,
            day,
            credits: price,
        }))
    }

    /// Where `caller` stands now.
    pub async fn standing(&self, caller: &Caller) -> Result<Standing, GatewayError> {
        match &self.redis {
            Some(redis) if caller.quotas.any() => {
                let answer = redis
                    .run_script::<Vec<String>>(
                        self.script.key(Self::key(redis, &caller.name)).arg("read"),
                    )
                    .await
                    .map_err(|_| GatewayError::QuotaUnavailable)?;
                let get = |i: usize| answer.get(i).and_then(|v| v.parse::<f64>().ok());
                match (get(0), get(1), get(2), get(3)) {
                    (Some(now), Some(m), Some(d), Some(c)) => Ok(Standing {
                        now_ms: now as u64,
                        creates_minute: m as u64,
                        creates_day: d as u64,
                        credits_day: c,
                    }),
                    _ => Err(GatewayError::QuotaUnavailable),
                }
            }
            _ => {
                let now = now_ms();
                let u = self
                    .local
                    .lock()
                    .get(&caller.name)
                    .copied()
                    .unwrap_or_default()
                    .at(now);
                Ok(Standing {
                    now_ms: now,
                    creates_minute: u.creates_minute,
                    creates_day: u.creates_day,
                    credits_day: u.credits_day,
                })
            }
        }
    }

    fn bound_key(redis: &Redis, task_id: &str) -> String {
        redis.keys().key("quota-task", task_id)
    }

    async fn bind(&self, hold: &Hold, task_id: &str) {
        let bound = Bound {
            caller: hold.caller.clone(),
            day: hold.day,
            credits: hold.credits,
        };
        match &self.redis {
            Some(redis) => {
                let value = format!("{} {} {}", bound.day, bound.credits, bound.caller);
                let key = Self::bound_key(redis, task_id);
                let set = redis
                    .call(|mut c| async move {
                        redis::cmd("SET")
                            .arg(key)
                            .arg(value)
                            .arg("PX")
                            .arg(BOUND_TTL_MS)
                            .query_async::<()>(&mut c)
                            .await
                    })
                    .await;
                if let Err(e) = set {
                    // The price stays counted: the caller's side again.
                    tracing::warn!(error = %e, caller = &*hold.caller, "a quota hold was not bound to its task");
                }
            }
            None => {
                let mut bound_map = self.bound.lock();
                if bound_map.len() >= BOUND_LOCAL_MAX {
                    let today = now_ms() / DAY_MS;
                    bound_map.retain(|_, b| b.day + 1 >= today);
                }
                if bound_map.len() < BOUND_LOCAL_MAX {
                    bound_map.insert(task_id.to_owned(), bound);
                }
            }
        }
    }

    /// `task_id` has ended (`failed` or succeeded) and kie.ai says it
    /// charged `consumed`: the task's hold, if one is bound to it, is
    /// corrected to that, once. A success without the figure keeps the
    /// price; a failure without it was not charged. The create itself stays
    /// counted: kie.ai made the task.
    pub async fn settle(&self, task_id: &str, failed: bool, consumed: Option<f64>) {
        let bound = match &self.redis {
            Some(redis) => {
                let key = Self::bound_key(redis, task_id);
                let taken = redis
                    .call(|mut c| async move {
                        redis::cmd("GETDEL")
                            .arg(key)
                            .query_async::<Option<String>>(&mut c)
                            .await
                    })
                    .await;
                match taken {
                    Ok(value) => value.and_then(|v| parse_bound(&v)),
                    Err(e) => {
                        tracing::warn!(error = %e, %task_id, "a task's quota hold was not settled");
                        None
                    }
                }
            }
            None => self.bound.lock().remove(task_id),
        };
        let Some(bound) = bound else { return };
        let charged = match (failed, consumed) {
            (_, Some(c)) if c >= 0.0 => c,
            (true, _) => 0.0,
            (false, _) => bound.credits,
        };
        let delta = charged - bound.credits;
        if delta == 0.0 {
            return;
        }
        match &self.redis {
            Some(redis) => {
                let settled = redis
                    .run_script::<Vec<String>>(
                        self.script
                            .key(Self::key(redis, &bound.caller))
                            .arg("settle")
                            .arg(bound.day)
                            .arg(delta),
                    )
                    .await;
                if let Err(e) = settled {
                    tracing::warn!(error = %e, caller = &*bound.caller, "a task's quota hold was not settled");
                }
            }
            None => {
                let mut book = self.local.lock();
                if let Some(usage) = book.get_mut(&bound.caller)
                    && usage.day == bound.day
                {
                    usage.credits_day = (usage.credits_day + delta).max(0.0);
                }
            }
        }
    }

    async fn release(&self, hold: &Hold) {
        match &self.redis {
            Some(redis) => {
                let released = redis
                    .run_script::<Vec<String>>(
                        self.script
                            .key(Self::key(redis, &hold.caller))
                            .arg("release")
                            .arg(hold.minute)
                            .arg(hold.day)
                            .arg(hold.credits),
                    )
                    .await;
                if let Err(e) = released {
                    // Counted and not used: errs on the caller's side of
                    // the quota, never the operator's bill.
                    tracing::warn!(error = %e, caller = &*hold.caller, "a quota hold was not handed back");
                }
            }
            None => {
                let mut book = self.local.lock();
                if let Some(usage) = book.get_mut(&hold.caller) {
                    if usage.minute == hold.minute {
                        usage.creates_minute = usage.creates_minute.saturating_sub(1);
                    }
                    if usage.day == hold.day {
                        usage.creates_day = usage.creates_day.saturating_sub(1);
                        usage.credits_day = (usage.credits_day - hold.credits).max(0.0);
                    }
                }
            }
        }
    }
}

/// One create's place in its caller's quotas.
pub struct Hold {
    book: Arc<QuotaBook>,
    caller: Arc<str>,
    minute: u64,
    day: u64,
    credits: f64,
}

impl Hold {
    /// kie.ai certainly made no task: the create and its credits are
    /// handed back.
    pub async fn release(self) {
        self.book.release(&self).await;
    }

    /// kie.ai made `task_id`: the hold is kept until the task ends, then
    /// settled against what kie.ai charged (`QuotaBook::settle`).
    pub async fn bind(self, task_id: &str) {
        self.book.bind(&self, task_id).await;
    }
}

/// `"<day> <credits> <caller>"`, as `bind` writes it.
fn parse_bound(value: &str) -> Option<Bound> {
    let mut parts = value.splitn(3, ' ');
    let day = parts.next()?.parse().ok()?;
    let credits = parts
        .next()?
        .parse::<f64>()
        .ok()
        .filter(|c| c.is_finite())?;
    let caller = parts.next().filter(|c| !c.is_empty())?;
    Some(Bound {
        caller: caller.into(),
        day,
        credits,
    })
}

fn fmt_u(v: Option<u64>) -> String {
    v.map_or_else(String::new, |v| v.to_string())
}

fn fmt_f(v: Option<f64>) -> String {
    v.map_or_else(String::new, |v| v.to_string())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
