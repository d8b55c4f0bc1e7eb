//! What a connection may cost a real `deskgate serve` before it sends a
//! request: slow, silent and trickling clients are closed at the header
//! deadline while normal clients are still answered; an oversized request
//! head gets 431; an idle keep-alive connection is closed; and the per-client
//! and total connection caps close extra connections at once.
//!
//! Clients come from several loopback addresses (127.0.0.2, 127.0.0.3, …),
//! which Linux routes to the gate like 127.0.0.1, so that per-client caps can
//! be exercised without leaving the machine. The gate runs without a
//! database (none of this needs one).

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use support::{Deskgate, as_env, free_port, loopback, scrape_metrics, serve_env};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The header deadline the tests configure, in seconds: long enough that
/// opening the 1,000 slow connections takes well under half of it on a busy
/// 2-core CI machine (1.16 s was seen there).
const DEADLINE_SECS: u64 = 4;
const DEADLINE_TEXT: &str = "4";

/// A gate with `extra` settings, no database, and a metrics listener;
/// returns it with its address and its metrics address.
async fn start_gate(extra: &[(&'static str, &str)]) -> (Deskgate, SocketAddr, String) {
    let port = free_port();
    let metrics_port = free_port();
    let mut env = serve_env(port);
    // Nothing here needs the database: point at a closed port so the gate
    // cannot touch the shared one.
    env.retain(|(k, _)| *k != "DESKGATE_DATABASE_URL");
    env.push((
        "DESKGATE_DATABASE_URL",
        "postgres://deskgate:deskgate@127.0.0.1:1/deskgate".into(),
    ));
    env.push(("DESKGATE_METRICS_ADDR", format!("127.0.0.1:{metrics_port}")));
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let mut gate = Deskgate::spawn(&["serve"], &as_env(&env));
    let http = reqwest::Client::new();
    gate.wait_ready(&http, &format!("http://127.0.0.1:{port}/healthz"))
        .await;
    (gate, loopback(port), format!("127.0.0.1:{metrics_port}"))
}

/// A TCP connection to `gate` from the loopback address `source`.
async fn connect_from(source: Ipv4Addr, gate: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(IpAddr::V4(source), 0))
        .unwrap_or_else(|err| panic!("bind to {source}: {err}"));
    socket
        .connect(gate)
        .await
        .unwrap_or_else(|err| panic!("connect from {source}: {err}"))
}

/// Reads until the server closes the connection (end of stream or reset);
/// returns everything it sent.
async fn read_until_closed(stream: &mut tokio::net::tcp::OwnedReadHalf) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return received,
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// How a slow client behaves.
#[derive(Clone, Copy, Debug)]
enum Slowness {
    /// Connects and sends nothing.
    Silent,
    /// Sends half a request line, then nothing.
    PartialLine,
    /// Sends a request line, then one header line every 500 ms, never the
    /// blank line that ends the head.
    Trickle,
}

/// Holds one slow connection until the gate closes it; returns how long
/// after connecting that was.
async fn hold_slow_connection(stream: TcpStream, slowness: Slowness) -> Duration {
    let opened = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    let sender = tokio::spawn(async move {
        match slowness {
            Slowness::Silent => {}
            Slowness::PartialLine => {
                let _ = writer.write_all(b"GET /api/v1/pric").await;
            }
            Slowness::Trickle => {
                if writer
                    .write_all(b"GET /healthz HTTP/1.1\r\n")
                    .await
                    .is_err()
                {
                    return writer;
                }
                for n in 0u32.. {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let line = format!("x-trickle-{n}: still here\r\n");
                    if writer.write_all(line.as_bytes()).await.is_err() {
                        break;
                    }
                }
            }
        }
        writer
    });
    read_until_closed(&mut reader).await;
    let held = opened.elapsed();
    sender.abort();
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_clients_are_closed_at_the_header_deadline_while_others_are_served() {
    // 1,000 client sockets here, 1,000 in the gate: more than the usual
    // soft limit of 1024 open files.
    rlimit::increase_nofile_limit(8192).expect("raise the open-files limit");
    let deadline = Duration::from_secs(DEADLINE_SECS);
    let (gate, addr, metrics) =
        start_gate(&[("DESKGATE_HTTP_HEADER_TIMEOUT_SECONDS", DEADLINE_TEXT)]).await;

    // 1,000 slow connections from ten addresses, 100 each: under the
    // default per-client cap of 128, so every one is admitted and held.
    const SLOW: usize = 1_000;
    let kinds = [Slowness::Silent, Slowness::PartialLine, Slowness::Trickle];
    let mut held = tokio::task::JoinSet::new();
    let started = Instant::now();
    for n in 0..SLOW {
        let source = Ipv4Addr::new(127, 0, 0, 2 + (n % 10) as u8);
        let stream = connect_from(source, addr).await;
        let kind = kinds[n % kinds.len()];
        held.spawn(async move { (kind, hold_slow_connection(stream, kind).await) });
    }
    let all_open = started.elapsed();
    assert!(
        all_open < deadline / 2,
        "opening {SLOW} connections took {all_open:?}, too close to the deadline to test it"
    );

    // While they are held, a normal client is answered promptly.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut normal_latencies = Vec::new();
    for _ in 0..20 {
        let asked = Instant::now();
        let response = http
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .unwrap_or_else(|err| panic!("a normal client was not answered: {err}"));
        assert_eq!(response.status(), 200);
        normal_latencies.push(asked.elapsed());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        started.elapsed() < deadline,
        "the normal requests ran past the deadline, so they were not made while the slow connections were held"
    );

    // Every slow connection is closed by the gate, not before the deadline
    // and not long after it.
    let mut closed_after = Vec::new();
    let collect = async {
        while let Some(result) = held.join_next().await {
            closed_after.push(result.expect("slow client task"));
        }
    };
    if tokio::time::timeout(deadline * 4, collect).await.is_err() {
        panic!(
            "{} of {SLOW} slow connections were still open {:?} after the {deadline:?} header deadline",
            SLOW - closed_after.len(),
            deadline * 4
        );
    }
    for (kind, after) in &closed_after {
        assert!(
            *after >= deadline - Duration::from_millis(100),
            "a {kind:?} connection was closed after {after:?}, before the {deadline:?} deadline"
        );
        assert!(
            *after <= deadline + Duration::from_millis(1500),
            "a {kind:?} connection was closed only after {after:?} (deadline {deadline:?})"
        );
    }
    let mut times: Vec<_> = closed_after.iter().map(|(_, d)| *d).collect();
    times.sort();
    normal_latencies.sort();
    let dropped = scrape_metrics(&metrics).await;
    let timeouts: f64 = dropped
        .lines()
        .find(|l| {
            l.starts_with("deskgate_http_dropped_connections_total{reason=\"header_timeout\"}")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no header_timeout count in the scrape:\n{dropped}"));
    assert_eq!(
        timeouts as usize, SLOW,
        "every slow connection counted once"
    );
    println!(
        "{SLOW} slow connections (silent, half a request line, a header line every 500 ms) held from 10 addresses; \
         closed by the gate after min {:?}, median {:?}, max {:?} (deadline {deadline:?}); \
         meanwhile 20/20 normal requests answered, median {:?}, max {:?}",
        times[0],
        times[times.len() / 2],
        times[times.len() - 1],
        normal_latencies[normal_latencies.len() / 2],
        normal_latencies[normal_latencies.len() - 1],
    );
    drop(gate);
}

#[tokio::test]
async fn oversized_request_heads_get_431_and_idle_keep_alive_connections_are_closed() {
    let (gate, addr, _metrics) =
        start_gate(&[("DESKGATE_HTTP_HEADER_TIMEOUT_SECONDS", DEADLINE_TEXT)]).await;

    // 200 KB of header: refused with 431, and the connection closed.
    let stream = connect_from(Ipv4Addr::new(127, 0, 0, 1), addr).await;
    let (mut reader, mut writer) = stream.into_split();
    let big = format!(
        "GET /healthz HTTP/1.1\r\nhost: gate\r\nx-big: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    // The gate may close before taking all of it: a failed write is fine.
    let _ = writer.write_all(big.as_bytes()).await;
    let answer = tokio::time::timeout(Duration::from_secs(5), read_until_closed(&mut reader))
        .await
        .expect("the connection was not closed after an oversized head");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "answer to a 200 KB head: {answer:?}\n{}",
        gate.output()
    );

    // A 12 KB head is within the default 16 KiB limit.
    let stream = connect_from(Ipv4Addr::new(127, 0, 0, 1), addr).await;
    let (mut reader, mut writer) = stream.into_split();
    let fitting = format!(
        "GET /healthz HTTP/1.1\r\nhost: gate\r\nx-big: {}\r\n\r\n",
        "a".repeat(12_000)
    );
    writer.write_all(fitting.as_bytes()).await.unwrap();
    let mut buf = [0u8; 1024];
    let n = reader.read(&mut buf).await.unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "answer to a 12 KB head: {answer:?}"
    );

    // That connection is kept alive after its response, then closed when
    // no new request arrives within the deadline.
    let answered = Instant::now();
    let rest = tokio::time::timeout(Duration::from_secs(10), read_until_closed(&mut reader))
        .await
        .expect("an idle keep-alive connection was still open 10 s after its response");
    let idle = answered.elapsed();
    let deadline = Duration::from_secs(DEADLINE_SECS);
    assert!(
        idle >= deadline - Duration::from_millis(100)
            && idle <= deadline + Duration::from_millis(1500),
        "idle keep-alive connection closed after {idle:?} (deadline {DEADLINE_SECS} s)"
    );
    // It was closed without another response (hyper may add nothing).
    assert!(
        !String::from_utf8_lossy(&rest).contains("HTTP/1.1"),
        "{rest:?}"
    );
    println!("431 for a 200 KB head; idle keep-alive connection closed after {idle:?}");
}

/// Whether the gate closed `stream` within `within` (end of stream or reset)
/// rather than leaving it open.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn connections_over_the_per_client_or_total_cap_are_closed_at_once() {
    let (gate, addr, metrics) = start_gate(&[
        ("DESKGATE_MAX_CONNECTIONS_PER_CLIENT", "5"),
        ("DESKGATE_MAX_CONNECTIONS", "8"),
    ])
    .await;
    let a = Ipv4Addr::new(127, 0, 0, 2);
    let b = Ipv4Addr::new(127, 0, 0, 3);
    let c = Ipv4Addr::new(127, 0, 0, 4);

    let mut from_a = Vec::new();
    for _ in 0..5 {
        from_a.push(connect_from(a, addr).await);
    }
    let mut sixth = connect_from(a, addr).await;
    assert!(
        closed_within(&mut sixth, Duration::from_secs(2)).await,
        "a sixth connection from one address was held (cap 5)"
    );
    // The five admitted ones are held open (the header deadline is 10 s).
    for stream in &mut from_a {
        assert!(!closed_within(stream, Duration::from_millis(100)).await);
    }

    // Another address still gets in, up to the total of 8.
    let mut from_b = Vec::new();
    for _ in 0..3 {
        from_b.push(connect_from(b, addr).await);
    }
    for stream in &mut from_b {
        assert!(!closed_within(stream, Duration::from_millis(100)).await);
    }
    let mut ninth = connect_from(c, addr).await;
    assert!(
        closed_within(&mut ninth, Duration::from_secs(2)).await,
        "a ninth connection was held (total cap 8)"
    );

    // Closing one frees its place.
    drop(from_a.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = connect_from(c, addr).await;
    assert!(
        !closed_within(&mut again, Duration::from_millis(500)).await,
        "a place freed by a closed connection was not given to the next one"
    );

    // The metrics listener has its own count: it answers while the gate's
    // listener is full.
    let scrape = scrape_metrics(&metrics).await;
    for reason in ["client_limit", "total_limit"] {
        let series = format!("deskgate_http_dropped_connections_total{{reason=\"{reason}\"}} 1");
        assert!(
            scrape.lines().any(|l| l == series),
            "no `{series}` in the scrape:\n{scrape}\n{}",
            gate.output()
        );
    }
}
