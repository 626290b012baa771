//! Running a matrix's jobs on scoped threads: worker `k` of `threads` takes its share, and the
//! results come back in worker order (a worker's panic is re-raised).

/// Runs `worker(k)` for `k` in `0..threads` (on the calling thread when `threads` is 1) and
/// returns the results in worker order.
pub(crate) fn fan_out<T: Send>(threads: usize, worker: impl Fn(usize) -> T + Sync) -> Vec<T> {
    if threads <= 1 {
        return vec![worker(0)];
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|k| {
                let worker = &worker;
                scope.spawn(move || worker(k))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}
