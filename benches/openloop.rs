//! An open-loop load generator, for benches/compare.py: requests fall due on a fixed
//! schedule whether or not earlier ones were answered, and each latency runs from when the
//! request was due, not from when a connection was free to send it. A server that stalls is
//! charged for every request it held up (no coordinated omission, as in wrk2).
//!
//!     openloop URL RATE SECONDS [CONNECTIONS]
//!
//! Prints one line: `due N ok N failed N achieved R p50_us X p99_us Y max_us Z`. Built by
//! `cargo bench --bench openloop --no-run`; not a criterion bench.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, Mutex};

type Due = mpsc::UnboundedReceiver<Instant>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let usage = "usage: openloop URL RATE SECONDS [CONNECTIONS]";
    if args.is_empty() {
        // `cargo bench` runs every bench with no arguments: this one is run by compare.py.
        eprintln!("{usage} (run by benches/compare.py)");
        return;
    }
    let (Some(url), Some(rate), Some(seconds)) = (args.first(), args.get(1), args.get(2)) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let uri: hyper::Uri = url.parse().expect(usage);
    let rate: f64 = rate.parse().expect(usage);
    let seconds: f64 = seconds.parse().expect(usage);
    let connections: usize = args.get(3).map_or(50, |c| c.parse().expect(usage));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    println!("{}", runtime.block_on(run(uri, rate, seconds, connections)));
}

async fn run(uri: hyper::Uri, rate: f64, seconds: f64, connections: usize) -> String {
    let (send, due) = mpsc::unbounded_channel();
    let due = Arc::new(Mutex::new(due));
    let mut workers = Vec::new();
    for _ in 0..connections {
        workers.push(tokio::spawn(worker(uri.clone(), due.clone())));
    }
    // Each request falls due at its own instant. The timer wheel has 1 ms ticks, far too
    // coarse at thousands per second, so the schedule spins (the generator has a CPU of
    // its own) and yields to the connections between checks.
    let total = (rate * seconds) as u64;
    let start = Instant::now() + Duration::from_millis(100);
    let due_at = |n: u64| start + Duration::from_secs_f64(n as f64 / rate);
    let mut next = 0u64;
    while next < total {
        let now = Instant::now();
        while next < total && due_at(next) <= now {
            let _ = send.send(due_at(next));
            next += 1;
        }
        tokio::task::yield_now().await;
    }
    drop(send);
    let (mut latencies, mut failed, mut last) = (Vec::new(), 0u64, start);
    for worker in workers {
        let (ok, errors, finished) = worker.await.unwrap();
        latencies.extend(ok);
        failed += errors;
        last = last.max(finished);
    }
    latencies.sort_unstable();
    let at = |q: f64| latencies.get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)));
    let achieved = latencies.len() as f64 / last.duration_since(start).as_secs_f64();
    format!(
        "due {total} ok {} failed {failed} achieved {achieved:.0} p50_us {} p99_us {} max_us {}",
        latencies.len(),
        at(0.5).copied().unwrap_or(0),
        at(0.99).copied().unwrap_or(0),
        latencies.last().copied().unwrap_or(0),
    )
}

/// One keep-alive connection: takes the next due request, sends it, reads the whole
/// response. Returns the latencies in µs, the failures, and when it last finished.
async fn worker(uri: hyper::Uri, due: Arc<Mutex<Due>>) -> (Vec<u32>, u64, Instant) {
    let (mut latencies, mut failed, mut last) = (Vec::new(), 0, Instant::now());
    let authority = uri.authority().expect("an absolute URL").clone();
    let mut sender = None;
    loop {
        let Some(at) = due.lock().await.recv().await else { break };
        if sender.is_none() {
            sender = connect(authority.as_str()).await;
        }
        let Some(s) = sender.as_mut() else {
            failed += 1;
            continue;
        };
        let request = hyper::Request::get(uri.clone())
            .header(hyper::header::HOST, authority.as_str())
            .body(Empty::<Bytes>::new())
            .unwrap();
        let ok = match s.send_request(request).await {
            Ok(response) => response.status().is_success() && response.into_body().collect().await.is_ok(),
            Err(_) => false,
        };
        last = Instant::now();
        if ok {
            latencies.push(last.duration_since(at).as_micros().min(u32::MAX as u128) as u32);
        } else {
            failed += 1;
            sender = None; // a new connection for the next one
        }
    }
    (latencies, failed, last)
}

async fn connect(authority: &str) -> Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(authority).await.ok()?;
    stream.set_nodelay(true).ok()?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(connection);
    Some(sender)
}
