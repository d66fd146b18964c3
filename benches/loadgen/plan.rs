//! The plan of a run: sizes and durations, `full` or `smoke`.

use std::time::Duration;

use hailuo_gateway::image::MAX_IMAGE_BYTES;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Full,
    Smoke,
}

/// Sizes and durations of one run.
pub struct Plan {
    pub mode: Mode,
    pub reps: usize,
    pub warmup: Duration,
    pub phase: Duration,
    pub concurrency: Vec<usize>,
    /// Streams opened at once on one connection.
    pub burst: usize,
    /// Streams held open in all.
    pub capacity: usize,
    pub hold: Duration,
    pub fanout: usize,
    pub fanout_connections: usize,
    /// Tasks the spread fan-out's `fanout` watchers are spread over.
    pub spread_tasks: usize,
    pub economy_watchers: Vec<usize>,
    /// Watchers of one task in the fleet's reads figure, in all (spread
    /// over three replicas, or on one gateway).
    pub fleet_watchers: usize,
    /// Tasks per path in the callback-to-watcher latency figure (two
    /// watchers each).
    pub fleet_callback_tasks: usize,
    /// Idle WatchTask streams per process in the fleet's memory figure.
    pub fleet_idle_streams: usize,
    /// Clients uploading at once in the uploads scenario, each on its own
    /// connection.
    pub upload_clients: usize,
    /// Size of each uploaded image.
    pub upload_bytes: usize,
    /// Uploads per client, one after the other.
    pub upload_rounds: usize,
    /// The gateway's `GATEWAY_MAX_CONCURRENT_UPLOADS` settings measured, the
    /// default first.
    pub upload_slots: Vec<usize>,
    /// Time scale of the economy scenario: simulator state timings, the
    /// gateway's poll cadence and the clients' 3 s interval are all
    /// multiplied by it, so the ratios do not depend on it.
    pub scale: f64,
}

impl Plan {
    pub fn full() -> Self {
        Self {
            mode: Mode::Full,
            reps: 3,
            warmup: Duration::from_secs(1),
            phase: Duration::from_secs(4),
            concurrency: vec![1, 16, 64],
            burst: 10_000,
            capacity: 100_000,
            hold: Duration::from_secs(5),
            fanout: 10_000,
            fanout_connections: 10,
            spread_tasks: 1_000,
            economy_watchers: vec![1, 10_000],
            fleet_watchers: 3_000,
            fleet_callback_tasks: 100,
            fleet_idle_streams: 20_000,
            upload_clients: 16,
            upload_bytes: MAX_IMAGE_BYTES,
            upload_rounds: 4,
            upload_slots: vec![8, 16],
            scale: 1.0,
        }
    }

    pub fn smoke() -> Self {
        Self {
            mode: Mode::Smoke,
            reps: 1,
            warmup: Duration::from_millis(200),
            phase: Duration::from_millis(500),
            concurrency: vec![1, 8],
            burst: 500,
            capacity: 1_000,
            hold: Duration::from_millis(500),
            fanout: 200,
            fanout_connections: 2,
            spread_tasks: 20,
            economy_watchers: vec![1, 50],
            fleet_watchers: 30,
            fleet_callback_tasks: 10,
            fleet_idle_streams: 300,
            upload_clients: 4,
            upload_bytes: 1024 * 1024,
            upload_rounds: 2,
            upload_slots: vec![2, 4],
            scale: 0.1,
        }
    }

    fn scaled(&self, d: Duration) -> Duration {
        d.mul_f64(self.scale)
    }

    /// What a task's states last in the simulator (1 s / 1 s / 3 s at
    /// scale 1, the simulator's defaults).
    pub fn sim_timings(&self) -> [Duration; 3] {
        [
            self.scaled(Duration::from_secs(1)),
            self.scaled(Duration::from_secs(1)),
            self.scaled(Duration::from_secs(3)),
        ]
    }

    /// How often a client without the gateway polls recordInfo.
    pub fn client_interval(&self) -> Duration {
        self.scaled(Duration::from_secs(3))
    }
}
