//! `streamproxy probe`: a health check (handshake plus the 0.1.0 close-flag header). Exit
//! status 0 when healthy, 1 with a one-line reason when not.

use std::process::ExitCode;
use std::time::Instant;

use streamproxy::proxy;
use streamproxy::proxy::dial::SystemResolver;

use crate::cli::ProbeArgs;
use crate::client::connection;
use crate::config::ClientConfig;

pub(crate) async fn run(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    let conn = connection(args.conn, &ClientConfig::default()).await?;
    let addrs = conn.server.resolve(&SystemResolver).await?;
    let timeout = args.timeout;
    let started = Instant::now();
    let (transport, result) = if args.udp {
        // Every address in turn, as the forwarder does; the last one's failure is the answer.
        let mut result = Ok(());
        for &server in &addrs {
            result = proxy::udp::health_check(server, &conn.dtls, timeout).await;
            if result.is_ok() {
                break;
            }
        }
        ("udp", result)
    } else {
        (
            "tcp",
            proxy::tcp::health_check(&addrs[..], &conn.tls, timeout).await,
        )
    };
    match result {
        Ok(()) => {
            println!(
                "healthy: {transport} {} answered in {:.1} ms",
                conn.server,
                started.elapsed().as_secs_f64() * 1000.0
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let detail = crate::one_line(&e);
            match streamproxy::proxy::explain::explain(&e) {
                Some(why) => eprintln!(
                    "streamproxy: unhealthy: {transport} {}: {why} ({detail})",
                    conn.server
                ),
                None => eprintln!(
                    "streamproxy: unhealthy: {transport} {}: {detail}",
                    conn.server
                ),
            }
            Ok(ExitCode::FAILURE)
        }
    }
}
