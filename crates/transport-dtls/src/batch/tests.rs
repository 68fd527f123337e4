use super::*;

async fn pair() -> (UdpSocket, UdpSocket) {
    let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    (rx, tx)
}

/// Receives until `want` datagrams have come, as (source, bytes, truncated).
async fn receive(
    batch: &mut RecvBatch,
    rx: &UdpSocket,
    want: usize,
) -> Vec<(Option<SocketAddr>, Vec<u8>, bool)> {
    let mut got = Vec::new();
    while got.len() < want {
        let n = batch.recv(rx).await.unwrap();
        assert!(n >= 1);
        got.extend(
            batch
                .iter()
                .map(|d| (d.source, d.bytes.to_vec(), d.truncated)),
        );
        assert!(batch.get(n).is_none());
    }
    got
}

#[tokio::test]
async fn receives_every_queued_datagram_with_its_source_in_one_call() {
    let (rx, a) = pair().await;
    let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let to = rx.local_addr().unwrap();
    a.send_to(b"one", to).await.unwrap();
    b.send_to(b"", to).await.unwrap();
    a.send_to(&[7u8; 9000], to).await.unwrap();
    let mut batch = RecvBatch::new(32, 65536);
    let got = receive(&mut batch, &rx, 3).await;
    assert_eq!(
        got[0],
        (Some(a.local_addr().unwrap()), b"one".to_vec(), false)
    );
    assert_eq!(got[1], (Some(b.local_addr().unwrap()), Vec::new(), false));
    assert_eq!(
        got[2],
        (Some(a.local_addr().unwrap()), vec![7u8; 9000], false)
    );
}

#[tokio::test]
async fn an_empty_socket_would_block() {
    let (rx, _) = pair().await;
    let mut batch = RecvBatch::new(4, 100);
    let e = batch.try_recv(&rx).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    assert!(batch.get(0).is_none());
    assert!(batch.is_empty());
}

#[tokio::test]
async fn a_full_batch_leaves_the_rest_for_the_next_call() {
    let (rx, tx) = pair().await;
    let to = rx.local_addr().unwrap();
    for i in 0..11u8 {
        tx.send_to(&[i], to).await.unwrap();
    }
    let mut batch = RecvBatch::new(4, 16);
    let mut seen = Vec::new();
    while seen.len() < 11 {
        let n = batch.recv(&rx).await.unwrap();
        assert!(n <= 4);
        while let Some(d) = batch.next_datagram() {
            seen.push(d.bytes[0]);
        }
        assert!(!batch.has_next_datagram());
    }
    assert_eq!(seen, (0..11).collect::<Vec<u8>>());
}

#[tokio::test]
async fn a_datagram_longer_than_a_slot_is_marked_truncated_and_its_neighbours_are_whole() {
    let (rx, tx) = pair().await;
    let to = rx.local_addr().unwrap();
    tx.send_to(b"short", to).await.unwrap();
    tx.send_to(&[9u8; 100], to).await.unwrap();
    tx.send_to(b"after", to).await.unwrap();
    let mut batch = RecvBatch::new(8, 10);
    let got = receive(&mut batch, &rx, 3).await;
    let source = Some(tx.local_addr().unwrap());
    assert_eq!(got[0], (source, b"short".to_vec(), false));
    assert_eq!(got[1], (source, vec![9u8; 10], true));
    assert_eq!(got[2], (source, b"after".to_vec(), false));
}

#[tokio::test]
async fn a_batch_goes_out_in_one_flush_in_order_to_each_destination() {
    let (rx, tx) = pair().await;
    let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut out = SendBatch::new(8, 1 << 16);
    assert!(out.push(Some(rx.local_addr().unwrap()), b"a"));
    assert!(out.push(Some(other.local_addr().unwrap()), b"to other"));
    assert!(out.push(Some(rx.local_addr().unwrap()), b"bc"));
    assert_eq!(out.len(), 3);
    out.flush(&tx).await.unwrap();
    assert!(out.is_empty());
    assert_eq!(
        out.take_sent(),
        Sent {
            datagrams: 3,
            bytes: 11,
            failed: 0
        }
    );
    assert_eq!(out.take_sent(), Sent::default());
    let mut batch = RecvBatch::new(8, 100);
    let got = receive(&mut batch, &rx, 2).await;
    assert_eq!(
        (got[0].1.as_slice(), got[1].1.as_slice()),
        (&b"a"[..], &b"bc"[..])
    );
    let got = receive(&mut batch, &other, 1).await;
    assert_eq!(got[0].1, b"to other");
}

