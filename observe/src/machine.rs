//! What machine a benchmark ran on, for the `machine` object of every
//! benchmark report (`docs/ARCHITECTURE.md`, "Benchmarks").

/// `{"cores", "cpu", "memory_bytes"}` from the OS (`/proc` on Linux; empty or
/// zero where unavailable).
pub fn describe() -> serde_json::Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let mem_kb: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0);
    serde_json::json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "memory_bytes": mem_kb * 1024,
    })
}
