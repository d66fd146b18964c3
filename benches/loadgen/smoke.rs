//! What `smoke` asserts: every scenario ran and its figures make sense.

use crate::figures::Figures;
use crate::plan::Plan;
use crate::unary::Route;

pub fn smoke_checks(plan: &Plan, f: &Figures) -> Vec<String> {
    let mut failures = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            failures.push(what);
        }
    };
    for &c in &plan.concurrency {
        for route in Route::ALL {
            let k = |w: &str| format!("unary/{}/c{c}/{w}", route.name());
            check(
                f.get(&k("rps")).iter().all(|r| *r > 0.0),
                format!("{} c{c}: no requests completed", route.name()),
            );
            check(
                f.get(&k("errors")).iter().all(|e| *e == 0.0),
                format!("{} c{c}: errors", route.name()),
            );
        }
        check(
            f.get(&format!("unary/gateway/c{c}/cpu_gateway"))
                .iter()
                .all(|c| c.is_finite()),
            format!("c{c}: gateway CPU not measured"),
        );
    }
    let all =
        |key: &str, want: f64| f.get(key).iter().all(|v| *v == want) && !f.get(key).is_empty();
    check(
        all("capacity/burst/opened", plan.burst as f64),
        "not every burst stream opened".into(),
    );
    check(
        all("capacity/burst/dropped", 0.0),
        "burst streams dropped".into(),
    );
    check(
        all("capacity/all/opened", plan.capacity as f64),
        "not every stream opened".into(),
    );
    check(all("capacity/all/dropped", 0.0), "streams dropped".into());
    check(
        all("capacity/all/gateway_watchers", plan.capacity as f64),
        "the gateway's active_watchers gauge disagrees".into(),
    );
    check(
        ["gateway", "bare", "spread"]
            .iter()
            .all(|p| all(&format!("fanout/{p}/delivered"), plan.fanout as f64)),
        "fan-out did not reach every watcher".into(),
    );
    let big = plan.economy_watchers.iter().copied().max().unwrap_or(1);
    for mode in ["polling", "callbacks"] {
        let one = f.get(&format!("economy/{mode}/1"));
        let many = f.get(&format!("economy/{mode}/{big}"));
        // Timing may shift one read either way on a busy machine.
        check(
            !one.is_empty() && one.iter().zip(many).all(|(a, b)| (a - b).abs() <= 1.0),
            format!("{mode}: {big} watchers read {many:?}, 1 watcher {one:?}"),
        );
        let direct = f.get(&format!("economy/direct/{big}"));
        check(
            direct.iter().zip(many).all(|(d, g)| d > g),
            format!("{mode}: the gateway read no less than {big} polling clients"),
        );
    }
    for &c in &plan.concurrency {
        for path in crate::fleet::Path5::ALL {
            let k = |w: &str| format!("fleet/{}/c{c}/{w}", path.name());
            check(
                f.get(&k("rps")).iter().all(|r| *r > 0.0) && !f.get(&k("rps")).is_empty(),
                format!("fleet {} c{c}: no requests completed", path.name()),
            );
            check(
                f.get(&k("errors")).iter().all(|e| *e == 0.0),
                format!("fleet {} c{c}: errors", path.name()),
            );
        }
    }
    let reads = |setup: &str| f.get(&format!("fleet_watch/reads/{setup}"));
    let (one, three, unshared) = (reads("single_process"), reads("fleet"), reads("unshared"));
    check(
        !one.is_empty() && one.iter().zip(three).all(|(a, b)| (a - b).abs() <= 1.0),
        format!("fleet reads {three:?} against one process's {one:?}"),
    );
    check(
        one.iter().zip(unshared).all(|(a, u)| u > a),
        format!("three gateways without Redis read {unshared:?}, no more than one {one:?}"),
    );
    for p in crate::fleet_watch::Placement::ALL {
        let k = |what: &str| format!("fleet_watch/callback/{}/{what}", p.name());
        check(
            all(&k("delivered"), (plan.fleet_callback_tasks * 2) as f64),
            format!(
                "{}: not every watcher got the callback's SUCCEEDED",
                p.name()
            ),
        );
    }
    for setup in ["single_process", "fleet"] {
        let processes = if setup == "fleet" {
            crate::fleet_watch::REPLICAS
        } else {
            1
        };
        let k = |what: &str| format!("fleet_watch/idle/{setup}/{what}");
        let want = (plan.fleet_idle_streams * processes) as f64;
        check(
            all(&k("opened"), want) && all(&k("lost"), 0.0) && all(&k("gauge"), want),
            format!("{setup}: idle streams not all open, or lost, or the gauges disagree"),
        );
    }
    let uploads = (plan.upload_clients * plan.upload_rounds) as f64;
    for path in crate::uploads::UploadPath::all(plan) {
        let k = |what: &str| format!("uploads/{}/{what}", path.name());
        check(
            all(&k("completed"), uploads) && all(&k("errors"), 0.0),
            format!("{}: not every upload completed", path.name()),
        );
        if let crate::uploads::UploadPath::Gateway { .. } = path {
            check(
                f.get(&k("gateway_growth_mib"))
                    .iter()
                    .all(|g| g.is_finite())
                    && !f.get(&k("gateway_growth_mib")).is_empty(),
                format!("{}: the gateway's peak RSS was not measured", path.name()),
            );
        }
    }
    failures
}