#[tokio::test]
async fn a_connected_socket_needs_no_address() {
    let (rx, tx) = pair().await;
    tx.connect(rx.local_addr().unwrap()).await.unwrap();
    let mut out = SendBatch::new(4, 1 << 16);
    for i in 0..3u8 {
        assert!(out.push(None, &[i; 3]));
    }
    out.flush(&tx).await.unwrap();
    let got = receive(&mut RecvBatch::new(4, 100), &rx, 3).await;
    let bytes: Vec<Vec<u8>> = got.into_iter().map(|g| g.1).collect();
    assert_eq!(bytes, vec![vec![0; 3], vec![1; 3], vec![2; 3]]);
}

#[test]
fn a_full_batch_refuses_more_but_an_empty_one_takes_a_datagram_larger_than_its_bytes() {
    let mut out = SendBatch::new(2, 10);
    assert!(
        out.push(None, &[0; 30]),
        "an empty batch takes any datagram"
    );
    assert!(!out.push(None, &[1]), "over the byte bound");
    assert!(out.is_full(1));
    out.clear();
    assert!(out.push(None, &[0; 4]));
    assert!(out.push(None, &[0; 6]));
    assert!(!out.push(None, &[0; 1]), "over the datagram bound");
    assert_eq!(out.clear(), 2);
    assert!(out.is_empty() && !out.is_full(10));
}

/// What a scripted send was offered: per call, the datagrams.
type Offered = std::rc::Rc<std::cell::RefCell<Vec<Vec<Vec<u8>>>>>;

/// A scripted send: the datagrams it is given, the GSO threshold.
type Send = Box<dyn FnMut(&[u8], &[Item], usize) -> io::Result<usize>>;

/// A scripted `sendmmsg`: each call takes the next result and records what it was offered.
fn scripted(results: Vec<io::Result<usize>>) -> (Send, Offered) {
    let offered = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let log = offered.clone();
    let mut results = results.into_iter();
    let send: Send = Box::new(move |buf: &[u8], items: &[Item], _gso_below: usize| {
        let batch = items
            .iter()
            .map(|i| buf[i.start..i.start + i.len].to_vec())
            .collect();
        log.borrow_mut().push(batch);
        results.next().unwrap_or(Ok(items.len()))
    });
    (send, offered)
}

fn batch_of(n: u8) -> SendBatch {
    let mut out = SendBatch::new(16, 1 << 16);
    for i in 0..n {
        assert!(out.push(None, &[i; 2]));
    }
    out
}

#[test]
fn a_partial_send_offers_the_rest_next_in_order() {
    let mut out = batch_of(5);
    let (send, offered) = scripted(vec![Ok(2), Ok(3)]);
    out.flush_with(send).unwrap();
    let offered = offered.borrow();
    assert_eq!(offered[0].len(), 5);
    assert_eq!(offered[1], vec![vec![2; 2], vec![3; 2], vec![4; 2]]);
    assert_eq!(
        out.take_sent(),
        Sent {
            datagrams: 5,
            bytes: 10,
            failed: 0
        }
    );
}

#[test]
fn would_block_mid_batch_keeps_the_rest_queued_in_order_with_new_pushes_after_it() {
    let mut out = batch_of(4);
    let (send, _) = scripted(vec![Ok(1), Err(io::ErrorKind::WouldBlock.into())]);
    let e = out.flush_with(send).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    assert_eq!(out.len(), 3);
    assert_eq!(out.take_sent().datagrams, 1);
    assert!(out.push(None, &[9; 2]));
    let (send, offered) = scripted(vec![]);
    out.flush_with(send).unwrap();
    let first: Vec<u8> = offered.borrow()[0].iter().map(|d| d[0]).collect();
    assert_eq!(first, vec![1, 2, 3, 9]);
    assert!(out.is_empty());
}

