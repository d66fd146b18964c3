//! Black-box tests of the kie.ai simulator: each test starts its own
//! simulator on 127.0.0.1:0 and talks to it over HTTP, pinning the kie.ai
//! behaviours the gateway relies on so the simulator cannot drift.

mod callbacks;
mod control;
mod create_task;
mod credits;
mod downloads;
mod faults;
mod helpers;
mod record_info;
mod scenarios;
mod uploads;
