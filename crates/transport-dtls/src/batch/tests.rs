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
        from: None,
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

#[test]
fn a_gso_run_never_mixes_sources() {
    let from = |item: Item, ip: Option<[u8; 4]>| Item {
        from: ip.map(IpAddr::from),
        ..item
    };
    let two = Some([127, 0, 0, 2]);
    let three = Some([127, 0, 0, 3]);
    let run = [
        from(item(0, 10, 1), two),
        from(item(10, 10, 1), two),
        from(item(20, 10, 1), three),
        from(item(30, 10, 1), three),
    ];
    assert_eq!(run_len(&run, usize::MAX), 2, "a new source ends the run");
    assert_eq!(run_len(&run[2..], usize::MAX), 2);
    let chosen_then_given = [item(0, 10, 1), from(item(10, 10, 1), two)];
    assert_eq!(run_len(&chosen_then_given, usize::MAX), 1);
}

#[test]
fn a_destination_in_the_other_family_follows_the_source() {
    let v4: IpAddr = "127.0.0.2".parse().unwrap();
    let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
    let v6_peer: SocketAddr = "[::ffff:127.0.0.1]:9".parse().unwrap();
    let v4_peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
    assert_eq!(in_family_of(v4, Some(v6_peer)), mapped);
    assert_eq!(in_family_of(mapped, Some(v4_peer)), v4);
    assert_eq!(in_family_of(v4, Some(v4_peer)), v4);
    assert_eq!(in_family_of(mapped, None), mapped);
}

/// A socket on `ip` port 0 whose client end is connected to `to` (the address it reached the
/// server by), or `None` where the machine has no such address.
async fn client_connected_to(ip: &str, to: SocketAddr) -> Option<UdpSocket> {
    let socket = UdpSocket::bind((ip.parse::<IpAddr>().ok()?, 0))
        .await
        .ok()?;
    socket.connect(to).await.ok()?;
    Some(socket)
}

/// Receives one datagram with its destination from `server`, which must report one.
async fn receive_with_destination(server: &UdpSocket) -> (SocketAddr, IpAddr, Vec<u8>) {
    let mut batch = RecvBatch::new(4, 100).with_destinations();
    batch.recv(server).await.unwrap();
    let d = batch.get(0).unwrap();
    (d.source.unwrap(), d.destination.unwrap(), d.bytes.to_vec())
}

/// Answers `to` three times from `from` in one GSO run, and once alone; `client`, connected to
/// `from`, must get exactly those. With `unsourced_first`, a reply with the kernel's choice of
/// source goes first: where that is another address, the connected client drops it.
async fn answer_from(
    server: &UdpSocket,
    client: &UdpSocket,
    to: SocketAddr,
    from: IpAddr,
    unsourced_first: bool,
) {
    let mut out = SendBatch::new(8, 1 << 16);
    if unsourced_first {
        assert!(out.push(Some(to), b"kernel's choice"));
    }
    for i in 0..3u8 {
        assert!(out.push_from(Some(to), Some(from), &[i; 20]));
    }
    out.flush(server).await.unwrap();
    assert_eq!(out.take_sent().datagrams, 3 + u64::from(unsourced_first));
    assert_eq!(
        out.gso_below,
        usize::MAX,
        "the kernel took the GSO run with its source"
    );
    let got = receive(&mut RecvBatch::new(8, 100), client, 3).await;
    let bytes: Vec<Vec<u8>> = got.into_iter().map(|g| g.1).collect();
    assert_eq!(bytes, vec![vec![0; 20], vec![1; 20], vec![2; 20]]);
    let sole = try_send_from(server, to, Some(from), b"alone").unwrap();
    assert_eq!(sole, 5);
    let got = receive(&mut RecvBatch::new(8, 100), client, 1).await;
    assert_eq!(got[0].1, b"alone");
    assert_eq!(
        RecvBatch::new(8, 100).try_recv(client).unwrap_err().kind(),
        io::ErrorKind::WouldBlock,
        "nothing else arrived"
    );
}

#[tokio::test]
async fn a_wildcard_socket_learns_where_each_datagram_went_and_answers_from_there() {
    let server = UdpSocket::bind("0.0.0.0:0").await.unwrap();
    assert!(report_destinations(&server).unwrap());
    let port = server.local_addr().unwrap().port();
    let reached = SocketAddr::from(([127, 0, 0, 2], port));
    let client = client_connected_to("127.0.0.1", reached).await.unwrap();
    client.send(b"hello").await.unwrap();
    let (source, destination, bytes) = receive_with_destination(&server).await;
    assert_eq!(source, client.local_addr().unwrap());
    assert_eq!(destination, reached.ip());
    assert_eq!(bytes, b"hello");
    // Left to the kernel, the answer comes from another address, which the client's
    // connected socket drops (an unconnected one sees where it came from).
    let open = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    open.send_to(b"hi", reached).await.unwrap();
    let (open_source, _, _) = receive_with_destination(&server).await;
    server.send_to(b"reply", open_source).await.unwrap();
    let (_, replied_from) = open.recv_from(&mut [0; 16]).await.unwrap();
    assert_ne!(
        replied_from, reached,
        "the kernel chose the address reached"
    );
    answer_from(&server, &client, source, destination, true).await;
}

#[tokio::test]
async fn a_socket_bound_to_one_address_reports_no_destinations() {
    let (rx, tx) = pair().await;
    assert!(!report_destinations(&rx).unwrap());
    tx.send_to(b"x", rx.local_addr().unwrap()).await.unwrap();
    let mut batch = RecvBatch::new(4, 100).with_destinations();
    batch.recv(&rx).await.unwrap();
    assert_eq!(batch.get(0).unwrap().destination, None);
    let mut plain = RecvBatch::new(4, 100);
    tx.send_to(b"y", rx.local_addr().unwrap()).await.unwrap();
    plain.recv(&rx).await.unwrap();
    assert_eq!(plain.get(0).unwrap().destination, None);
}

/// A UDP socket on `[::]:0` that takes IPv4 too (`IPV6_V6ONLY` off), if the machine allows.
fn dual_stack_socket() -> io::Result<UdpSocket> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::DGRAM, None)?;
    socket.set_only_v6(false)?;
    socket.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)).into())?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}

#[tokio::test]
async fn a_dual_stack_socket_answers_ipv4_and_ipv6_peers_from_the_address_they_reached() {
    let Ok(server) = dual_stack_socket() else {
        eprintln!("skipped: this machine has no dual-stack [::] socket");
        return;
    };
    assert!(report_destinations(&server).unwrap());
    let port = server.local_addr().unwrap().port();
    let via_v4 = SocketAddr::from(([127, 0, 0, 2], port));
    let client = client_connected_to("127.0.0.1", via_v4).await.unwrap();
    client.send(b"v4").await.unwrap();
    let (source, destination, _) = receive_with_destination(&server).await;
    assert_eq!(destination, "::ffff:127.0.0.2".parse::<IpAddr>().unwrap());
    answer_from(&server, &client, source, destination, true).await;
    let via_v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    let Some(client) = client_connected_to("::1", via_v6).await else {
        eprintln!("skipped the IPv6 part: no ::1 here");
        return;
    };
    client.send(b"v6").await.unwrap();
    let (source, destination, _) = receive_with_destination(&server).await;
    assert_eq!(destination, IpAddr::V6(Ipv6Addr::LOCALHOST));
    // ::1 is the only IPv6 loopback address, the kernel's choice too: this part checks that an
    // IPV6_PKTINFO source goes through, not that it changes the source.
    answer_from(&server, &client, source, destination, false).await;
}