#[test]
fn an_error_drops_only_the_datagram_it_is_for() {
    let mut out = batch_of(3);
    let (send, _) = scripted(vec![Ok(1), Err(io::ErrorKind::ConnectionRefused.into())]);
    let e = out.flush_with(send).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
    assert_eq!(out.len(), 1);
    let (send, offered) = scripted(vec![]);
    out.flush_with(send).unwrap();
    assert_eq!(offered.borrow()[0], vec![vec![2; 2]]);
    assert_eq!(
        out.take_sent(),
        Sent {
            datagrams: 2,
            bytes: 4,
            failed: 1
        }
    );
}

#[test]
fn a_call_that_sends_nothing_reads_as_would_block() {
    let mut out = batch_of(2);
    let (send, _) = scripted(vec![Ok(0)]);
    assert_eq!(
        out.flush_with(send).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
    assert_eq!(out.len(), 2);
}

#[test]
fn a_batch_flushed_only_in_parts_does_not_grow() {
    let mut out = SendBatch::new(4, 64);
    for round in 0..100u8 {
        while out.push(None, &[round; 8]) {}
        let (send, _) = scripted(vec![Ok(1), Err(io::ErrorKind::WouldBlock.into())]);
        let _ = out.flush_with(send);
    }
    assert!(out.buf.len() <= 64 && out.items.len() <= 4);
}

#[test]
fn socket_addresses_survive_the_c_form() {
    for addr in ["127.0.0.1:53", "[2001:db8::1]:4433", "[::ffff:10.0.0.1]:9"] {
        let addr: SocketAddr = addr.parse().unwrap();
        let (storage, _) = to_sockaddr(addr);
        assert_eq!(from_sockaddr(&storage), Some(addr));
    }
    // SAFETY: all-zero bytes are a valid `sockaddr_storage` (family AF_UNSPEC).
    let unspec: libc::sockaddr_storage = unsafe { zeroed() };
    assert_eq!(from_sockaddr(&unspec), None);
}

#[tokio::test]
async fn a_growing_batch_doubles_only_after_a_call_that_filled_it() {
    let (rx, tx) = pair().await;
    let to = rx.local_addr().unwrap();
    let mut batch = RecvBatch::growing(2, 8, 16);
    tx.send_to(b"a", to).await.unwrap();
    assert_eq!(batch.recv(&rx).await.unwrap(), 1);
    tx.send_to(b"b", to).await.unwrap();
    assert_eq!(batch.recv(&rx).await.unwrap(), 1);
    assert_eq!(batch.slots(), 2, "a call that did not fill the slots");
    for i in 0..20u8 {
        tx.send_to(&[i], to).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    while seen.len() < 20 {
        let n = batch.recv(&rx).await.unwrap();
        sizes.push(n);
        seen.extend(batch.iter().map(|d| d.bytes[0]));
    }
    assert_eq!(seen, (0..20).collect::<Vec<u8>>());
    assert_eq!(&sizes[..3], &[2, 4, 8]);
    assert_eq!(batch.slots(), 8, "never past the maximum");
}

#[tokio::test]
async fn a_grown_batch_shrinks_back_after_quiet_calls_and_no_further() {
    let (rx, tx) = pair().await;
    let to = rx.local_addr().unwrap();
    let mut batch = RecvBatch::growing(2, 8, 16);
    for i in 0..14u8 {
        tx.send_to(&[i], to).await.unwrap();
    }
    let mut received = 0;
    while received < 14 {
        received += batch.recv(&rx).await.unwrap();
    }
    assert_eq!(batch.slots(), 8);
    let mut slots = Vec::new();
    for i in 0..(3 * QUIET_CALLS) {
        tx.send_to(&[i as u8], to).await.unwrap();
        assert_eq!(batch.recv(&rx).await.unwrap(), 1);
        assert_eq!(batch.iter().next().map(|d| d.bytes[0]), Some(i as u8));
        slots.push(batch.slots());
    }
    let q = QUIET_CALLS as usize;
    assert_eq!(slots[q - 1], 8, "not before {QUIET_CALLS} quiet calls");
    assert_eq!(slots[q], 4);
    assert_eq!(slots[2 * q - 1], 4);
    assert_eq!(slots[2 * q], 2);
    assert_eq!(
        slots.last(),
        Some(&2),
        "never below the slots it started with"
    );
}

fn item(start: usize, len: usize, port: u16) -> Item {
    Item {
        start,
        len,
        to: Some(SocketAddr::from(([127, 0, 0, 1], port))),
    }
}

#[test]
fn a_gso_run_is_one_size_to_one_destination_and_may_end_shorter() {
    let same = [
        item(0, 10, 1),
        item(10, 10, 1),
        item(20, 10, 1),
        item(30, 4, 1),
        item(34, 10, 1),
    ];
    assert_eq!(
        run_len(&same, usize::MAX),
        4,
        "the shorter one ends the run"
    );
    assert_eq!(run_len(&same, 10), 1, "segments this long may not use GSO");
    let other_port = [item(0, 10, 1), item(10, 10, 2)];
    assert_eq!(run_len(&other_port, usize::MAX), 1);
    let longer = [item(0, 10, 1), item(10, 11, 1)];
    assert_eq!(run_len(&longer, usize::MAX), 1);
    let empty = [item(0, 10, 1), item(10, 0, 1)];
    assert_eq!(
        run_len(&empty, usize::MAX),
        1,
        "an empty datagram is never a segment"
    );
    let many: Vec<Item> = (0..100).map(|i| item(i * 10, 10, 1)).collect();
    assert_eq!(run_len(&many, usize::MAX), GSO_SEGMENTS);
    assert_eq!(run_len(&[], usize::MAX), 0);
}

#[test]
fn a_path_that_refuses_gso_gets_the_same_datagrams_one_by_one_and_none_is_lost() {
    let mut out = SendBatch::new(16, 1 << 16);
    for i in 0..4u8 {
        assert!(out.push(None, &[i; 20]));
    }
    let mut thresholds = Vec::new();
    let mut calls = 0;
    out.flush_with(|_, items, gso_below| {
        calls += 1;
        thresholds.push(gso_below);
        if calls == 1 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(items.len())
    })
    .unwrap();
    assert_eq!(thresholds, vec![usize::MAX, 20]);
    assert_eq!(
        out.take_sent(),
        Sent {
            datagrams: 4,
            bytes: 80,
            failed: 0
        }
    );
}

#[tokio::test]
async fn gso_runs_arrive_as_the_datagrams_they_were_in_order() {
    let (rx, tx) = pair().await;
    let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (to, to_other) = (
        Some(rx.local_addr().unwrap()),
        Some(other.local_addr().unwrap()),
    );
    let mut sent = Vec::new();
    let mut out = SendBatch::new(64, 1 << 20);
    for i in 0..40u8 {
        let len = if i == 20 { 33 } else { 100 };
        assert!(out.push(to, &vec![i; len]));
        sent.push(vec![i; len]);
    }
    assert!(out.push(to_other, b"elsewhere"));
    out.flush(&tx).await.unwrap();
    assert_eq!(out.take_sent().datagrams, 41);
    let got = receive(&mut RecvBatch::new(64, 200), &rx, 40).await;
    let bytes: Vec<Vec<u8>> = got.into_iter().map(|g| g.1).collect();
    assert_eq!(bytes, sent);
    let got = receive(&mut RecvBatch::new(4, 200), &other, 1).await;
    assert_eq!(got[0].1, b"elsewhere");
}

#[test]
fn an_emptied_batch_gives_back_the_room_of_a_burst_of_large_datagrams() {
    let mut out = SendBatch::new(32, 1 << 20);
    for _ in 0..20 {
        assert!(out.push(None, &[0; 8000]));
    }
    let (send, _) = scripted(vec![]);
    out.flush_with(send).unwrap();
    assert!(out.buf.capacity() <= KEEP_BYTES);
    assert!(out.push(None, &[1; 100]));
    let (send, _) = scripted(vec![]);
    out.flush_with(send).unwrap();
    assert!(out.buf.capacity() >= 100, "small batches keep their room");
}
