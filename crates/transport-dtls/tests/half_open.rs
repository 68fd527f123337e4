//! The half-open limit: peers that pass the cookie check and then go silent hold at most
//! `max_half_open` handshakes, and give way to newcomers instead of keeping them out.

mod support;

use std::time::{Duration, Instant};

use streamproxy_dtls::DtlsConnector;
use support::{cookieless_hello, echo_server, pki, stalled_peer};
use test_support::{tagged_payload, wait_until};

const LIMIT: usize = 4;
const STALLED: usize = 6;
/// Long next to a loopback handshake (milliseconds), short enough for the un-evicted stalled
/// handshakes to end within the test.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(4);
const TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn stalled_handshakes_give_way_to_newcomers_and_free_their_state() {
    let pki = pki();
    let config = pki
        .server_config()
        .max_half_open(LIMIT)
        .handshake_timeout(HANDSHAKE_TIMEOUT);
    let (addr, handle) = echo_server(config).await;
    let hello = cookieless_hello(&pki.client_config()).await;

    // Six peers finish the cookie exchange and go silent: the last two evict the first two.
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        stalled.push(stalled_peer(addr, &hello).await);
    }
    let evicted_by_flood = (STALLED - LIMIT) as u64;
    wait_until(
        "handle.stats().handshakes_evicted == evicted_by_flood",
        TIMEOUT,
        || handle.stats().handshakes_evicted == evicted_by_flood,
    )
    .await;
    let stats = handle.stats();
    assert_eq!(stats.half_open, LIMIT, "{stats:?}");
    assert_eq!(
        stats.peers, LIMIT,
        "evicted addresses are forgotten: {stats:?}"
    );
    assert_eq!(stats.client_hellos_dropped, 0, "{stats:?}");
    assert_eq!(
        stats.handshakes_failed, 0,
        "an eviction is not a failure: {stats:?}"
    );

    // The evicted peers have no state left: their next record is from an unknown address.
    let record = [23, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 9, 0, 1, 0xff];
    for socket in &stalled[..STALLED - LIMIT] {
        socket.send_to(&record, addr).await.unwrap();
    }
    let bad_before = stats.bad_datagrams;
    wait_until(
        "handle.stats().bad_datagrams == bad_before + evicted_by_flood",
        TIMEOUT,
        || handle.stats().bad_datagrams == bad_before + evicted_by_flood,
    )
    .await;

    // A good client arrives at the limit: it evicts the oldest stalled handshake instead of
    // waiting for one to time out.
    let connector = DtlsConnector::new(&pki.client_config()).unwrap();
    let started = Instant::now();
    let mut session = connector.connect(addr).await.unwrap();
    let took = started.elapsed();
    eprintln!("good client at the half-open limit: handshake in {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "the good client waited {took:?} (handshake timeout {HANDSHAKE_TIMEOUT:?})"
    );
    let sent = tagged_payload(1, 700);
    session.send(&sent).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(TIMEOUT, session.recv(&mut buf))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], &sent[..]);
    let stats = handle.stats();
    assert_eq!(stats.handshakes_evicted, evicted_by_flood + 1, "{stats:?}");
    assert_eq!(stats.handshakes_ok, 1, "{stats:?}");

    // The three stalled handshakes left time out; nothing else is held. Had the evicted ones
    // lingered, they would time out as well.
    wait_until(
        "handle.stats().half_open == 0",
        HANDSHAKE_TIMEOUT + TIMEOUT,
        || handle.stats().half_open == 0,
    )
    .await;
    wait_until("handle.stats().peers == 1", TIMEOUT, || {
        handle.stats().peers == 1
    })
    .await;
    let stats = handle.stats();
    let left = (LIMIT - 1) as u64;
    assert_eq!(stats.handshakes_timed_out, left, "{stats:?}");
    assert_eq!(stats.handshakes_failed, left, "{stats:?}");
    assert_eq!(stats.handshakes_evicted, evicted_by_flood + 1, "{stats:?}");
    assert_eq!(stats.client_hellos_dropped, 0, "{stats:?}");
}
